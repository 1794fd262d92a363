/* camera_pose_ros dashboard: shared helpers and the floor-plan view (plain SVG).
 *
 * Map coordinates are metres with y up (REP 103); SVG's y goes down, so every map point is
 * drawn at (x, -y) and every map angle at -angle. The view zooms with the mouse wheel, pans
 * by dragging and resets on a double click.
 */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function h(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

/** JSON from the dashboard's API; a failure throws an Error carrying the server's message. */
async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  } catch (err) {
    throw new Error("the dashboard server cannot be reached (" + err.message + ")");
  }
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : resp.status + " " + resp.statusText;
    const e = new Error(msg);
    e.status = resp.status;
    throw e;
  }
  return body;
}

function fmt(v, digits = 2, unit = "") {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  return v.toFixed(digits) + (unit ? " " + unit : "");
}

function pct(v, digits = 0) {
  return v === null || v === undefined ? "–" : (100 * v).toFixed(digits) + "%";
}

function kvTable(rows, table = null) {
  table = table || h("table", { class: "kv" });
  table.textContent = "";
  for (const [k, v, cls] of rows) {
    const tr = h("tr");
    tr.appendChild(h("th", {}, k));
    if (v instanceof Node) {
      const td = h("td", cls ? { class: cls } : {});
      td.appendChild(v);
      tr.appendChild(td);
    } else {
      tr.appendChild(h("td", cls ? { class: cls } : {}, v === undefined || v === null ? "–" : String(v)));
    }
    table.appendChild(tr);
  }
  return table;
}

/** A file path shown by its last two parts; the whole path in its tooltip. */
function pathText(p) {
  if (!p) return "–";
  const parts = String(p).split("/").filter(Boolean);
  const span = h("span", { title: String(p), class: "path" },
                 parts.length > 2 ? "…/" + parts.slice(-2).join("/") : String(p));
  return span;
}

function showError(container, message) {
  const box = h("div", { class: "error" }, message);
  container.appendChild(box);
  return box;
}

function markNav() {
  const here = location.pathname.replace(/\/+$/, "") || "/";
  for (const a of document.querySelectorAll("header nav a")) {
    const target = new URL(a.href).pathname.replace(/\/+$/, "") || "/";
    if (target === here || (here.endsWith(target) && target !== "/")) a.classList.add("current");
  }
}

function showProblems(info, container) {
  for (const p of (info && info.problems) || []) container.appendChild(h("div", { class: "note" }, p));
}

/** Tooltip shared by the plan and the charts. */
const tip = (() => {
  let node = null;
  return {
    show(text, x, y) {
      if (!node) { node = h("div", { class: "tip" }); document.body.appendChild(node); }
      node.textContent = text;
      node.style.left = x + 12 + "px";
      node.style.top = y + 12 + "px";
      node.style.display = "block";
    },
    hide() { if (node) node.style.display = "none"; },
  };
})();

/** Zoom (wheel), pan (drag) and reset (double click) of an SVG's viewBox. */
function zoomable(svg, onChange = null) {
  let home = null, box = null, drag = null;
  const apply = () => {
    svg.setAttribute("viewBox", box.join(" "));
    if (onChange) onChange(box);
  };
  const api_ = {
    setHome(b) { home = b.slice(); box = b.slice(); apply(); },
    get box() { return box; },
    reset() { if (home) { box = home.slice(); apply(); } },
  };
  const toUser = (evt) => {
    const r = svg.getBoundingClientRect();
    const s = Math.max(box[2] / r.width, box[3] / r.height);
    const ox = box[0] + (box[2] - s * r.width) / 2, oy = box[1] + (box[3] - s * r.height) / 2;
    return [ox + (evt.clientX - r.left) * s, oy + (evt.clientY - r.top) * s, s];
  };
  svg.addEventListener("wheel", (evt) => {
    if (!box) return;
    evt.preventDefault();
    const [ux, uy] = toUser(evt);
    const f = Math.exp(Math.sign(evt.deltaY) * 0.15);
    box = [ux - (ux - box[0]) * f, uy - (uy - box[1]) * f, box[2] * f, box[3] * f];
    apply();
  }, { passive: false });
  svg.addEventListener("pointerdown", (evt) => {
    if (!box) return;
    drag = { x: evt.clientX, y: evt.clientY, box: box.slice(), s: toUser(evt)[2] };
    svg.setPointerCapture(evt.pointerId);
  });
  svg.addEventListener("pointermove", (evt) => {
    if (!drag) return;
    box = [drag.box[0] - (evt.clientX - drag.x) * drag.s, drag.box[1] - (evt.clientY - drag.y) * drag.s,
           drag.box[2], drag.box[3]];
    apply();
  });
  const end = () => { drag = null; };
  svg.addEventListener("pointerup", end);
  svg.addEventListener("pointercancel", end);
  svg.addEventListener("dblclick", () => api_.reset());
  return api_;
}

/** The floor plan with layers for overlays, tracks and pose markers. */
class PlanView {
  constructor(container, { small = false } = {}) {
    this.svg = el("svg", { class: "plan" + (small ? " small" : ""), "data-role": "plan" });
    container.appendChild(this.svg);
    this.layers = {};
    for (const name of ["map", "overlay", "tracks", "points", "markers"]) {
      this.layers[name] = el("g", { class: "layer-" + name }, this.svg);
    }
    this.zoom = zoomable(this.svg);
    this.bounds = null;
    this.size = 0.4;
  }

  /** Show the plan picture (meta from /api/floorplan) and zoom to it. */
  setPlan(meta) {
    const [xmin, xmax, ymin, ymax] = meta.extent;
    el("image", { class: "map", href: "api/floorplan.png", x: xmin, y: -ymax, width: xmax - xmin,
                  height: ymax - ymin, preserveAspectRatio: "none" }, this.layers.map);
    this.fit([xmin, xmax, ymin, ymax]);
  }

