// The Weft dashboard. It reads snapshots from this node (/v1/dashboard/events, as
// Server-Sent Events) and draws them. Everything shown comes from users (agent names,
// payloads, errors), so the DOM is built with createElement and textContent only: no
// innerHTML, no markup built from strings.
//
// On a node with auth on, every request carries the bearer token the user entered, as an
// `authorization` header: never in a URL, where it would reach logs and history. That is
// why the live view reads its Server-Sent Events with fetch and a streamed body rather than
// EventSource, which cannot send headers. The token is kept in sessionStorage: this tab
// only, gone when it closes.
"use strict";

// ---- the bearer token ------------------------------------------------------------------------

const TOKEN_KEY = "weft.token";

const token = {
  get() {
    try { return sessionStorage.getItem(TOKEN_KEY) || token.memory; } catch (_) { return token.memory; }
  },
  set(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token lasts until the page reloads */ }
    token.memory = value;
  },
  memory: "",
  /** What the page says about the token: its id (the public part), never the secret. */
  describe() {
    const t = token.get();
    if (!t) return "no token";
    const m = /^weft_([0-9a-z]+)_/.exec(t);
    return m ? "token " + m[1] : "token set";
  },
};

/**
 * fetch() with the token. A 401 (no or bad credentials) shows the node's message at the top
 * of the page; so does a 403 on a page-wide read (`page`), where nothing else would show it.
 */
async function send(path, init, page) {
  const headers = new Headers((init && init.headers) || {});
  const t = token.get();
  if (t) headers.set("authorization", "Bearer " + t);
  const response = await fetch(path, { ...init, headers, credentials: "omit", referrerPolicy: "no-referrer" });
  if (response.status === 401 || (page && response.status === 403)) {
    const text = await response.clone().text().catch(() => "");
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
    showAuthProblem(apiError(response.status, json, text));
  }
  return response;
}

function showAuthProblem(message) {
  const hint = token.get() ? " (check the token above)" : " (enter a token above)";
  const banner = $("auth-message");
  banner.textContent = message + hint;
  banner.hidden = false;
}

function clearAuthProblem() {
  $("auth-message").hidden = true;
  $("auth-message").textContent = "";
}

// ---- the HTTP/JSON API: the page's only two writes ------------------------------------------
// Both answer errors as {"error": {"code", "message"}}; apiError turns that into text.
const api = {
  /** Calls agent.delegate with `args` (a JSON value) and waits for its final state. */
  call(agent, delegate, args) {
    return request("POST", "/v1/call/" + encodeURIComponent(agent) + "/" + encodeURIComponent(delegate), args);
  },
  /** Cancels execution `id`. */
  cancel(id) {
    return request("POST", "/v1/executions/" + encodeURIComponent(id) + "/cancel", {});
  },
};

async function request(method, path, body) {
  let response;
  try {
    response = await send(path, {
      method,
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error("request failed: " + e.message);
  }
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error(apiError(response.status, json, text));
  return json;
}

function apiError(status, json, text) {
  if (json && json.error && typeof json.error === "object") {
    return (json.error.code || "HTTP " + status) + ": " + (json.error.message || "");
  }
  return "HTTP " + status + (text ? ": " + text.slice(0, 300) : "");
}

// ---- DOM helpers -----------------------------------------------------------------------------

/** An element; string and number children become text nodes, never markup. */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = String(dv);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const $ = (id) => document.getElementById(id);
const text = (id, value) => { $(id).textContent = value; };

function fillTable(id, rows, columns, emptyText) {
  const body = $(id).tBodies[0];
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText)));
  } else {
    body.replaceChildren(...rows);
  }
}

function pill(value, kind) { return el("span", { class: "pill " + kind }, value); }

const statusKind = { completed: "ok", failed: "bad", cancelled: "warn", assigned: "info", pending: "" };
const gossipKind = { alive: "ok", suspect: "warn", down: "bad", left: "", unknown: "" };

function ago(ms, now) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  return Math.floor(s / 3600) + "h ago";
}

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return ms + " ms";
  return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
}

