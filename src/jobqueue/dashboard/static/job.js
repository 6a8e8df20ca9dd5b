"use strict";
// A job's page: its detail, timeline and live output, from one event stream.

const $ = id => document.getElementById(id);
const jobId = decodeURIComponent(location.pathname.split("/").pop());
const streams = { 1: new Ansi("fd1"), 2: new Ansi("fd2") };
let job = null;
let detail = null;
let ended = false;

function fact(name, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return [];
  return [JQ.el("dt", {}, name), JQ.el("dd", {}, value)];
}

function paint() {
  $("job-id").textContent = jobId;
  document.title = `job ${jobId} – jobqueue dashboard`;
  const d = detail || {};
  const row = job || {};
  const now = JQ.now();
  if (d.known === false && !job) {
    $("argv").textContent = "The server does not know this job (any more): it keeps the last 1,000 finished jobs.";
    $("job-state").replaceChildren(JQ.state("unknown", "left"));
    for (const id of ["facts", "timeline", "actions"]) $(id).replaceChildren();
    $("result").textContent = "";
    $("output-state").textContent = "no output";
    return;
  }
  const argv = d.argv && d.argv.length ? d.argv : row.argv || [];
  $("argv").textContent = JQ.command(argv);
  const state = row.finished ? row.state : (row.state || d.state || "");
  $("job-state").replaceChildren(state ? JQ.state(state, row.finished ? row.group : state) : "");
  $("job-state").dataset.state = state;
  let time = "";
  if (row.finished) time = "ran " + JQ.age(row.ended - (row.started || row.queued));
  else if (row.state === "running") time = "running for " + JQ.age(now - row.since);
  else if (row.state) time = "waiting for " + JQ.age(now - (row.queued || row.since));
  $("result").textContent = row.finished ? JQ.result(row) + " · " + time : time;
  $("result").dataset.status = row.finished ? String(row.status) : "";
  const envNames = d.env_names || [];
  $("facts").replaceChildren(
    ...fact("directory", d.cwd),
    ...fact("worker", row.worker || d.worker),
    ...fact("attempt", row.attempt || d.attempt),
    ...fact("priority", String(d.priority ?? row.priority ?? "")),
    ...fact("tags", JQ.tags(d.tags || row.tags || [])),
    ...fact("time limit", detail ? (d.timeout ? JQ.age(d.timeout) : "none") : ""),
    ...fact("terminal", d.tty ? "yes (-t): stdout and stderr are one stream" : ""),
    ...fact("why it waits", row.why),
    ...fact("environment", envNames.length ? `${envNames.length} variables (values never shown): ` +
      envNames.slice(0, 40).join(", ") + (envNames.length > 40 ? ", …" : "") : ""));
  $("timeline").replaceChildren(...(d.timeline || []).map(e =>
    JQ.el("li", { class: e.what }, JQ.el("span", { class: "at" }, JQ.clock(e.at)), e.what, e.detail ? " — " + e.detail : "")));
  $("actions").replaceChildren();
  if (JQ.session.actions && row.state && !row.finished) {
    $("actions").append(JQ.el("button", { class: "danger", id: "cancel",
      onclick: async ev => { ev.target.disabled = true; await JQ.post(`/api/jobs/${encodeURIComponent(jobId)}/cancel`); } },
      row.state === "running" ? "Cancel (SIGTERM)" : "Cancel"));
  }
  let note = "";
  if (ended) note = (d.output === false || !$("output").childNodes.length) ? "no output kept" : "ended";
  else if (row.state === "running") note = "live";
  else if (row.state) note = "waits to start";
  $("output-state").textContent = note;
}

function addChunks(chunks) {
  const out = $("output");
  const atBottom = out.scrollHeight - out.scrollTop - out.clientHeight < 40;
  const frag = document.createDocumentFragment();
  for (const c of chunks) {
    if (c.note) frag.append(JQ.el("span", { class: "note" + (c.fd ? " fd" + c.fd : "") }, "[" + c.note + "]"));
    else frag.append(...streams[c.fd].feed(c.text));
  }
  out.append(frag);
  while (out.childNodes.length > 20000) out.removeChild(out.firstChild);
  if ($("follow").checked && atBottom !== false) out.scrollTop = out.scrollHeight;
}

function connect() {
  const source = new EventSource(`/api/job/${encodeURIComponent(jobId)}/stream`);
  source.onmessage = e => {
    const data = JSON.parse(e.data);
    JQ.skew = data.now - Date.now() / 1000;
    JQ.connection(data.connected, "");
    if ("job" in data) job = data.job;
    if (data.detail) detail = data.detail;
    if ("ended" in data) ended = data.ended;
    if (data.chunks) addChunks(data.chunks);
    paint();
  };
  source.onerror = () => JQ.connection(false, "");
}

(async () => {
  await JQ.loadSession();
  for (const fd of [1, 2]) $("show" + fd).addEventListener("change", e => $("output").classList.toggle("hide" + fd, !e.target.checked));
  connect();
  setInterval(paint, 1000);
})();
