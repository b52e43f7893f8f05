// The operator's view: the topology as a graph (cytoscape.js), the connections with their
// paths, and health, kept live from the controller's event stream. It only reads: every call is
// a GET with the operator's token, so a viewer token is enough and nothing here can change the
// network.
"use strict";

const TOKEN_KEY = "meshwire-token";
const MAX_ROWS = 300; // rows the connection list draws; filters narrow the rest
const BIG = 400; // vertices above which the layout is a grid (force layout gets slow)

const mw = {
  cy: null,
  topology: null,
  endpoints: new Map(), // name -> {vertex, down}
  linksDown: new Map(), // name -> reason
  agents: new Map(), // node -> its agent's state (attached, away, lost)
  connections: new Map(), // id -> connection
  selected: null,
  lastEvent: 0,
  timings: { start: performance.now(), firstRender: null, lastUpdate: null },
  ready: false,
};
window.meshwire = mw;

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function api(path, accept) {
  const headers = { Accept: accept || "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (_) { /* not a problem document */ }
    throw new Error(`${path}: ${r.status} ${detail}`);
  }
  return r;
}
const json = async (path) => (await api(path)).json();

/** Every page of a list (`items`, `metadata.continue`). */
async function all(path) {
  const out = [];
  let cont = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await json(path + sep + "limit=1000" + (cont ? "&continue=" + encodeURIComponent(cont) : ""));
    out.push(...page.items);
    cont = page.metadata && page.metadata.continue;
  } while (cont);
  return out;
}

function showLogin(message) {
  window.dispatchEvent(new CustomEvent("meshwire:login"));
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("live").textContent = "signed out";
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
});

// ---- the graph ---------------------------------------------------------------------------

const STYLE = [
  // Labels too small to read at the current zoom are not drawn (a 1,000-node picture draws fast).
  { selector: "node", style: { label: "data(label)", "font-size": 10, "min-zoomed-font-size": 7, "text-valign": "bottom", "text-margin-y": 3, "text-wrap": "wrap", color: "#1d2733" } },
  { selector: "node.vertex", style: { width: 34, height: 34, "background-color": "#8c959f", "border-width": 2, "border-color": "#57606a" } },
  { selector: "node.kernel", style: { shape: "round-rectangle", "background-color": "#54aeff" } },
  { selector: "node.ovs", style: { shape: "round-hexagon", "background-color": "#2da44e" } },
  { selector: "node.device", style: { shape: "diamond", "background-color": "#bf8700", width: 40, height: 40 } },
  { selector: "node.endpoint", style: { width: 14, height: 14, shape: "ellipse", "background-color": "#8250df", "font-size": 8 } },
  { selector: "node.endpoint.down", style: { "background-color": "#cf222e" } },
  // A node whose agent is away keeps forwarding (amber); past its lease it is lost (red).
  { selector: "node.vertex.away", style: { "border-color": "#bf8700", "border-style": "dashed", "border-width": 4 } },
  { selector: "node.vertex.lost", style: { "border-color": "#cf222e", "border-style": "dashed", "border-width": 4 } },
  { selector: "edge", style: { width: 3, "line-color": "#8c959f", label: "data(label)", "font-size": 8, "min-zoomed-font-size": 7, "text-rotation": "autorotate", "text-background-color": "#fff", "text-background-opacity": 0.8, "curve-style": "bezier" } },
  { selector: "edge.attach", style: { width: 1, "line-style": "dotted", label: "" } },
  { selector: "edge.down", style: { "line-color": "#cf222e", "line-style": "dashed", color: "#cf222e" } },
  { selector: ".faded", style: { opacity: 0.25 } },
  { selector: "node.hl", style: { "border-color": "#0969da", "border-width": 4, opacity: 1 } },
  { selector: "edge.hl", style: { "line-color": "#0969da", width: 6, opacity: 1 } },
  { selector: "edge.hl.down", style: { "line-color": "#cf222e" } },
  { selector: "edge.attach.hl", style: { width: 2 } },
];

function vertexId(name) { return "v:" + name; }

