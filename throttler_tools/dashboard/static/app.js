// The dashboard page: polls /api/state every second and draws it; posts the operator's actions.
// Everything that comes from the stage (keys, groups, reasons) is set as text, never as HTML.
"use strict";

const POLL_MS = 1000;
const TOKEN = document.querySelector('meta[name="dashboard-token"]').content;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "cls") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

// ---------------------------------------------------------------------------------------------- words
function duration(seconds) {
  if (seconds < 1) return "under 1 s";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
  if (seconds < 48 * 3600) return `${(seconds / 3600).toFixed(1)} h`;
  if (seconds < 365 * 86400) return `${(seconds / 86400).toFixed(1)} d`;
  return "over a year";
}

function clock(epoch) {
  return new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function rate(perS) {
  if (perS == null) return "–";
  if (perS >= 1 || perS === 0) return `${perS.toFixed(2)} calls/s`;
  if (perS * 60 >= 1) return `${(perS * 60).toFixed(2)} calls/min`;
  return `${(perS * 3600).toFixed(2)} calls/h`;
}

function plural(n, one, many) { return `${n} ${n === 1 ? one : many || one + "s"}`; }

const UNIT_S = { s: 1, m: 60, h: 3600, d: 86400 };
const NAMED_S = { second: 1, minute: 60, hour: 3600, day: 86400 };

function windowOf(name) {
  if (name in NAMED_S) return NAMED_S[name];
  const match = /^(?:api:)?(\d+)([smhd])$/.exec(name);
  return match ? Number(match[1]) * UNIT_S[match[2]] : null;
}

function windowText(seconds) {
  if (seconds == null) return "";
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0 && seconds >= 60) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function drainText(drain) {
  if (!drain) return "–";
  if (drain.jobs === 0) return "nothing queued";
  if (drain.jobs == null) return drain.why || "unknown";
  const what = plural(drain.jobs, "job");
  if (drain.eta_s == null) {
    const why = drain.why || "unknown";
    return why.startsWith("paused") ? `${what}: not while ${why}` : `${what}: never at these limits (${why})`;
  }
  const parts = [];
  if (drain.calls_per_s != null) parts.push(`about ${rate(drain.calls_per_s)}`);
  if (drain.sustained_per_s != null) parts.push(`${rate(drain.sustained_per_s)} sustained`);
  return `${what} in ~${duration(drain.eta_s)}` + (parts.length ? ` (${parts.join("; ")})` : "");
}

function limitInForce(entry) {
  if (entry.learned != null) return entry.learned;
  if (typeof entry.limit === "number") return entry.limit;
  return entry.api && entry.api.limit != null ? entry.api.limit : null;
}

function apiText(api) {
  const parts = [];
  if (api.limit != null) parts.push(`${api.limit} per ${windowText(api.window_s)}`);
  if (api.remaining != null) parts.push(`${plural(api.remaining, "call")} left, resets in ${duration(api.reset_s)}`);
  return "the API says " + parts.join(", ");
}

// ---------------------------------------------------------------------------------------------- parts
function renderTiers(status) {
  const box = $("tiers");
  box.replaceChildren();
  const tiers = Object.entries(status.tiers || {});
  if (!tiers.length) {
    box.append(el("div", { cls: "sub", text: status.quota.error ? `no quotas in force: ${status.quota.error}` : "no tiers" }));
  }
  for (const [name, entry] of tiers) {
    const limit = limitInForce(entry);
    const share = limit ? Math.min(1, entry.used / limit) : (entry.used > 0 ? 1 : 0);
    const fill = el("div", { cls: "fill" + (share >= 0.95 ? " full" : share >= 0.7 ? " warn" : "") });
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    const bar = el("div", { cls: "bar" }, fill);
    if (entry.api && entry.api.limit != null && limit && entry.api.limit !== limit) {
      const mark = el("div", { cls: "api", title: "the API's limit" });
      mark.style.left = `${Math.min(100, (entry.api.limit / limit) * 100)}%`;
      bar.append(mark);
    }
    const window = windowOf(name);
    const row = el("div", { cls: "tier", "data-tier": name, "data-used": String(entry.used), "data-limit": String(limit) },
      el("div", { cls: "name", text: name }, el("small", { text: window ? `sliding ${windowText(window)}` : "" })),
      bar,
      el("div", { cls: "nums" }, el("span", { cls: "used", text: String(entry.used) }),
        document.createTextNode(` / ${limit == null ? "?" : limit}` + (window ? ` per ${windowText(window)}` : ""))));
    const extra = [];
    if (entry.learned != null) extra.push(`learned ${entry.learned} (configured ${entry.limit})`);
    if (entry.api) extra.push(apiText(entry.api));
    if (extra.length) row.append(el("div", { cls: "extra", text: extra.join(" · ") }));
    box.append(row);
  }
  const notes = [];
  if (status.quota.concurrency != null) notes.push(`concurrency ${status.quota.concurrency} calls in flight at once`);
  for (const [name, history] of Object.entries(status.history || {})) {
    const steps = history.slice(-4).map((h) => `${h.limit} (${h.why} ${clock(h.at).slice(11, 19)})`);
    notes.push(`learned ${name}: ${steps.join(", ")}`);
  }
  if (status.api_said && status.api_said.summary) notes.push(`the API said: ${status.api_said.summary}`);
  $("learned").textContent = notes.join(" · ");
}

function renderRate(state) {
  const chart = $("rate-chart");
  const series = state.rate.counts;
  const pace = state.status.follows ? state.status.follows.rate_per_s : null;
  const top = Math.max(1, ...series, pace && isFinite(pace) ? pace : 0) * 1.15;
  const W = 600, H = 140, left = 30, bottom = 16, plotH = H - bottom - 6, step = (W - left) / series.length;
  const y = (v) => H - bottom - (v / top) * plotH;
  chart.replaceChildren();
  for (const frac of [0.5, 1]) chart.append(svg("line", { class: "gridline", x1: left, x2: W, y1: y(top * frac / 1.15), y2: y(top * frac / 1.15) }));
  chart.append(svg("line", { class: "axis", x1: left, x2: W, y1: H - bottom, y2: H - bottom }));
  series.forEach((n, i) => {
    if (n > 0) chart.append(svg("rect", { class: "rate-bar", x: left + i * step + 1, width: Math.max(1, step - 2), y: y(n), height: H - bottom - y(n) }));
  });
  if (pace && isFinite(pace)) chart.append(svg("line", { class: "pace", x1: left, x2: W, y1: y(pace), y2: y(pace) }));
  const label = (x, yy, text, anchor) => { const t = svg("text", { x, y: yy, "text-anchor": anchor || "start" }); t.textContent = text; chart.append(t); };
  label(left - 4, y(top / 1.15) + 3, String(Math.round(top / 1.15 * 10) / 10), "end");
  label(left - 4, H - bottom + 3, "0", "end");
  label(left, H - 3, "−60 s");
  label((W + left) / 2, H - 3, "−30 s", "middle");
  label(W, H - 3, "now", "end");
  const legend = [`last 5 s: ${rate(state.rate.last_5s_per_s)}`];
  if (pace && isFinite(pace)) legend.push(`dashed: the pace in force, ${rate(pace)}`);
  if (state.rate.reserved_ahead) legend.push(`${plural(state.rate.reserved_ahead, "call")} reserved ahead`);
  $("rate-legend").textContent = legend.join(" · ");
}

function renderQueue(state) {
  const chart = $("queue-chart");
  const history = state.history || [];
  const W = 600, H = 120, left = 30, bottom = 14, span = 600, now = state.at;
  const top = Math.max(1, ...history.map((h) => Math.max(h.waiting, h.in_flight, h.dlq))) * 1.1;
  const x = (at) => left + (1 - (now - at) / span) * (W - left);
  const y = (v) => H - bottom - (v / top) * (H - bottom - 6);
  chart.replaceChildren();
  chart.append(svg("line", { class: "axis", x1: left, x2: W, y1: H - bottom, y2: H - bottom }));
  for (const [field, cls] of [["waiting", "waiting"], ["in_flight", "inflight"], ["dlq", "dlq"]]) {
    const points = history.filter((h) => now - h.at <= span).map((h) => `${x(h.at).toFixed(1)},${y(h[field]).toFixed(1)}`);
    if (points.length) chart.append(svg("polyline", { class: cls, points: points.join(" ") }));
  }
  const label = (xx, yy, text, anchor) => { const t = svg("text", { x: xx, y: yy, "text-anchor": anchor || "start" }); t.textContent = text; chart.append(t); };
  label(left - 4, y(top / 1.1) + 3, String(Math.round(top / 1.1)), "end");
  label(left - 4, H - bottom + 3, "0", "end");
  label(left, H - 2, "−10 min");
  label(W, H - 2, "now", "end");
}

function renderPause(state) {
  const pause = state.status.pause;
  const box = $("pause-state");
  const details = [];
  if (pause.paused) {
    box.className = "pause-state paused";
    box.textContent = pause.until_resume ? `Paused until resume (${pause.reason})`
      : `Paused until ${clock(pause.until).slice(11)}, ${duration(pause.until - state.at)} from now (${pause.reason})`;
  } else {
    box.className = "pause-state running";
    box.textContent = "Not paused";
  }
  if (pause.operator) details.push(pause.operator.until_resume ? "operator: until resume" : `operator: until ${clock(pause.operator.until)}`);
  if (pause.api) details.push(`the API's 429: until ${clock(pause.api.until)}` + (pause.api.retry_after_s != null ? ` (Retry-After ${pause.api.retry_after_s} s)` : "") + (pause.api.reason ? ` · ${pause.api.reason}` : ""));
  const keys = Object.entries(pause.keys || {});
  if (keys.length) details.push(`keys paused by a 429: ${keys.map(([k, t]) => `${k} until ${clock(t).slice(11)}`).join(", ")}`);
  $("pause-detail").textContent = details.join(" · ");
}

function renderKeys(status) {
  const body = $("keys").tBodies[0];
  body.replaceChildren();
  const keys = Object.entries(status.keys || {});
  for (const [name, entry] of keys) {
    const tiers = Object.entries(entry.tiers).map(([t, e]) => `${t} ${e.used}/${limitInForce(e) ?? "?"}`).join(", ") || "the stage's tiers only";
    const paused = entry.paused_until ? ` · paused by a 429 until ${clock(entry.paused_until).slice(11)}` : "";
    body.append(el("tr", { "data-key": name },
      el("td", { cls: "mono", text: name || "(no key)" }), el("td", { cls: "num", text: String(entry.weight) }),
      el("td", { cls: "num", text: entry.backlog == null ? "?" : String(entry.backlog) }),
      el("td", { text: tiers + paused }), el("td", { text: drainText(entry.drain) })));
  }
  if (!keys.length) body.append(el("tr", { cls: "empty" }, el("td", { colspan: "5", text: status.keys_reported ? "no key has a backlog" : "no per-key backlog reported yet (jobs without a key use the stage's tiers alone)" })));
  $("keys-note").textContent = "";
}

function renderDeadLetters(state) {
  const letters = state.dead_letters || { items: [] };
  const body = $("dead-letters").tBodies[0];
  body.replaceChildren();
  for (const d of letters.items) {
    body.append(el("tr", {}, el("td", { cls: "mono", text: d.job_id || "–" }), el("td", { cls: "mono", text: d.group }),
      el("td", { cls: "num", text: d.attempts == null ? "–" : String(d.attempts) }), el("td", { cls: "reason", text: d.reason })));
  }
  if (!letters.items.length) body.append(el("tr", { cls: "empty" }, el("td", { colspan: "4", text: letters.error ? "not readable" : "the dead-letter queue is empty" })));
  const depth = state.status.dlq.depth;
  const notes = [];
  if (letters.error) notes.push(`cannot list them: ${letters.error}`);
  if (depth > letters.items.length && !letters.error) notes.push(`showing ${letters.items.length} of ${depth}: \`python -m throttler dlq list\` shows them all`);
  if (letters.at) notes.push(`looked at ${clock(letters.at).slice(11)}`);
  $("dlq-note").textContent = notes.join(" · ");
}

// ---------------------------------------------------------------------------------------------- the page
function render(state) {
  $("updated").textContent = `updated ${clock(state.at).slice(11)}`;
  $("readonly").hidden = !state.read_only;
  for (const id of ["pause-button", "resume-button", "quota-button"]) $(id).disabled = !!state.read_only;
  const pill = $("state-pill");
  if (state.error) {
    $("error").hidden = false;
    $("error").textContent = state.error;
    pill.className = "pill error";
    pill.textContent = "cannot read the stage";
    return;
  }
  $("error").hidden = true;
  const status = state.status;
  const lease = state.lease;
  pill.className = "pill " + (status.pause.paused ? "paused" : "running");
  pill.textContent = status.pause.paused ? "PAUSED" : lease.held ? "DISPATCHING" : "NOT PAUSED";
  $("lease").textContent = lease.held ? `a throttler run holds the lease (${duration(lease.expires_in_s)} left)` : "no throttler run right now";
  $("waiting").textContent = String(status.queue.waiting);
  $("queue-name").textContent = status.queue.name;
  $("in-flight").textContent = String(status.queue.in_flight);
  $("batches").textContent = `${plural(state.open_batches, "batch", "batches")} sent and not settled`;
  $("rate-now").textContent = state.rate.last_5s_per_s.toFixed(1);
  $("follows").textContent = status.follows ? `paced by ${status.follows.why} (${rate(status.follows.rate_per_s)})` : "no pace: no quotas in force";
  $("dlq-depth").textContent = String(status.dlq.depth);
  $("dlq-name").textContent = status.dlq.name;
  $("quota-in-force").textContent = status.quota.in_force || "none in force";
  $("quota-source").textContent = `from the ${status.quota.source}` + (status.quota.error ? ` · warning: ${status.quota.error}` : "");
  $("drain").textContent = drainText(status.drain);
  $("per-group").textContent = state.per_group;
  renderTiers(status);
  renderRate(state);
  renderQueue(state);
  renderPause(state);
  renderKeys(status);
  renderDeadLetters(state);
}

async function poll() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    render(await response.json());
  } catch (err) {
    $("error").hidden = false;
    $("error").textContent = `the dashboard server does not answer (${err.message}): is it still running?`;
    $("state-pill").className = "pill error";
    $("state-pill").textContent = "disconnected";
  }
  setTimeout(poll, POLL_MS);
}

async function act(path, body, messageId) {
  const box = $(messageId);
  box.className = "message";
  box.textContent = "…";
  try {
    const response = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json", "X-Dashboard-Token": TOKEN }, body: JSON.stringify(body),
    });
    const outcome = await response.json();
    box.className = "message " + (outcome.ok ? "ok" : "error");
    box.textContent = outcome.ok ? outcome.message : outcome.error;
    const state = await (await fetch("/api/state", { cache: "no-store" })).json();
    render(state);
    return outcome;
  } catch (err) {
    box.className = "message error";
    box.textContent = `the dashboard server does not answer: ${err.message}`;
    return null;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("pause-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("/api/pause", { duration: $("pause-duration").value }, "pause-message");
  });
  $("resume-button").addEventListener("click", () => act("/api/resume", {}, "pause-message"));
  $("quota-scope").addEventListener("change", () => { $("quota-key").hidden = $("quota-scope").value !== "key"; });
  $("quota-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("/api/quota", { scope: $("quota-scope").value, key: $("quota-key").value, assignments: $("quota-assignments").value }, "quota-message");
  });
  poll();
});
