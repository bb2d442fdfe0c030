// The dashboard: instances, recent routes and fanouts, sessions and runs, live over
// server-sent events. Plain DOM (textContent only: nothing from the server becomes markup).
// Reads use the HttpOnly cookie set at login; this page never sees the API key.

const root = document.body.dataset.root || "";
const $ = (selector) => document.querySelector(selector);
const MAX_ROWS = 100;
const POLL_MS = 4000;

const known = new Map(); // instance name -> last state shown (for announcements)
let runStream = null;
let lastId = 0; // the newest activity entry seen: where a new stream resumes

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function ms(value) {
  return value === null || value === undefined ? "" : `${Number(value).toFixed(1)} ms`;
}

// Replace a table body's rows only when they changed, keeping the keyboard focus on the
// same button (by its text) so a periodic refresh never throws a keyboard user out.
const lastRendered = new Map();
function replaceRows(body, rows, key, empty) {
  if (lastRendered.get(body) === key) return;
  lastRendered.set(body, key);
  const focused = body.contains(document.activeElement) ? document.activeElement.textContent : null;
  if (rows.length === 0) {
    const row = el("tr");
    row.append(el("td", empty, { colspan: String(body.parentElement.querySelectorAll("thead th").length) }));
    rows = [row];
  }
  body.replaceChildren(...rows);
  if (focused !== null) {
    const again = [...body.querySelectorAll("button")].find((b) => b.textContent === focused);
    if (again) again.focus();
  }
}

function announce(message) {
  $("#announcer").append(el("p", message));
  const lines = $("#announcer").children;
  while (lines.length > 5) lines[0].remove();
}