/** The graph's elements for the topology, the endpoints and the links' state. */
function elements() {
  const t = mw.topology;
  const els = [];
  for (const n of Object.values(t.nodes || {})) {
    const agent = mw.agents.get(n.name);
    const away = agent === "away" || agent === "lost" ? ` ${agent}` : "";
    els.push({ group: "nodes", data: { id: vertexId(n.name), label: `${n.name}\n${n.forwarder}` }, classes: `vertex node ${n.forwarder}${away}` });
  }
  for (const d of Object.values(t.devices || {})) {
    els.push({ group: "nodes", data: { id: vertexId(d.name), label: `${d.name}\n${d.kind}` }, classes: "vertex device" });
  }
  const known = new Set(els.map((e) => e.data.id));
  for (const l of Object.values(t.links || {})) {
    const [s, d] = [vertexId(l.a.vertex), vertexId(l.b.vertex)];
    if (!known.has(s) || !known.has(d)) continue;
    const down = !l.up || mw.linksDown.has(l.name);
    els.push({ group: "edges", data: { id: "l:" + l.name, source: s, target: d, label: `${l.name} · ${l.mtu}` }, classes: "link" + (down ? " down" : "") });
  }
  for (const [name, e] of mw.endpoints) {
    if (!known.has(vertexId(e.vertex))) continue;
    els.push({ group: "nodes", data: { id: "e:" + name, label: name }, classes: "endpoint" + (e.down ? " down" : "") });
    els.push({ group: "edges", data: { id: "a:" + name, source: "e:" + name, target: vertexId(e.vertex) }, classes: "attach" });
  }
  return els;
}

/** Deterministic starting places (a circle by name), so the same topology lays out the same. */
function seed(els) {
  const vs = els.filter((e) => e.group === "nodes" && e.classes.startsWith("vertex")).map((e) => e.data.id).sort();
  const r = Math.max(150, vs.length * 12);
  const pos = new Map(vs.map((id, i) => [id, { x: r * Math.cos((2 * Math.PI * i) / vs.length), y: r * Math.sin((2 * Math.PI * i) / vs.length) }]));
  const eps = els.filter((e) => e.group === "nodes" && e.classes.startsWith("endpoint")).map((e) => e.data.id).sort();
  eps.forEach((id, i) => {
    const name = id.slice(2);
    const at = pos.get(vertexId(mw.endpoints.get(name).vertex)) || { x: 0, y: 0 };
    pos.set(id, { x: at.x + 30 * Math.cos(i), y: at.y + 30 * Math.sin(i) });
  });
  for (const e of els) if (e.group === "nodes") e.position = { ...(pos.get(e.data.id) || { x: 0, y: 0 }) };
  return vs.length;
}

function layoutOptions(vertices) {
  if (vertices > BIG) {
    return { name: "grid", animate: false, avoidOverlap: true, sort: (a, b) => (a.id() < b.id() ? -1 : 1) };
  }
  return { name: "cose", randomize: false, animate: false, nodeDimensionsIncludeLabels: true, numIter: 1500,
    idealEdgeLength: (e) => (e.hasClass("attach") ? 20 : 120), edgeElasticity: (e) => (e.hasClass("attach") ? 200 : 100), nodeRepulsion: () => 9000 };
}

/** Draws the topology: a new layout only when the set of vertices and endpoints changed. */
function drawTopology() {
  const els = elements();
  const ids = els.filter((e) => e.group === "nodes").map((e) => e.data.id).sort().join(",");
  if (mw.cy && mw.cy.scratch("ids") === ids) {
    mw.cy.batch(() => {
      for (const e of els) {
        const have = mw.cy.getElementById(e.data.id);
        if (have.empty()) mw.cy.add(e);
        else { have.data(e.data); have.classes(e.classes); }
      }
      const want = new Set(els.map((e) => e.data.id));
      mw.cy.elements().filter((e) => !want.has(e.id())).remove();
    });
  } else {
    const vertices = seed(els);
    if (mw.cy) mw.cy.destroy();
    const big = vertices > BIG;
    mw.cy = cytoscape({ container: $("graph"), elements: els, style: STYLE, layout: layoutOptions(vertices), wheelSensitivity: 0.3, minZoom: 0.05, maxZoom: 1.5,
      textureOnViewport: big, hideEdgesOnViewport: big });
    mw.cy.scratch("ids", ids);
    mw.cy.fit(undefined, 30);
    mw.cy.on("tap", "node.endpoint", (ev) => { $("f-service").value = ""; filterByEndpoint(ev.target.id().slice(2)); });
  }
  highlight();
}

