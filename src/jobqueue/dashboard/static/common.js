"use strict";
// Shared by the pages: elements, time formats, the session (actions, CSRF token), POSTs.

const JQ = {
  session: { actions: false, csrf: "" },
  skew: 0,  // the server's clock minus ours, in seconds

  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },

  now() { return Date.now() / 1000 + JQ.skew; },

  age(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, seconds);
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h" + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(seconds / 86400) + "d" + Math.floor(seconds % 86400 / 3600) + "h";
  },

  clock(t) {
    if (!t) return "–";
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  },

  command(argv) { return argv.map(a => /^[\w@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'").join(" "); },

  state(text, cls) { return JQ.el("span", { class: "state s-" + (cls || text) }, text); },

  tags(tags) { return tags.map(t => JQ.el("span", { class: "tag" }, t)); },

  result(row) {
    if (row.reason === "exited") return "exit code " + row.status;
    if (row.reason === "signaled") return "killed by signal " + (row.status - 128);
    if (row.reason === "cancelled") return "cancelled (" + row.status + ")";
    return row.reason + " (" + row.status + ")";
  },

  async loadSession() {
    const r = await fetch("/api/session", { credentials: "same-origin" });
    if (r.ok) JQ.session = await r.json();
  },

  async post(url) {
    const r = await fetch(url, { method: "POST", credentials: "same-origin",
                                 headers: { "X-CSRF-Token": JQ.session.csrf } });
    let body = {};
    try { body = await r.json(); } catch (e) { body = {}; }
    if (!r.ok) JQ.notice(body.error || ("the server answered " + r.status));
    return r.ok;
  },

  notice(text) {
    const n = document.getElementById("notice");
    if (!n) return;
    n.textContent = text || "";
    n.classList.toggle("show", Boolean(text));
  },

  connection(connected, problem) {
    const c = document.getElementById("conn");
    c.textContent = connected ? "live" : (problem ? "server unreachable" : "connecting…");
    c.className = "conn " + (connected ? "up" : "down");
    c.title = problem || "";
  },
};