async function api(path) {
  const reply = await fetch(root + path, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  if (reply.status === 401) {
    window.location.assign(`${root}/ui/login`);
    throw new Error("logged out");
  }
  if (!reply.ok) throw new Error(`${path}: ${reply.status}`);
  return reply.json();
}

// -- instances ----------------------------------------------------------------------------

function stateBadge(state) {
  return el("span", state, { class: `state state-${state}` });
}

function timeline(points) {
  const list = el("ol", null, { class: "timeline", "aria-label": "Health changes, oldest first" });
  for (const point of points.slice(-10)) {
    const item = el("li", null, { title: `${time(point.at)} ${point.state}: ${point.reason}` });
    item.append(el("span", "", { class: `dot state-${point.state}`, "aria-hidden": "true" }));
    item.append(el("span", `${time(point.at)} ${point.state}`, { class: "visually-hidden" }));
    list.append(item);
  }
  return list;
}

function renderInstances(snapshot) {
  const body = $("#instances tbody");
  const rows = [];
  const counts = {};
  for (const inst of snapshot.instances) {
    counts[inst.state] = (counts[inst.state] || 0) + 1;
    const row = el("tr", null, { id: `instance-${inst.name}`, "data-state": inst.state });
    row.append(el("th", inst.name, { scope: "row" }));
    const state = el("td");
    state.append(stateBadge(inst.state));
    row.append(state);
    row.append(el("td", inst.reason || ""));
    row.append(el("td", ms(inst.latency_ms)));
    row.append(el("td", inst.in_flight, { class: "num" }));
    const until = inst.ejected_until
      ? `ejected until ${time(inst.ejected_until)}`
      : inst.next_probe_at ? `next probe ${time(inst.next_probe_at)}` : "";
    row.append(el("td", until));
    const line = el("td");
    line.append(timeline(inst.timeline || []));
    row.append(line);
    rows.push(row);
    const before = known.get(inst.name);
    if (before !== undefined && before !== inst.state) {
      announce(`Instance ${inst.name} is now ${inst.state}${inst.reason ? `: ${inst.reason}` : ""}`);
    }
    known.set(inst.name, inst.state);
  }
  replaceRows(body, rows, JSON.stringify(snapshot.instances), "No instances.");
  const summary = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
  $("#instances-summary").textContent =
    `${snapshot.instances.length} instances: ${summary || "none"} (as of ${time(snapshot.at)})`;
}

// -- activity -----------------------------------------------------------------------------

function attemptsText(entry) {
  return (entry.attempts || [])
    .map((a) => `${a.instance}: ${a.outcome} (${ms(a.latency_ms)})`)
    .join(" → ");
}

function skippedText(entry) {
  return (entry.skipped || []).map((s) => `${s.instance}: ${s.reason}`).join(", ");
}

function activityRow(entry) {
  const row = el("tr", null, { "data-kind": entry.kind, "data-id": String(entry.id) });
  row.append(el("td", time(entry.at)));
  row.append(el("td", entry.kind));
  const outcome = el("td");
  outcome.append(el("span", entry.outcome, { class: `outcome outcome-${entry.outcome}` }));
  row.append(outcome);
  if (entry.kind === "health") {
    row.append(el("td", entry.instance));
    row.append(el("td", `${entry.old} → ${entry.outcome}`));
    row.append(el("td", entry.reason || ""));
  } else if (entry.kind === "fanout") {
    const statuses = Object.entries(entry.statuses || {}).map(([n, s]) => `${n}: ${s}`);
    row.append(el("td", ""));
    row.append(el("td", statuses.join(", ")));
    row.append(el("td", ""));
  } else {
    row.append(el("td", entry.instance || ""));
    row.append(el("td", attemptsText(entry)));
    row.append(el("td", skippedText(entry)));
  }
  row.append(el("td", ms(entry.duration_ms)));
  row.append(el("td", entry.request_id || "", { class: "mono" }));
  return row;
}

function showsHealth() {
  return $("#show-health").checked;
}

function addActivity(entry, atTop = true) {
  if (entry.kind === "health" && !showsHealth()) return; // announced by the instances view
  const body = $("#activity tbody");
  if (body.querySelector(`tr[data-id="${entry.id}"]`)) return;
  const row = activityRow(entry);
  if (atTop) body.prepend(row); else body.append(row);
  while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
}

async function loadActivity() {
  const page = await api("/api/orchestrator/activity?limit=50");
  lastId = Math.max(lastId, page.last_id);
  $("#activity tbody").replaceChildren();
  for (const entry of page.entries) {
    if (entry.kind !== "health" || showsHealth()) addActivityQuiet(entry);
  }
}

function addActivityQuiet(entry) {
  const body = $("#activity tbody");
  body.append(activityRow(entry));
}

// -- sessions -----------------------------------------------------------------------------

function sessionId(session) {
  return session.session_id ?? session.sessionId;
}

async function loadSessions() {
  const list = await api("/api/orchestrator/sessions");
  const rows = list.sessions.slice(0, MAX_ROWS).map((session) => {
    const id = sessionId(session);
    const row = el("tr", null, { "data-session": id });
    const cell = el("th", null, { scope: "row" });
    const open = el("button", id, { type: "button", class: "link", "aria-controls": "history" });
    open.addEventListener("click", () => openHistory(id));
    cell.append(open);
    row.append(cell);
    row.append(el("td", session.state));
    row.append(el("td", session.instance));
    row.append(el("td", session.messages, { class: "num" }));
    row.append(el("td", time(session.last_active_at ?? session.lastActiveAt)));
    return row;
  });
  replaceRows($("#sessions tbody"), rows, JSON.stringify(list.sessions.slice(0, MAX_ROWS)), "No sessions yet.");
}

function show(value) {
  return value === null || value === undefined ? "" : JSON.stringify(value);
}

async function openHistory(id) {
  const page = await api(`/api/orchestrator/sessions/${encodeURIComponent(id)}/history?limit=100`);
  const rows = page.messages.map((m) => {
    const row = el("tr");
    row.append(el("td", m.seq, { class: "num" }));
    row.append(el("td", m.kind));
    row.append(el("td", m.instance));
    row.append(el("td", show(m.data), { class: "mono" }));
    row.append(el("td", show(m.reply), { class: "mono" }));
    row.append(el("td", ms(m.latency_ms)));
    row.append(el("td", time(m.created_at)));
    return row;
  });
  $("#history-table tbody").replaceChildren(...rows);
  $("#history-heading").textContent = `History of ${id} (${page.total} entries)`;
  $("#history").hidden = false;
  $("#history-heading").focus();
}

// -- runs ---------------------------------------------------------------------------------

async function loadRuns() {
  const list = await api("/api/orchestrator/runs?limit=20");
  const rows = list.runs.map((run) => {
    const row = el("tr", null, { "data-run": run.run_id, "data-state": run.state });
    const cell = el("th", null, { scope: "row" });
    const open = el("button", run.run_id, {
      type: "button", class: "link", "aria-controls": "run-events",
    });
    open.addEventListener("click", () => followRun(run.run_id));
    cell.append(open);
    row.append(cell);
    row.append(el("td", run.kind));
    row.append(el("td", run.state));
    row.append(el("td", run.instance || ""));
    row.append(el("td", time(run.created_at)));
    return row;
  });
  replaceRows($("#runs tbody"), rows, JSON.stringify(list.runs), "No runs yet.");
}

function stopRun() {
  if (runStream !== null) runStream.close();
  runStream = null;
}

function followRun(id) {
  stopRun();
  const list = $("#run-events-list");
  list.replaceChildren();
  $("#run-events-heading").textContent = `Events of run ${id}`;
  $("#run-events").hidden = false;
  $("#run-events-heading").focus();
  const url = `${root}/api/orchestrator/runs/${encodeURIComponent(id)}/events`;
  const stream = new EventSource(url, { withCredentials: true });
  runStream = stream;
  for (const type of ["state", "attempt", "entry", "delta", "result"]) {
    stream.addEventListener(type, (event) => {
      const item = el("li", null, { "data-type": type });
      item.append(el("span", type, { class: "event-type" }), " ");
      item.append(el("code", event.data));
      list.append(item);
      if (type === "result") {
        stopRun();
        loadRuns().catch(() => {});
      }
    });
  }
  stream.onerror = () => {
    if (runStream === stream && stream.readyState === EventSource.CLOSED) stopRun();
  };
}

// -- live ---------------------------------------------------------------------------------

function connect() {
  const status = $("#connection");
  const url = `${root}/api/orchestrator/activity/stream?interval=1&after=${lastId}`;
  const stream = new EventSource(url, {
    withCredentials: true,
  });
  stream.onopen = () => {
    status.dataset.state = "live";
    status.textContent = "live";
  };
  stream.onerror = () => {
    status.dataset.state = "reconnecting";
    status.textContent = "reconnecting…";
    if (stream.readyState === EventSource.CLOSED) {
      setTimeout(async () => {
        try {
          await api("/api/orchestrator/activity?limit=1"); // a 401 goes to the login page
        } catch { /* reconnect below */ }
        connect();
      }, 2000);
    }
  };
  stream.addEventListener("instances", (event) => renderInstances(JSON.parse(event.data)));
  stream.addEventListener("activity", (event) => {
    const entry = JSON.parse(event.data);
    lastId = Math.max(lastId, entry.id);
    addActivity(entry);
  });
}

function poll(load) {
  const run = () => load().catch(() => {});
  run();
  setInterval(run, POLL_MS);
}

$("#history-close").addEventListener("click", () => {
  $("#history").hidden = true;
  $("#sessions-heading").focus();
});
$("#run-events-close").addEventListener("click", () => {
  stopRun();
  $("#run-events").hidden = true;
});
$("#show-health").addEventListener("change", () => loadActivity().catch(() => {}));
$("#sessions-heading").setAttribute("tabindex", "-1");

loadActivity().catch(() => {}).finally(connect);
poll(loadSessions);
poll(loadRuns);