let endpointFilter = null;
function filterByEndpoint(name) { endpointFilter = endpointFilter === name ? null : name; renderList(); }

/** The ids of the elements a connection runs over: its path's vertices and links, its endpoint. */
function pathOf(c) {
  const ids = new Set();
  for (const seg of c.path || []) {
    ids.add(vertexId(seg.name));
    if (seg.link) ids.add("l:" + seg.link);
  }
  const ep = c.network_service_endpoint_name;
  if (ep && mw.endpoints.has(ep)) { ids.add("e:" + ep); ids.add("a:" + ep); }
  return ids;
}

function highlight() {
  const cy = mw.cy;
  if (!cy) return;
  const c = mw.selected && mw.connections.get(mw.selected);
  cy.batch(() => {
    cy.elements().removeClass("hl faded");
    if (!c) return;
    const ids = pathOf(c);
    cy.elements().forEach((e) => e.addClass(ids.has(e.id()) ? "hl" : "faded"));
  });
}

// ---- connections -------------------------------------------------------------------------

const offered = new Map(); // select -> the values it offers already
function option(sel, value) {
  let have = offered.get(sel);
  if (!have) { have = new Set(); offered.set(sel, have); }
  if (have.has(value)) return;
  have.add(value);
  const o = document.createElement("option");
  o.value = o.textContent = value;
  sel.appendChild(o);
}

function mechanismText(m) {
  if (!m) return "";
  return m.type + " " + Object.entries(m).filter(([k]) => k !== "type").map(([k, v]) => `${k}=${v}`).join(" ");
}

function renderList() {
  const [svc, st, node] = [$("f-service").value, $("f-state").value, $("f-node").value];
  const rows = [];
  let matched = 0;
  for (const c of mw.connections.values()) {
    option($("f-service"), c.network_service);
    option($("f-state"), c.state);
    option($("f-node"), c.client.node);
    if ((svc && c.network_service !== svc) || (st && c.state !== st) || (node && c.client.node !== node)) continue;
    if (endpointFilter && c.network_service_endpoint_name !== endpointFilter) continue;
    matched++;
    if (rows.length < MAX_ROWS) rows.push(c);
  }
  const ol = $("connections");
  ol.replaceChildren(...rows.map((c) => {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    if (c.id === mw.selected) li.className = "selected";
    const who = document.createElement("span");
    who.textContent = `${c.client.node}/${c.client.name || c.client.pod || ""} → ${c.network_service} @ ${c.network_service_endpoint_name}`;
    const state = document.createElement("span");
    state.className = "state state-" + c.state;
    state.textContent = c.state;
    li.append(who, state);
    li.addEventListener("click", () => select(c.id === mw.selected ? null : c.id));
    return li;
  }));
  if (matched > rows.length) {
    const more = document.createElement("li");
    more.className = "more";
    more.textContent = `${matched - rows.length} more; narrow with the filters`;
    ol.appendChild(more);
  }
  $("count").textContent = `(${matched} of ${mw.connections.size})`;
  renderDetail();
  renderHealth();
}

function renderDetail() {
  const c = mw.selected && mw.connections.get(mw.selected);
  const d = $("detail");
  d.hidden = !c;
  if (!c) return;
  const rows = [["id", c.id], ["state", c.state + (c.last_error ? ` (${c.last_error})` : "")], ["client", `${c.client.node} ${c.client.name || ""} ${c.interface}`],
    ["endpoint", c.network_service_endpoint_name], ["mtu", c.mtu],
    ["addresses", [...(c.ip_context.src_ip_addrs || []), "→", ...(c.ip_context.dst_ip_addrs || [])].join(" ")]];
  for (const h of c.hops || []) rows.push([`${h.from} → ${h.to}`, `${mechanismText(h.mechanism)}${h.link ? " via " + h.link : ""}`]);
  const table = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = String(v);
  }
  d.replaceChildren(table);
}

