"use strict";
// The overview page: counters, charts, workers and jobs, all from one event stream
// whose parameters are the filters and pages shown (reopened when they change).

const $ = id => document.getElementById(id);
const COLORS = { success: "#1f9d55", failed: "#d64545", signal: "#b45309", timeout: "#7c3aed",
                 requeued: "#2563eb", cancelled: "#6b7280" };
const view = { state: "", tag: "", worker: "", q: "", page: 0, wq: "", wpage: 0 };
let last = null;
let source = null;
const charts = {};

function params() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(view)) if (v) p.set(k, v);
  return p.toString();
}

function connect() {
  if (source) source.close();
  source = new EventSource("/api/stream?" + params());
  source.onmessage = e => render(JSON.parse(e.data));
  source.onerror = () => JQ.connection(false, "");
  history.replaceState(null, "", "/" + (params() ? "?" + params() : ""));
}

function render(data) {
  if (data.overview) {
    JQ.skew = data.overview.now - Date.now() / 1000;
    last = Object.assign(last || {}, data);
  }
  if (data.charts) drawCharts(data.charts);
  paint();
}

function paint() {
  if (!last) return;
  const o = last.overview;
  JQ.connection(o.connected, o.problem);
  $("server").textContent = (o.server ? o.server + " · jobqueue " + o.version + " · " : "") + o.endpoint;
  $("c-workers").textContent = o.workers;
  $("c-workers-sub").textContent = `${o.busy} busy · ${o.draining} draining · ${o.lost} lost recently`;
  $("c-slots").textContent = `${o.used} / ${o.slots}`;
  $("c-slots-bar").style.width = (o.slots ? Math.round(100 * o.used / o.slots) : 0) + "%";
  $("c-jobs").textContent = o.queued + o.running;
  $("c-jobs-sub").textContent = `${o.queued} queued · ${o.running} running`;
  for (const span of ["minute", "hour"]) {
    const counts = o[span];
    $("c-" + span).textContent = Object.values(counts).reduce((a, b) => a + b, 0);
    $("c-" + span + "-pills").replaceChildren(...Object.entries(counts).filter(([, n]) => n).map(([g, n]) =>
      JQ.el("span", { class: "pill", style: "background:" + COLORS[g] }, `${n} ${g}`)));
  }
  paintWorkers(last.workers);
  paintJobs(last.jobs);
}

function drainButton(w) {
  if (!JQ.session.actions || !["idle", "busy"].includes(w.state)) return null;
  return JQ.el("button", { class: "danger", title: "take no new job; exit once idle",
    onclick: async ev => { ev.target.disabled = true; await JQ.post(`/api/workers/${encodeURIComponent(w.name)}/drain`); } },
    "Drain");
}

function paintWorkers(page) {
  const now = JQ.now();
  $("workers").replaceChildren(...page.rows.map(w => JQ.el("tr",
    { class: ["lost", "left"].includes(w.state) ? "gone" : w.state === "draining" ? "draining" : "", "data-worker": w.name },
    JQ.el("td", {}, w.name),
    JQ.el("td", {}, w.host),
    JQ.el("td", {}, JQ.state(w.state), ["lost", "left"].includes(w.state) ? JQ.el("span", { class: "why" }, " " + JQ.age(now - w.changed) + " ago") : null),
    JQ.el("td", { class: "num" }, `${w.used} / ${w.slots}`),
    JQ.el("td", {}, JQ.tags(w.tags)),
    JQ.el("td", { class: "num", title: new Date(w.joined * 1000).toString() }, JQ.age(now - w.joined)),
    JQ.el("td", {}, w.version),
    JQ.el("td", { class: "jobs" }, w.jobs.slice(0, 8).map(j => [JQ.el("a", { href: "/job/" + encodeURIComponent(j) }, j), " "]),
      w.jobs.length > 8 ? `+${w.jobs.length - 8}` : null),
    JQ.el("td", {}, drainButton(w)))));
  if (!page.rows.length) $("workers").append(JQ.el("tr", {}, JQ.el("td", { colspan: 9, class: "empty" }, "no worker")));
  $("workers-count").textContent = page.total + " worker" + (page.total === 1 ? "" : "s");
  pager("workers-pager", page, p => { view.wpage = p; connect(); });
}

function cancelButton(j) {
  if (!JQ.session.actions || j.finished) return null;
  return JQ.el("button", { class: "danger", title: "cancel (queued) or send SIGTERM (running)",
    "data-cancel": j.id, onclick: async ev => { ev.target.disabled = true; await JQ.post(`/api/jobs/${encodeURIComponent(j.id)}/cancel`); } },
    "Cancel");
}