function time(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC") : ""; }

/** A payload view ({codec, bytes, json, text, hex, truncated}) as text. */
function payloadText(p, pretty) {
  if (!p) return "";
  let out;
  if (p.json !== null && p.json !== undefined) out = JSON.stringify(p.json, null, pretty ? 2 : 0);
  else if (p.text !== null && p.text !== undefined) out = p.text;
  else if (p.hex !== null && p.hex !== undefined) out = p.codec + " " + p.hex;
  else out = "null";
  if (p.truncated) out += " … (" + p.bytes + " bytes, clipped)";
  return out;
}

// ---- state -----------------------------------------------------------------------------------

const state = {
  filter: { status: "", agent: "" },
  selected: null,     // the execution whose detail is open
  detail: null,       // its last fetched view
  snapshot: null,
  stream: null,       // the AbortController of the live event stream
  retry: null,
};

// ---- rendering -------------------------------------------------------------------------------

function render(s) {
  state.snapshot = s;
  const now = s.generated_ms;
  text("cluster-name", "cluster " + s.cluster);
  text("node", "node " + s.node_id + " · applied " + s.applied_index);
  const leader = $("leader");
  leader.textContent = s.leader_id ? "leader: node " + s.leader_id + " (term " + s.term + ")" : "no leader";
  leader.className = "pill " + (s.leader_id ? "ok" : "bad");
  text("updated", "updated " + new Date(now).toLocaleTimeString());

  renderMembers(s);
  renderSessions(s, now);
  renderExecutions(s, now);
  renderInstances(s);
  renderStreams(s);
  renderScalers(s, now);
}

function renderMembers(s) {
  const rows = s.members.map((m) => el("tr", { data: { memberId: m.id }, class: m.gossip === "alive" ? "" : "down" },
    el("td", {}, String(m.id), m.id === s.node_id ? el("span", { class: "muted" }, " (this node)") : null),
    el("td", {}, m.address),
    el("td", { class: "role" }, m.id === s.leader_id ? pill(m.role, "info") : m.role),
    el("td", {}, m.voter ? "yes" : "no"),
    el("td", { class: "gossip" }, pill(m.gossip, gossipKind[m.gossip] || "")),
    el("td", { class: "num" }, m.last_log_index ?? "–"),
    el("td", { class: "num" }, m.applied_index ?? "–"),
    el("td", { class: "num lag" }, m.lag ?? "–")));
  fillTable("members", rows, 8, "no members known yet");
}

function renderSessions(s, now) {
  text("sessions-count", s.totals.sessions + " connected");
  const rows = s.sessions.map((x) => el("tr", { data: { sessionId: x.id } },
    el("td", { class: "num" }, x.id),
    el("td", { class: "name" }, x.name || "–"),
    el("td", { class: "num" }, x.node_id),
    el("td", { class: "delegates" }, x.agents.map((a) => el("div", { data: { agent: a.name } },
      a.name, "(", a.all_delegates ? "*" : a.delegates.join(", "), ")"))),
    el("td", { class: "num", title: x.in_flight_ids.join(", ") }, x.in_flight + " / " + x.capacity),
    el("td", { class: "num" }, x.instances),
    el("td", {}, ago(x.opened_ms, now), x.draining ? pill("draining", "warn") : null)));
  fillTable("sessions", rows, 7, "no agent session is connected");
}

function renderExecutions(s, now) {
  const t = s.totals;
  text("executions-count", t.executions + " stored · " + t.pending + " pending · " + t.assigned + " assigned" +
    (s.executions.length < t.executions ? " · showing " + s.executions.length + " newest" +
      (s.filter.status || s.filter.agent ? " matching" : "") : ""));
  const rows = s.executions.map((e) => el("tr", {
    data: { executionId: e.id },
    class: "clickable" + (e.id === state.selected ? " selected" : ""),
    onclick: () => select(e.id),
  },
    el("td", { class: "num" }, e.id),
    el("td", { class: "agent" }, e.agent, e.instance !== null ? el("span", { class: "muted" }, "/" + e.instance) : null),
    el("td", { class: "delegate" }, e.delegate),
    el("td", { class: "status" }, pill(e.status, statusKind[e.status] || "")),
    el("td", { class: "num" }, e.attempts),
    el("td", { class: "args" }, payloadText(e.args, false)),
    el("td", { title: time(e.created_ms) }, ago(e.created_ms, now)),
    el("td", { class: "num" }, e.finished_ms ? duration(e.finished_ms - e.created_ms) : "")));
  fillTable("executions", rows, 8, "no executions" + (s.filter.status || s.filter.agent ? " match the filter" : ""));
  if (state.selected !== null) {
    const listed = s.executions.find((e) => e.id === state.selected);
    if (listed && (!state.detail || listed.status !== state.detail.status || listed.attempts !== state.detail.attempts)) {
      loadDetail(state.selected);
    }
  }
}

function renderInstances(s) {
  text("instances-count", s.totals.instances ? "(" + s.totals.instances + ")" : "");
  const rows = s.instances.map((i) => el("tr", {},
    el("td", {}, i.agent), el("td", {}, i.id), el("td", {}, i.lifecycle),
    el("td", { class: "num" }, i.session_id ?? "–"), el("td", { class: "num" }, i.running),
    el("td", { class: "num" }, i.queued)));
  fillTable("instances", rows, 6, "no instances");
}

function renderStreams(s) {
  text("streams-count", s.totals.streams ? "(" + s.totals.streams + ")" : "");
  const rows = [];
  for (const st of s.streams) {
    rows.push(el("tr", { data: { stream: st.name } },
      el("td", {}, el("strong", {}, st.name), st.closed ? el("span", { class: "muted" }, " closed: " + st.closed) : null),
      el("td", {}, st.kind), el("td", { class: "num" }, st.first_seq + "–" + st.last_seq),
      el("td", { class: "num" }, st.items), el("td", { class: "num" }, st.bytes),
      el("td", {}, ""), el("td", {}, ""), el("td", {}, "")));
    for (const c of st.cursors) {
      rows.push(el("tr", { data: { cursor: c.name } },
        el("td", {}, "  ↳ " + c.name), el("td", { class: "muted" }, "cursor"), el("td", {}, ""),
        el("td", { class: "muted num", title: "delivered / redelivered / dead-lettered" },
          c.delivered + " / " + c.redelivered + " / " + c.dead_lettered),
        el("td", {}, ""),
        el("td", { class: "num" }, c.lag),
        el("td", { class: "num", title: "awaiting ack + awaiting redelivery" }, c.ack_pending + c.redelivery_pending),
        el("td", { class: "num" }, c.listeners)));
    }
    if (st.cursors_total > st.cursors.length) {
      rows.push(el("tr", {}, el("td", { class: "muted", colspan: 8 }, "  … " + (st.cursors_total - st.cursors.length) + " more cursors")));
    }
  }
  fillTable("streams", rows, 8, "no streams");
}

function renderScalers(s, now) {
  const box = $("scalers");
  if (s.scalers.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, "no scaler has published a status"));
    return;
  }
  box.replaceChildren(...s.scalers.map((g) => scalerGroup(g, now)));
}

