// The ops dashboard: the exception queue, the week at a glance, nodes with load, the calendar forecast and the
// coming sessions, refreshed every 2 s (the week's report every minute). It calls the same /v1 API as any client,
// with an API key that has the ops:read and sessions:read scopes (and exceptions:write to acknowledge or resolve
// from here).
const keyInput = document.getElementById("key");
const statusEl = document.getElementById("status");
let apiKey = sessionStorage.getItem("classmesh-api-key") || "";
keyInput.value = apiKey;

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = keyInput.value.trim();
  sessionStorage.setItem("classmesh-api-key", apiKey);
  week = null;  // asked again with the new key
  weekFetched = 0;
  refresh();
});

async function api(path, method = "GET", payload = undefined) {
  const headers = { Authorization: `Bearer ${apiKey}` };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/v1${path}`, { method, headers, body: payload && JSON.stringify(payload) });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function cell(text, numeric = false) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function fill(tableId, rows) {
  const tbody = document.querySelector(`#${tableId} tbody`);
  tbody.replaceChildren(...rows);
}

function nodeRows(nodes, hot) {
  return nodes.items.map((n) => {
    const tr = document.createElement("tr");
    if (hot.has(n.node_id)) tr.className = "hot";
    if (n.state !== "serving") tr.className = "down";
    tr.append(cell(n.node_id), cell(n.kind), cell(n.region), cell(n.state), cell(n.version),
      cell(n.rooms, true), cell(n.participants, true), cell(`${n.streams}/${n.capacity_streams}`, true),
      cell(`${Math.round(n.load * 100)} %`, true), cell(n.cpu.toFixed(2), true), cell(`${n.last_seen_s.toFixed(1)} s`, true));
    return tr;
  });
}

function forecastRows(forecast) {
  return forecast.regions.map((r) => {
    const tr = document.createElement("tr");
    const bars = document.createElement("td");
    const peak = Math.max(1, ...r.slots.map((s) => s.streams));
    for (const slot of r.slots) {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = "10px";
      bar.style.height = `${Math.max(1, Math.round((slot.streams / peak) * 16))}px`;
      bar.title = `${slot.start}: ${slot.sessions} sessions, ${slot.participants} people, ${slot.streams} streams`;
      bars.append(bar);
    }
    tr.append(cell(r.region), cell(r.nodes_serving, true), cell(r.peak_nodes_needed, true), bars);
    if (r.peak_nodes_needed > r.nodes_serving) tr.className = "hot";
    return tr;
  });
}

function sessionRows(page) {
  return page.items.map((s) => {
    const tr = document.createElement("tr");
    tr.append(cell(new Date(s.start).toLocaleString()), cell(s.session_id), cell(s.status), cell(s.instructor_id),
      cell(s.student_ids.join(", ")), cell(s.region || "-"), cell(s.node_id || "-"), cell(s.recording ? "on" : "off"));
    return tr;
  });
}

// One line on what an exception is about, from its details (the full object is in the API).
function summary(e) {
  if (e.kind === "student_at_risk") return (e.details.reasons || []).map((r) => r.rule.replaceAll("_", " ")).join(", ");
  if (e.kind === "recording_incomplete") return `${(e.details.gaps || []).length} gap(s)`;
  if (e.kind === "documentation_missing") return "session document not completed";
  if (e.kind === "instructor_no_show") return `${(e.details.students_waiting || []).length} student(s) waiting`;
  return e.details.message || e.details.cause || e.details.reason || "";
}

function act(e, status, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.addEventListener("click", async () => {
    try {
      await api(`/exceptions/${e.exception_id}`, "PATCH", { status });
      refresh();
    } catch (error) {
      statusEl.textContent = `error: ${error.message}`;
    }
  });
  return button;
}

