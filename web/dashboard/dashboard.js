// The ops dashboard: nodes with load, the calendar forecast and the coming sessions, refreshed every 2 s.
// It calls the same /v1 API as any client, with an API key that has the ops:read and sessions:read scopes.
const keyInput = document.getElementById("key");
const statusEl = document.getElementById("status");
let apiKey = sessionStorage.getItem("classmesh-api-key") || "";
keyInput.value = apiKey;

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = keyInput.value.trim();
  sessionStorage.setItem("classmesh-api-key", apiKey);
  refresh();
});

async function api(path) {
  const response = await fetch(`/v1${path}`, { headers: { Authorization: `Bearer ${apiKey}` } });
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

async function refresh() {
  if (!apiKey) {
    statusEl.textContent = "enter an API key (classmesh dev prints one)";
    return;
  }
  try {
    const now = new Date();
    const until = new Date(now.getTime() + 24 * 3600 * 1000);
    const [nodes, forecast, sessions] = await Promise.all([
      api("/nodes"),
      api("/forecast?hours=6"),
      api(`/sessions?limit=200&start_from=${encodeURIComponent(new Date(now.getTime() - 3600 * 1000).toISOString())}` +
        `&start_before=${encodeURIComponent(until.toISOString())}`),
    ]);
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