function scalerGroup(g, now) {
  const st = g.status || {};
  const agents = Object.entries(st.agents || {});
  const head = el("tr", {}, ["agent", "mode", "backend", "desired", "running", "starting", "stopping", "waiting", "problem"]
    .map((h) => el("th", {}, h)));
  const rows = agents.length === 0
    ? [el("tr", {}, el("td", { class: "empty", colspan: 9 }, "no agents"))]
    : agents.map(([name, a]) => el("tr", { data: { agent: name } },
      el("td", {}, name), el("td", {}, a.mode), el("td", {}, a.backend),
      el("td", { class: "num desired" }, a.desired), el("td", { class: "num running" }, a.running),
      el("td", { class: "num" }, a.starting), el("td", { class: "num" }, a.stopping),
      el("td", { class: "num" }, a.waiting),
      el("td", {}, scalerProblem(a))));
  return el("div", { class: "scaler", data: { group: g.group } },
    el("h3", {}, "group " + g.group,
      g.problem ? pill(g.problem, "warn") : pill("active: " + (g.lease_holder || st.holder || "?"), "ok"),
      st.updated_at_ms ? el("span", { class: "muted" }, " published " + ago(st.updated_at_ms, now)) : null),
    el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
}

function scalerProblem(a) {
  const c = a.crash_looping;
  if (c) {
    return el("span", { class: "pill bad", title: c.output_tail || "" },
      "crash loop: " + c.failures + " failures, " + c.reason);
  }
  return a.last_error ? el("span", { class: "muted" }, a.last_error) : "";
}

// ---- execution detail ------------------------------------------------------------------------

function select(id) {
  state.selected = id;
  state.detail = null;
  $("detail").hidden = false;
  text("detail-message", "");
  for (const row of $("executions").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.executionId === String(id));
  }
  loadDetail(id);
}