function select(id) {
  mw.selected = id;
  renderList();
  highlight();
}

let failures = null;
function renderHealth() {
  const by = {};
  for (const c of mw.connections.values()) by[c.state] = (by[c.state] || 0) + 1;
  const parts = Object.keys(by).sort().map((s) => `${s} ${by[s]}`);
  const epDown = [...mw.endpoints.values()].filter((e) => e.down).length;
  const h = $("health");
  h.replaceChildren();
  const add = (text, bad) => { const s = document.createElement("span"); s.textContent = text + "  "; if (bad) s.className = "bad"; h.appendChild(s); };
  add(`connections: ${parts.join(", ") || "none"}`);
  add(`endpoints down: ${epDown}`, epDown > 0);
  add(`links down: ${mw.linksDown.size}`, mw.linksDown.size > 0);
  const away = [...mw.agents.values()].filter((s) => s !== "attached").length;
  if (mw.agents.size > 0) add(`node agents away: ${away} of ${mw.agents.size}`, away > 0);
  if (failures !== null) add(`data-plane failures: ${failures}`, failures > 0);
}

async function loadMetrics() {
  try {
    const text = await (await api("/metrics", "text/plain")).text();
    const line = text.split("\n").find((l) => l.startsWith("meshwire_driver_errors_total"));
    failures = line ? Number(line.split(" ").pop()) : null;
  } catch (_) { failures = null; }
  renderHealth();
}

// ---- loading and following ---------------------------------------------------------------

async function loadTopology() {
  const [t, status, eps] = await Promise.all([json("/api/v1/topology"), json("/api/v1/topology/status"), all("/api/v1/endpoints")]);
  mw.topology = t;
  mw.linksDown = new Map(Object.entries(status.linksDown || {}));
  mw.agents = new Map(Object.entries(status.agents || {}).map(([n, a]) => [n, a.state]));
  mw.endpoints = new Map(eps.map((e) => [e.metadata.name, { vertex: e.spec.location.node || e.spec.location.device, down: !!(e.status && e.status.down) }]));
}

/** The topology first (the graph is drawn while the connections load), then the connections. */
async function loadAll() {
  const t0 = performance.now();
  const conns = all("/api/v1/connections");
  await loadTopology();
  const t1 = performance.now();
  drawTopology();
  const t2 = performance.now();
  mw.timings.graphShown = t2 - mw.timings.start;
  mw.connections = new Map((await conns).map((c) => [c.id, c]));
  const t3 = performance.now();
  renderList();
  highlight();
  loadMetrics();
  const t4 = performance.now();
  mw.timings.phases = { topology: t1 - t0, graph: t2 - t1, connections: t3 - t2, list: t4 - t3 };
}

let reloadTimer = null;
function reloadTopologySoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(async () => {
    await loadTopology();
    drawTopology();
    renderList();
    window.dispatchEvent(new CustomEvent("meshwire:update", { detail: { kind: "topology", event: {} } }));
  }, 200);
}

let metricsTimer = null;
function metricsSoon() { clearTimeout(metricsTimer); metricsTimer = setTimeout(loadMetrics, 1000); }

function logEvent(kind, ev) {
  const li = document.createElement("li");
  const what = ev.id ? `${ev.id.slice(0, 8)} ${ev.state}` : ev.name ? `${ev.name} ${ev.up === false || ev.down ? "down" : "up"} ${ev.reason || ""}` : ev.key || ev.detail || "";
  li.textContent = `${new Date().toLocaleTimeString()} ${kind} ${what}`;
  const ol = $("events");
  ol.prepend(li);
  while (ol.children.length > 50) ol.lastChild.remove();
}