function exceptionRows(page) {
  const order = { high: 0, medium: 1, low: 2 };
  const items = [...page.items].sort((a, b) =>
    (order[a.severity] ?? 3) - (order[b.severity] ?? 3) || b.updated_at.localeCompare(a.updated_at));
  document.getElementById("exceptions-empty").hidden = items.length > 0;
  return items.map((e) => {
    const tr = document.createElement("tr");
    tr.dataset.kind = e.kind;
    if (e.severity === "high") tr.className = "down";
    const about = Object.entries(e.subject_refs).map(([k, v]) => `${k} ${v}`).join(", ");
    const actions = document.createElement("td");
    if (e.status === "open") actions.append(act(e, "acked", "Acknowledge"));
    actions.append(act(e, "resolved", "Resolve"));
    tr.append(cell(new Date(e.updated_at).toLocaleString()), cell(e.kind.replaceAll("_", " ")), cell(e.severity),
      cell(e.status), cell(e.owner || "-"), cell(about), cell(summary(e)), cell(e.occurrences, true), actions);
    return tr;
  });
}

// Every open or acknowledged exception (pages of 200, up to 1000; the severest are sorted first here).
async function openExceptions() {
  const items = [];
  let cursor = null;
  for (let i = 0; i < 5; i += 1) {
    const page = await api(`/exceptions?status=open,acked&limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return { items };
}

let week = null;  // {report} or {error}: the last answer, asked again once a minute
let weekFetched = 0;

async function thisWeek() {
  if (Date.now() - weekFetched > 60_000) {
    weekFetched = Date.now();
    try {
      week = { report: await api("/reports/week") };
    } catch (error) {
      week = { error };
    }
  }
  return week;
}

function percent(rate) {
  return rate === null ? "-" : `${Math.round(rate * 100)} %`;
}

function showWeek(report) {
  document.getElementById("week-summary").textContent = `${report.sessions} sessions ended · student attendance ` +
    `${percent(report.attendance_rate)} · recordings with problems: ${report.recording_issues.length} · ` +
    `documents completed ${report.documents.completed}, pending ${report.documents.pending}`;
  fill("week-instructors", report.instructors.map((i) => {
    const tr = document.createElement("tr");
    if (i.below_peers.length) tr.className = "hot";
    tr.append(cell(i.instructor_id), cell(i.sessions, true), cell(percent(i.attendance_rate), true),
      cell(i.participation_per_student ?? "-", true), cell(i.documents_completed, true),
      cell(i.documents_pending, true), cell(i.below_peers.map((f) => f.replaceAll("_", " ")).join(", ") || "-"));
    return tr;
  }));
  document.getElementById("week-students").textContent = report.students_under_half.length
    ? `Attended fewer than half their sessions: ${report.students_under_half.map((s) => `${s.student_id} (${s.attended}/${s.sessions})`).join(", ")}`
    : "Every student attended at least half their sessions.";
}

async function refresh() {
  if (!apiKey) {
    statusEl.textContent = "enter an API key (classmesh dev prints one)";
    return;
  }
  try {
    const now = new Date();
    const until = new Date(now.getTime() + 24 * 3600 * 1000);
    // the week's report is a heavier query: its failure must not hide the queue or the nodes
    const weekly = thisWeek().then((w) => {
      if (w?.report) showWeek(w.report);
      else document.getElementById("week-summary").textContent = w ? `not available: ${w.error.message}` : "loading…";
    });
    const [exceptions, nodes, forecast, sessions] = await Promise.all([
      openExceptions(),
      api("/nodes"),
      api("/forecast?hours=6"),
      api(`/sessions?limit=200&start_from=${encodeURIComponent(new Date(now.getTime() - 3600 * 1000).toISOString())}` +
        `&start_before=${encodeURIComponent(until.toISOString())}`),
    ]);
    fill("exceptions", exceptionRows(exceptions));
    await weekly;
    const hot = new Set(nodes.hot_nodes);
    fill("nodes", nodeRows(nodes, hot));
    document.getElementById("imbalance").textContent = Object.entries(nodes.imbalance)
      .map(([region, spread]) => `${region}: load spread ${Math.round(spread * 100)} %`).join(" · ") || "no serving media nodes";
    fill("forecast", forecastRows(forecast));
    fill("sessions", sessionRows(sessions));
    statusEl.textContent = `updated ${now.toLocaleTimeString()}`;
  } catch (error) {
    statusEl.textContent = `error: ${error.message}`;
  }
}

refresh();
setInterval(refresh, 2000);