async function loadDetail(id) {
  let e;
  try {
    const response = await send("/v1/dashboard/executions/" + encodeURIComponent(id));
    const body = await response.text();
    let json = null;
    try { json = JSON.parse(body); } catch (_) { /* not JSON */ }
    if (!response.ok) throw new Error(apiError(response.status, json, body));
    e = json;
  } catch (err) {
    showMessage("detail-message", err.message, true);
    return;
  }
  if (state.selected !== id) return;
  state.detail = e;
  text("detail-id", "#" + e.id);
  const fields = [
    ["agent", e.agent + (e.instance !== null ? " / " + e.instance : "")],
    ["delegate", e.delegate],
    ["status", pill(e.status, statusKind[e.status] || "")],
    ["attempts", e.attempts],
    ["session", e.session_id ?? "–"],
    ["created", time(e.created_ms)],
    ["not before", time(e.not_before_ms) || "–"],
    ["deadline", time(e.deadline_ms) || "–"],
    ["finished", time(e.finished_ms) || "–"],
    ["took", e.finished_ms ? duration(e.finished_ms - e.created_ms) : "–"],
    ["priority", e.priority],
    ["parent", e.parent_id ?? "–"],
    ["idempotency key", e.idempotency_key ?? "–"],
  ];
  $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { data: { field: k } }, v)]));
  text("detail-args", payloadText(e.args, true));
  if (e.error) {
    text("detail-outcome-title", "error");
    text("detail-outcome", e.error.kind + ": " + e.error.message);
  } else {
    text("detail-outcome-title", "result");
    text("detail-outcome", e.result ? payloadText(e.result, true) : "(not finished)");
  }
  $("detail-cancel").disabled = ["completed", "failed", "cancelled"].includes(e.status);
}

function showMessage(id, message, bad) {
  const node = $(id);
  node.textContent = message;
  node.className = "message" + (bad ? " bad" : "");
}

// ---- live updates ----------------------------------------------------------------------------

/** Longest Server-Sent Event the page takes (a snapshot is well under it). */
const MAX_EVENT_CHARS = 16 << 20;
/** Pause before opening the stream again after it ended, and after a refusal. */
const RECONNECT_MS = 1000;
const REFUSED_RETRY_MS = 5000;

function setLive(textValue, kind) {
  const live = $("live");
  live.textContent = textValue;
  live.className = "pill " + kind;
}

/** Opens the live stream (closing the one before), and keeps it open. */
async function connect() {
  if (state.stream) state.stream.abort();
  clearTimeout(state.retry);
  const q = new URLSearchParams();
  if (state.filter.status) q.set("status", state.filter.status);
  if (state.filter.agent) q.set("agent", state.filter.agent);
  const stream = new AbortController();
  state.stream = stream;
  const current = () => state.stream === stream && !stream.signal.aborted;
  let response;
  try {
    response = await send(
      "/v1/dashboard/events" + (q.toString() ? "?" + q : ""),
      { headers: { accept: "text/event-stream" }, cache: "no-store", signal: stream.signal },
      true,
    );
  } catch (_) {
    if (!current()) return;
    setLive("disconnected; retrying", "bad");
    state.retry = setTimeout(connect, REFUSED_RETRY_MS);
    return;
  }
  if (!current()) return;
  if (!response.ok) {
    const body = await response.text().catch(() => "");
    let json = null;
    try { json = JSON.parse(body); } catch (_) { /* not JSON */ }
    $("live").title = apiError(response.status, json, body);
    if (response.status === 401 || response.status === 403) {
      // Trying again cannot help: it waits for another token (the banner says why).
      setLive("not authorized", "bad");
      return;
    }
    // Refused (for example 503: too many dashboards on this node): say why, try later.
    setLive("disconnected; retrying", "bad");
    explainRefusal(q);
    state.retry = setTimeout(connect, REFUSED_RETRY_MS);
    return;
  }
  clearAuthProblem();
  $("live").title = "";
  setLive("live", "ok");
  let end = null;
  try {
    await readEvents(response.body, (type, data) => {
      if (!current()) return;
      if (type === "end") {
        end = data;
        return;
      }
      if (type !== "snapshot") return;
      setLive("live", "ok");
      render(JSON.parse(data));
    });
  } catch (_) { /* cut off, or closed by connect(): handled below */ }
  if (!current()) return;
  if (end !== null) {
    // The node ended the stream with an error: the token was revoked or expired after the
    // stream opened. Trying again cannot help: it waits for another token (the banner says why).
    let json = null;
    try { json = JSON.parse(end); } catch (_) { /* not JSON */ }
    const message = apiError(401, json, end);
    $("live").title = message;
    showAuthProblem(message);
    setLive("not authorized", "bad");
    return;
  }
  setLive("reconnecting", "warn");
  state.retry = setTimeout(connect, RECONNECT_MS);
}