function paintJobs(page) {
  const now = JQ.now();
  $("jobs").replaceChildren(...page.rows.map(j => {
    let time, note;
    if (j.finished) {
      time = JQ.age(j.ended - (j.started || j.queued)); note = JQ.result(j);
    } else if (j.state === "running") {
      time = JQ.age(now - j.since); note = "";
    } else {
      time = JQ.age(now - (j.queued || j.since)); note = j.why;
    }
    return JQ.el("tr", { "data-job": j.id, "data-state": j.state },
      JQ.el("td", {}, JQ.el("a", { href: "/job/" + encodeURIComponent(j.id) }, j.id)),
      JQ.el("td", {}, JQ.state(j.state, j.finished ? j.group : j.state)),
      JQ.el("td", { class: "cmd" }, JQ.command(j.argv)),
      JQ.el("td", {}, j.worker || "–"),
      JQ.el("td", { class: "num" }, j.priority ?? ""),
      JQ.el("td", {}, JQ.tags(j.tags)),
      JQ.el("td", { class: "num" }, j.attempt),
      JQ.el("td", { class: "num" }, time),
      JQ.el("td", { class: "why" }, note),
      JQ.el("td", {}, cancelButton(j)));
  }));
  if (!page.rows.length) $("jobs").append(JQ.el("tr", {}, JQ.el("td", { colspan: 10, class: "empty" }, "no job")));
  $("jobs-count").textContent = page.total + " job" + (page.total === 1 ? "" : "s");
  pager("jobs-pager", page, p => { view.page = p; connect(); });
}

function pager(id, page, go) {
  $(id).replaceChildren(
    JQ.el("button", { disabled: page.page <= 0, onclick: () => go(page.page - 1) }, "‹ previous"),
    JQ.el("span", {}, `page ${page.page + 1} of ${page.pages}`),
    JQ.el("button", { disabled: page.page + 1 >= page.pages, onclick: () => go(page.page + 1) }, "next ›"));
}

function chart(id, series, data, opts) {
  const box = $(id);
  const width = Math.max(300, box.clientWidth || 400);
  if (!charts[id]) {
    charts[id] = new uPlot(Object.assign({
      width, height: 180, series: [{}].concat(series.map(s => Object.assign({ spanGaps: false, points: { size: 4 } }, s))),
      axes: [{}, { size: 50 }], legend: { live: false }, cursor: { drag: { x: false, y: false } },
      // always the last hour, however few points there are yet
      // the last hour at most, five minutes at least: a young server's few points stay readable
      scales: { x: { time: true, range: u => { const t = JQ.now(), first = u.data[0].length ? u.data[0][0] : t;
                                                 return [Math.max(t - 3600, Math.min(first - 10, t - 300)), t]; } },
                y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    }, opts || {}), data, box);
  } else {
    charts[id].setData(data);
  }
}

function drawCharts(c) {
  chart("ch-load", [
    { label: "queued", stroke: "#f59e0b", width: 2, fill: "rgba(245,158,11,.12)" },
    { label: "running", stroke: "#0ea5e9", width: 2 },
  ], [c.t, c.queued, c.running]);
  const groups = Object.keys(COLORS);
  chart("ch-throughput", groups.map(g => ({ label: g, stroke: COLORS[g], width: 2 })),
    [c.t, ...groups.map(g => c.throughput[g])]);
  chart("ch-wait", [
    { label: "median", stroke: "#1d4ed8", width: 2 },
    { label: "95th percentile", stroke: "#d64545", width: 2, dash: [4, 4] },
  ], [c.t, c.wait_p50, c.wait_p95]);
}

function bindFilters() {
  let timer = null;
  const inputs = { state: "state", tag: "tag", worker: "worker", q: "q", wq: "wq" };
  const query = new URLSearchParams(location.search);
  for (const [key, id] of Object.entries(inputs)) {
    if (query.get(key)) { view[key] = query.get(key); $(id).value = view[key]; }
    $(id).addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        view[key] = $(id).value.trim();
        if (key === "wq") view.wpage = 0; else view.page = 0;
        connect();
      }, 250);
    });
  }
}

(async () => {
  await JQ.loadSession();
  bindFilters();
  connect();
  setInterval(paint, 1000);  // running and waiting times move on between pushes
})();
