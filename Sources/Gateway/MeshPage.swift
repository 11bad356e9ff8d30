/// `GET /ui`: the live mesh map and table, one self-contained page (no external assets). It polls
/// `/aiproxy/mesh/topology` every two seconds and draws nodes on a circle (colour = status, size =
/// load), edges labelled with this node's measured RTT, and a table of models and prices.
enum MeshPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aimesh — mesh</title>
<style>
  :root { --bg:#0f172a; --panel:#111827; --text:#e5e7eb; --muted:#94a3b8; --ok:#22c55e; --warn:#f59e0b; --bad:#ef4444; --self:#38bdf8; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif; background:var(--bg); color:var(--text); }
  header { display:flex; align-items:baseline; gap:16px; padding:14px 20px; border-bottom:1px solid #1f2937; }
  header h1 { margin:0; font-size:18px; }
  header .meta { color:var(--muted); }
  main { display:grid; grid-template-columns: minmax(420px, 1fr) minmax(420px, 1fr); gap:16px; padding:16px 20px; }
  section { background:var(--panel); border:1px solid #1f2937; border-radius:10px; padding:12px; }
  h2 { margin:0 0 8px; font-size:14px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.04em; }
  svg { width:100%; height:520px; }
  .edge { stroke:#334155; stroke-width:2; }
  .edge.suspect { stroke:var(--warn); stroke-dasharray:6 4; }
  .edgelabel { fill:var(--muted); font-size:11px; }
  .node circle { stroke:#0b1220; stroke-width:3; }
  .node text { fill:var(--text); font-size:13px; font-weight:600; text-anchor:middle; }
  .node .sub { fill:var(--muted); font-size:11px; font-weight:400; }
  table { width:100%; border-collapse:collapse; }
  th, td { text-align:left; padding:6px 8px; border-bottom:1px solid #1f2937; vertical-align:top; }
  th { color:var(--muted); font-weight:600; font-size:12px; }
  .pill { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; }
  .healthy { background:#14532d; color:#bbf7d0; } .suspect { background:#713f12; color:#fde68a; }
  .unreachable, .left, .unknown { background:#7f1d1d; color:#fecaca; }
  .model { white-space:nowrap; } .muted { color:var(--muted); }
  #error { color:var(--bad); padding:0 20px; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header><h1>aimesh</h1><span class="meta" id="meta">loading…</span></header>
<div id="error"></div>
<main>
  <section><h2>Mesh map</h2><svg id="map" viewBox="0 0 600 520" role="img" aria-label="mesh map"></svg></section>
  <section><h2>Nodes</h2><table id="nodes"><thead><tr><th>Node</th><th>Status</th><th>Region / type</th><th>Load</th><th>Models (in / out $ per 1M)</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const svgNS = "http://www.w3.org/2000/svg";
const colours = { healthy: "#22c55e", suspect: "#f59e0b", unreachable: "#ef4444", left: "#64748b", unknown: "#64748b" };
function el(name, attrs, text) {
  const e = document.createElementNS(svgNS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c])); }
function money(v) { return v === 0 ? "0" : (Math.round(v * 10000) / 10000).toString(); }
function headers() { const k = localStorage.getItem("aimesh-key"); return k ? { "Authorization": "Bearer " + k } : {}; }
function draw(t) {
  const svg = document.getElementById("map");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const nodes = t.nodes || [], n = nodes.length, cx = 300, cy = 260, r = n > 1 ? 190 : 0;
  const pos = {};
  nodes.forEach((node, i) => {
    const a = -Math.PI / 2 + 2 * Math.PI * i / Math.max(1, n);
    pos[node.name] = { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
  });
  for (const e of (t.edges || [])) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    svg.appendChild(el("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: "edge " + e.status }));
    if (e.rtt_ms !== null && e.rtt_ms !== undefined)
      svg.appendChild(el("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 6, class: "edgelabel", "text-anchor": "middle" }, e.rtt_ms.toFixed(2) + " ms"));
  }
  for (const node of nodes) {
    const p = pos[node.name], g = el("g", { class: "node", "data-node": node.name, "data-status": node.status });
    const size = 26 + 18 * Math.min(1, node.load || 0);
    g.appendChild(el("circle", { cx: p.x, cy: p.y, r: size, fill: node.self ? "#38bdf8" : (colours[node.status] || "#64748b") }));
    g.appendChild(el("text", { x: p.x, y: p.y + size + 16 }, node.name));
    const models = (node.models || []).map(m => m.name);
    g.appendChild(el("text", { x: p.x, y: p.y + size + 31, class: "sub" }, models.length ? models.slice(0, 3).join(", ") + (models.length > 3 ? "…" : "") : "no models"));
    svg.appendChild(g);
  }
  const body = document.querySelector("#nodes tbody");
  body.innerHTML = nodes.map(node => {
    const models = (node.models || []).map(m => `<div class="model">${esc(m.name)} <span class="muted">${esc(m.kind)} · ${money(m.input_cost_per_1m)} / ${money(m.output_cost_per_1m)}</span></div>`).join("") || '<span class="muted">–</span>';
    const gpus = (node.gpus || []).map(g => esc(g.name)).join(", ");
    return `<tr data-node="${esc(node.name)}"><td><b>${esc(node.name)}</b>${node.self ? ' <span class="muted">(this node)</span>' : ""}<div class="muted">${esc(node.api || "")}</div></td>
      <td><span class="pill ${esc(node.status)}">${esc(node.status)}</span></td>
      <td>${esc(node.region || "–")}<div class="muted">${esc(node.type || "")}${gpus ? " · " + gpus : ""}</div></td>
      <td>${Math.round((node.load || 0) * 100)}%</td><td>${models}</td></tr>`;
  }).join("");
  document.getElementById("meta").textContent = `${n} node${n === 1 ? "" : "s"} as seen by ${t.node} · updated ${new Date().toLocaleTimeString()}`;
}
async function refresh() {
  try {
    const response = await fetch("/aiproxy/mesh/topology", { headers: headers() });
    if (response.status === 401) {
      const key = prompt("API key for this node");
      if (key) localStorage.setItem("aimesh-key", key);
      return;
    }
    const t = await response.json();
    if (!response.ok) throw new Error((t.error && t.error.message) || response.statusText);
    document.getElementById("error").textContent = "";
    draw(t);
  } catch (e) {
    document.getElementById("error").textContent = "cannot read the topology: " + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""#
}