/**
 * Reads a text/event-stream body, calling onEvent(type, data) for each event; comments
 * (the server's keep-alives) are skipped. Resolves when the stream ends.
 */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let carry = ""; // a "\r" that ended a chunk: the next may start with its "\n"
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    let chunk = carry + value;
    carry = chunk.endsWith("\r") ? "\r" : "";
    if (carry) chunk = chunk.slice(0, -1);
    buffer += chunk.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line === "" || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") type = v;
        else if (field === "data") data.push(v);
      }
      if (data.length) onEvent(type, data.join("\n"));
    }
    if (buffer.length > MAX_EVENT_CHARS) {
      reader.cancel();
      throw new Error("an event over " + MAX_EVENT_CHARS + " characters");
    }
  }
}

async function explainRefusal(q) {
  try {
    const response = await send("/v1/dashboard/snapshot" + (q.toString() ? "?" + q : ""), {}, true);
    const body = await response.text();
    if (response.ok) render(JSON.parse(body));
    else $("live").title = apiError(response.status, null, body);
  } catch (_) { /* the node is unreachable: the pill says so */ }
}

// ---- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  text("auth-state", token.describe());
  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("auth-token").value.trim();
    $("auth-token").value = "";
    if (!value) return;
    token.set(value);
    text("auth-state", token.describe());
    clearAuthProblem();
    connect();
    if (state.selected !== null) loadDetail(state.selected);
  });
  $("auth-forget").addEventListener("click", () => {
    token.set("");
    text("auth-state", token.describe());
    clearAuthProblem();
    connect();
  });
  $("filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filter = { status: $("filter-status").value, agent: $("filter-agent").value.trim() };
    connect();
  });
  $("detail-close").addEventListener("click", () => {
    state.selected = null;
    state.detail = null;
    $("detail").hidden = true;
    for (const row of $("executions").tBodies[0].rows) row.classList.remove("selected");
  });
  $("detail-cancel").addEventListener("click", async () => {
    const id = state.selected;
    if (id === null) return;
    showMessage("detail-message", "cancelling…", false);
    try {
      const reply = await api.cancel(id);
      showMessage("detail-message", "cancelled " + (reply && reply.cancelled !== undefined ? reply.cancelled : "?") + " execution(s)", false);
    } catch (err) {
      showMessage("detail-message", err.message, true);
    }
  });
  $("call").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let args;
    try {
      args = JSON.parse($("call-args").value || "null");
    } catch (err) {
      showMessage("call-result", "args are not JSON: " + err.message, true);
      return;
    }
    showMessage("call-result", "calling…", false);
    try {
      const e = await api.call($("call-agent").value.trim(), $("call-delegate").value.trim(), args);
      const outcome = e.error ? e.error.kind + ": " + e.error.message : JSON.stringify(e.result);
      showMessage("call-result", "execution " + e.id + " " + e.status + ": " + outcome, e.status !== "completed");
    } catch (err) {
      showMessage("call-result", err.message, true);
    }
  });
  connect();
});