  /** Zoom to map bounds [xmin, xmax, ymin, ymax] (with a margin). */
  fit(b) {
    const mx = 0.03 * (b[1] - b[0]) + 0.2, my = 0.03 * (b[3] - b[2]) + 0.2;
    this.bounds = [b[0] - mx, b[1] + mx, b[2] - my, b[3] + my];
    this.size = Math.max(0.15, 0.03 * Math.max(b[1] - b[0], b[3] - b[2]));
    this.zoom.setHome([this.bounds[0], -this.bounds[3], this.bounds[1] - this.bounds[0],
                       this.bounds[3] - this.bounds[2]]);
  }

  /** Fit to points [[x, y], ...] when there is no plan. */
  fitPoints(points) {
    const pts = points.filter((p) => p);
    if (!pts.length) { this.fit([-5, 5, -5, 5]); return; }
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    this.fit([Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)]);
  }

  clear(layer) { this.layers[layer].textContent = ""; }

  /** A polyline through [[x, y] | null, ...] (null breaks the line). */
  track(layer, points, attrs = {}) {
    let d = "", pen = false;
    for (const p of points) {
      if (!p) { pen = false; continue; }
      d += (pen ? "L" : "M") + p[0].toFixed(3) + " " + (-p[1]).toFixed(3);
      pen = true;
    }
    return el("path", Object.assign({ d, class: "track" }, attrs), this.layers[layer]);
  }

  dot(layer, x, y, r, attrs = {}, title = null) {
    const c = el("circle", Object.assign({ cx: x, cy: -y, r }, attrs), this.layers[layer]);
    if (title) el("title", {}, c).textContent = title;
    return c;
  }

  /** A pose marker: arrow along the heading, 1- and 2-sigma covariance ellipses. */
  marker(pose, kind, id = null) {
    const g = el("g", { class: "marker " + kind }, this.layers.markers);
    if (id) g.setAttribute("id", id);
    this.updateMarker(g, pose, kind);
    return g;
  }

  updateMarker(g, pose, kind) {
    g.setAttribute("class", "marker " + kind);
    g.setAttribute("data-x", pose.x);
    g.setAttribute("data-y", pose.y);
    g.setAttribute("data-kind", kind);
    if (pose.stamp_ns !== undefined) g.setAttribute("data-stamp", pose.stamp_ns);
    g.setAttribute("transform", "translate(" + pose.x + " " + -pose.y + ")");
    g.textContent = "";
    const e = pose.ellipse;
    if (e && Number.isFinite(e.a) && Number.isFinite(e.b)) {
      const rot = "rotate(" + (-e.angle * 180 / Math.PI) + ")";
      el("ellipse", { class: "s1", rx: Math.max(e.a, 1e-3), ry: Math.max(e.b, 1e-3), transform: rot }, g);
      el("ellipse", { class: "s2", rx: Math.max(2 * e.a, 2e-3), ry: Math.max(2 * e.b, 2e-3), transform: rot }, g);
    }
    const s = this.size;
    const heading = pose.heading === null || pose.heading === undefined ? null : pose.heading;
    if (heading === null) {
      el("circle", { class: "arrow", r: s * 0.35 }, g);
    } else {
      const a = el("path", { class: "arrow", d: "M" + s + " 0 L" + (-0.6 * s) + " " + 0.45 * s + " L" +
                             (-0.3 * s) + " 0 L" + (-0.6 * s) + " " + (-0.45 * s) + " Z" }, g);
      a.setAttribute("transform", "rotate(" + (-heading * 180 / Math.PI) + ")");
    }
    const title = el("title", {}, g);
    title.textContent = kind + ": x " + fmt(pose.x) + " m, y " + fmt(pose.y) + " m" +
      (pose.sigma ? ", sigma " + fmt(pose.sigma[0]) + "/" + fmt(pose.sigma[1]) + " m" : "");
  }

  /** Coverage overlay from /api/dataset's coverage.grid (codes, row 0 at origin y). */
  coverage(grid) {
    const codes = Uint8Array.from(atob(grid.codes), (ch) => ch.charCodeAt(0));
    const canvas = document.createElement("canvas");
    canvas.width = grid.width;
    canvas.height = grid.height;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(grid.width, grid.height);
    const colors = { 1: [201, 42, 42, 90], 2: [43, 138, 62, 80], 3: [43, 138, 62, 230],
                     4: [201, 42, 42, 230] };
    for (let r = 0; r < grid.height; r++) {
      for (let c = 0; c < grid.width; c++) {
        const col = colors[codes[r * grid.width + c]];
        if (!col) continue;
        const i = 4 * ((grid.height - 1 - r) * grid.width + c);
        img.data[i] = col[0]; img.data[i + 1] = col[1]; img.data[i + 2] = col[2]; img.data[i + 3] = col[3];
      }
    }
    ctx.putImageData(img, 0, 0);
    this.clear("overlay");
    el("image", { class: "map", href: canvas.toDataURL("image/png"), x: grid.origin[0],
                  y: -(grid.origin[1] + grid.height * grid.cell), width: grid.width * grid.cell,
                  height: grid.height * grid.cell, preserveAspectRatio: "none" }, this.layers.overlay);
  }
}

/** Load the plan into a PlanView; returns the plan meta or null (with a note shown). */
async function loadPlan(view, noteBox) {
  try {
    const meta = await api("api/floorplan");
    view.setPlan(meta);
    return meta;
  } catch (err) {
    if (noteBox) noteBox.appendChild(h("div", { class: "note" }, err.message));
    return null;
  }
}

document.addEventListener("DOMContentLoaded", markNav);