async function apply(kind, ev) {
  const t0 = performance.now();
  logEvent(kind, ev);
  if (kind === "connection") {
    if (ev.state === "closed") mw.connections.delete(ev.id);
    else {
      try { mw.connections.set(ev.id, await json("/api/v1/connections/" + encodeURIComponent(ev.id))); } catch (_) { mw.connections.delete(ev.id); }
    }
    renderList();
    if (ev.id === mw.selected) highlight();
    if (ev.state === "failed") metricsSoon();
  } else if (kind === "endpoint") {
    const e = mw.endpoints.get(ev.name);
    if (e) { e.down = ev.down; mw.cy.getElementById("e:" + ev.name).toggleClass("down", ev.down); }
    renderHealth();
  } else if (kind === "link") {
    if (ev.up) mw.linksDown.delete(ev.name); else mw.linksDown.set(ev.name, ev.reason);
    const l = mw.topology.links[ev.name];
    mw.cy.getElementById("l:" + ev.name).toggleClass("down", !ev.up || (l && !l.up));
    renderHealth();
  } else if (kind === "object") {
    reloadTopologySoon();
  } else if (kind === "data-plane") {
    const h = ev.happened || {};
    const state = { "node-attached": "attached", "node-detached": "away", "node-lost": "lost" }[h.kind];
    if (state) {
      mw.agents.set(h.node, state);
      const v = mw.cy.getElementById(vertexId(h.node));
      v.toggleClass("away", state === "away").toggleClass("lost", state === "lost");
      renderHealth();
    }
    metricsSoon();
  } else if (kind === "reset") {
    await loadAll();
  }
  mw.timings.lastUpdate = performance.now() - t0;
  // For whoever watches the page (tests, scripts): the picture has taken the event.
  window.dispatchEvent(new CustomEvent("meshwire:update", { detail: { kind, event: ev } }));
}

let pending = null; // events that arrived before the snapshot was drawn

/** Follows the event stream (fetch, so the token rides in a header), resuming where it stopped.
 * It is opened before the first snapshot is read, and what arrives meanwhile waits. */
async function follow(onOpen) {
  let backoff = 500;
  for (;;) {
    try {
      const since = mw.lastEvent ? "?since=" + mw.lastEvent : "";
      const r = await api("/api/v1/events" + since, "text/event-stream");
      onOpen(null);
      $("live").className = "on";
      $("live").textContent = "live";
      backoff = 500;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let kind = "message", data = "", id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
            else if (line.startsWith("id:")) id = Number(line.slice(3).trim());
          }
          if (id !== null) mw.lastEvent = id;
          if (kind === "message" && !data) continue;
          let ev = {};
          try { ev = data ? JSON.parse(data) : {}; } catch (_) { ev = { detail: data }; }
          if (pending) pending.push([kind, ev]);
          else await apply(kind, ev);
        }
      }
    } catch (e) {
      if (e instanceof Unauthorized) { onOpen(e); showLogin("the token was refused"); return; }
      onOpen(null);
    }
    $("live").className = "off";
    $("live").textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

let following = false;
async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  pending = [];
  if (!following) {
    following = true;
    const opened = new Promise((resolve) => { let once = false; follow((e) => { if (!once) { once = true; resolve(e); } }); });
    const e = await opened;
    if (e) { following = false; return; }
  }
  try {
    await loadAll();
  } catch (e) {
    if (e instanceof Unauthorized) { following = false; showLogin(sessionStorage.getItem(TOKEN_KEY) ? "the token was refused" : ""); return; }
    $("live").textContent = "error: " + e.message;
    return;
  }
  mw.timings.firstRender = performance.now() - mw.timings.start;
  const queued = pending;
  pending = null;
  for (const [kind, ev] of queued) await apply(kind, ev);
  mw.ready = true;
  window.dispatchEvent(new CustomEvent("meshwire:ready"));
}

$("f-service").addEventListener("change", renderList);
$("f-state").addEventListener("change", renderList);
$("f-node").addEventListener("change", renderList);
start();
