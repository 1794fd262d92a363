/* Live page: poses pushed over the WebSocket /ws/live, drawn as they arrive. */
"use strict";

const live = {
  view: null, marker: null, path: [], pathDirty: false, status: null, lastPose: null,
  socket: null, retry: 500, closedAt: null,
};
/* arrival log for the latency benchmark: {stamp_ns, kind, seq, t (ms since the epoch)} */
window.dashboardLog = [];

function statusBox(state, message) {
  const box = document.getElementById("status");
  box.className = "status " + state;
  box.setAttribute("data-state", state);
  box.textContent = message;
}

function showStatus(st) {
  if (!st) return;
  live.status = st;
  if (live.socket && live.socket.readyState !== WebSocket.OPEN) return;
  statusBox(st.state, st.message);
}

function showPose(p) {
  const age = p.received ? (Date.now() / 1000 - p.received) : null;
  kvTable([
    ["kind", p.kind],
    ["x, y, z", fmt(p.x) + ", " + fmt(p.y) + ", " + fmt(p.z) + " m"],
    ["heading", p.heading === null ? "–" : fmt(p.heading * 180 / Math.PI, 1, "deg")],
    ["sigma x, y", p.sigma ? fmt(p.sigma[0], 3) + ", " + fmt(p.sigma[1], 3) + " m" : "–"],
    ["sigma yaw", p.sigma ? fmt(p.sigma[5], 2, "deg") : "–"],
    ["image stamp", fmt(p.stamp, 3, "s")],
    ["received", age === null ? "–" : fmt(Math.max(0, age), 1) + " s ago"],
  ], document.getElementById("pose"));
}

function drawPath() {
  if (!live.pathDirty) return;
  live.pathDirty = false;
  const v = live.view;
  v.clear("tracks");
  v.clear("points");
  v.track("tracks", live.path.map((p) => [p.x, p.y]), { class: "path" });
  for (const p of live.path) v.dot("points", p.x, p.y, v.size * 0.12, { class: "pt-" + p.kind });
}

function onPose(p) {
  if (!live.hasPlan && !live.marker) live.view.fit([p.x - 5, p.x + 5, p.y - 5, p.y + 5]);
  if (!live.marker) live.marker = live.view.marker(p, p.kind, "current-pose");
  else live.view.updateMarker(live.marker, p, p.kind);
  live.lastPose = p;
  showPose(p);
  const path = live.path;
  let i = path.length;
  while (i > 0 && path[i - 1].stamp > p.stamp) i--;
  const point = { x: p.x, y: p.y, stamp: p.stamp, kind: p.kind };
  if (i > 0 && path[i - 1].stamp === p.stamp) path[i - 1] = point; else path.splice(i, 0, point);
  if (path.length > 500) path.splice(0, path.length - 500);
  live.pathDirty = true;
  requestAnimationFrame(drawPath);
  window.dashboardLog.push({ stamp_ns: p.stamp_ns, kind: p.kind, seq: p.seq,
                             t: performance.timeOrigin + performance.now() });
  if (window.dashboardLog.length > 5000) window.dashboardLog.splice(0, 1000);
}

function showDiagnostics(d) {
  if (!d) return;
  const v = d.values || {};
  const age = d.received ? Date.now() / 1000 - d.received : null;
  const n = (k) => (v[k] === undefined || v[k] === "" ? "–" : v[k]);
  const dropped = ["dropped_stale", "dropped_superseded", "dropped_future"]
    .reduce((s, k) => s + (parseInt(v[k] || "0", 10) || 0), 0);
  const rejected = Object.keys(v).filter((k) => k.startsWith("rejected_"))
    .reduce((s, k) => s + (parseInt(v[k] || "0", 10) || 0), 0);
  kvTable([
    ["status", ["OK", "WARN", "ERROR", "STALE"][d.level] + ": " + d.message],
    ["input rate", n("input_rate_hz") + " Hz"],
    ["inference p50 / p99", n("inference_ms_p50") + " / " + n("inference_ms_p99") + " ms"],
    ["refinement p50", n("refine_ms_p50") + " ms"],
    ["frames received / published", n("received") + " / " + n("published")],
    ["dropped frames", dropped + " (stale " + n("dropped_stale") + ", superseded " + n("dropped_superseded") + ")"],
    ["rejected frames", String(rejected)],
    ["refinements ok / failed", n("refined") + " / " + n("refine_failed")],
    ["device, model", n("device") + ", " + n("model")],
    ["diagnostics age", age === null ? "–" : fmt(Math.max(0, age), 1) + " s"],
  ], document.getElementById("diagnostics"));
}

function showImage(img) {
  if (!img) return;
  const node = document.getElementById("camera");
  node.src = "api/live/image.jpg?seq=" + img.seq;
  document.getElementById("camera-info").textContent =
    img.width + "x" + img.height + " (downscaled), stamp " + fmt(img.stamp, 3) + " s";
}

function onMessage(evt) {
  const msg = JSON.parse(evt.data);
  if (msg.type === "snapshot") {
    live.path = (msg.path || []).slice();
    live.pathDirty = true;
    drawPath();
    if (msg.pose) onPose(msg.pose);
    showDiagnostics(msg.diagnostics);
    showImage(msg.image);
  } else if (msg.type === "pose") {
    onPose(msg.pose);
  } else if (msg.type === "diagnostics") {
    showDiagnostics(msg.diagnostics);
  } else if (msg.type === "image") {
    showImage(msg.image);
  }
  if (msg.status) showStatus(msg.status);
}

function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
    location.pathname.replace(/[^/]*$/, "") + "ws/live";
  const socket = new WebSocket(url);
  live.socket = socket;
  socket.onopen = () => { live.retry = 500; live.closedAt = null; };
  socket.onmessage = onMessage;
  socket.onclose = () => {
    if (live.closedAt === null) live.closedAt = Date.now();
    const secs = ((Date.now() - live.closedAt) / 1000).toFixed(0);
    statusBox("lost", "connection to the dashboard server lost " + secs + " s ago: reconnecting " +
              "(the last pose stays on the plan)");
    setTimeout(connect, live.retry);
    live.retry = Math.min(5000, live.retry * 2);
  };
}

async function main() {
  const notes = document.getElementById("notes");
  live.view = new PlanView(document.getElementById("plan"));
  const meta = await loadPlan(live.view, null);
  live.hasPlan = Boolean(meta);
  if (!meta) {
    live.view.fit([-10, 10, -10, 10]);
    notes.appendChild(h("div", { class: "note" }, "no floor plan: poses are drawn on an empty grid " +
                        "(give the dashboard a map_server YAML)"));
  }
  connect();
  setInterval(() => { if (live.lastPose) showPose(live.lastPose); }, 1000);
}

document.addEventListener("DOMContentLoaded", main);
