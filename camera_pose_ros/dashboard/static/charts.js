/* camera_pose_ros dashboard: small SVG charts drawn from JSON (line/step series, bars).
 *
 * lineChart(container, spec): spec = {series: [{name, points: [[x, y], ...], color, step,
 * dash}], xlabel, ylabel, xlog, xmin, xmax, ymin, ymax, reference: [[x, y], ...]}.
 * The mouse wheel zooms the x axis around the cursor, dragging pans it, a double click
 * resets; hovering shows the nearest point of each series.
 * barChart(container, spec): spec = {bars: [{label, value, color, title}], ylabel, line}.
 */
"use strict";

const PALETTE = ["#2f6fdf", "#e8590c", "#2b8a3e", "#7048e8", "#c2255c", "#1098ad", "#868e96"];

function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(+v.toPrecision(12));
  return out;
}

function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * Math.pow(10, e);
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  return out;
}

function tickLabel(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1000 || a < 0.01) return v.toExponential(0);
  return String(+v.toPrecision(3));
}

function lineChart(container, spec) {
  const W = 560, H = 260, m = { l: 52, r: 12, t: 10, b: 40 };
  const svg = el("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, "data-role": "chart" });
  container.appendChild(svg);
  const series = spec.series.filter((s) => s.points && s.points.length);
  const all = series.flatMap((s) => s.points).concat(spec.reference || []);
  const xs = all.map((p) => p[0]).filter((v) => Number.isFinite(v) && (!spec.xlog || v > 0));
  const ys = all.map((p) => p[1]).filter(Number.isFinite);
  if (!xs.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg).textContent = "no data";
    return svg;
  }
  const home = [spec.xmin !== undefined ? spec.xmin : Math.min(...xs),
                spec.xmax !== undefined ? spec.xmax : Math.max(...xs)];
  if (home[0] === home[1]) { home[0] -= spec.xlog ? home[0] / 2 : 0.5; home[1] += spec.xlog ? home[1] : 0.5; }
  const yr = [spec.ymin !== undefined ? spec.ymin : Math.min(0, ...ys),
              spec.ymax !== undefined ? spec.ymax : Math.max(...ys)];
  if (yr[0] === yr[1]) yr[1] = yr[0] + 1;
  let xr = home.slice();
  const fx = (v) => spec.xlog ? Math.log10(v) : v;
  const X = (v) => m.l + (fx(v) - fx(xr[0])) / (fx(xr[1]) - fx(xr[0])) * (W - m.l - m.r);
  const Y = (v) => H - m.b - (v - yr[0]) / (yr[1] - yr[0]) * (H - m.t - m.b);
  const clip = "clip" + Math.random().toString(36).slice(2);
  const defs = el("defs", {}, svg);
  el("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b }, el("clipPath", { id: clip }, defs));
  const grid = el("g", { class: "grid" }, svg);
  const axes = el("g", { class: "axis" }, svg);
  const plot = el("g", { "clip-path": "url(#" + clip + ")" }, svg);
  const legend = el("g", {}, svg);
  el("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle" }, svg).textContent = spec.xlabel || "";
  el("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
               transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")" }, svg).textContent = spec.ylabel || "";

  function draw() {
    grid.textContent = ""; axes.textContent = ""; plot.textContent = ""; legend.textContent = "";
    const xt = spec.xlog ? logTicks(xr[0], xr[1]) : niceTicks(xr[0], xr[1]);
    for (const v of xt) {
      el("line", { x1: X(v), x2: X(v), y1: m.t, y2: H - m.b }, grid);
      el("text", { x: X(v), y: H - m.b + 14, "text-anchor": "middle" }, axes).textContent = tickLabel(v);
    }
    for (const v of niceTicks(yr[0], yr[1])) {
      el("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }, grid);
      el("text", { x: m.l - 4, y: Y(v) + 4, "text-anchor": "end" }, axes).textContent = tickLabel(v);
    }
    el("path", { d: "M" + m.l + " " + m.t + " V" + (H - m.b) + " H" + (W - m.r) }, axes).setAttribute("fill", "none");
    if (spec.reference) {
      el("path", { class: "series", d: pathOf(spec.reference, false), stroke: "#98a2b3",
                   "stroke-dasharray": "4 3" }, plot);
    }
    series.forEach((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      el("path", Object.assign({ class: "series", d: pathOf(s.points, s.step), stroke: color,
                                 "data-name": s.name }, s.dash ? { "stroke-dasharray": s.dash } : {}), plot);
      const ly = m.t + 12 + 14 * i;
      el("rect", { x: m.l + 8, y: ly - 8, width: 10, height: 3, fill: color }, legend);
      el("text", { x: m.l + 22, y: ly - 3 }, legend).textContent = s.name;
    });
  }

  function pathOf(points, step) {
    let d = "", prev = null;
    for (const p of points) {
      if (spec.xlog && !(p[0] > 0)) continue;
      const px = X(p[0]).toFixed(1), py = Y(p[1]).toFixed(1);
      if (prev && step) d += "H" + px;
      d += (prev ? "L" : "M") + px + " " + py;
      prev = p;
    }
    return d;
  }

  const toData = (evt) => {
    const r = svg.getBoundingClientRect();
    const px = (evt.clientX - r.left) / r.width * W;
    const t = (px - m.l) / (W - m.l - m.r);
    const v = fx(xr[0]) + t * (fx(xr[1]) - fx(xr[0]));
    return spec.xlog ? Math.pow(10, v) : v;
  };
  svg.addEventListener("wheel", (evt) => {
    evt.preventDefault();
    const c = fx(toData(evt)), f = Math.exp(Math.sign(evt.deltaY) * 0.2);
    const lo = c - (c - fx(xr[0])) * f, hi = c + (fx(xr[1]) - c) * f;
    xr = spec.xlog ? [Math.pow(10, lo), Math.pow(10, hi)] : [lo, hi];
    draw();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (evt) => { drag = { x0: fx(toData(evt)), xr: xr.slice() }; svg.setPointerCapture(evt.pointerId); });
  svg.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("pointermove", (evt) => {
    if (drag) {
      const span = [fx(drag.xr[0]), fx(drag.xr[1])];
      const r = svg.getBoundingClientRect();
      const px = (evt.clientX - r.left) / r.width * W;
      const cur = span[0] + (px - m.l) / (W - m.l - m.r) * (span[1] - span[0]);
      const d = drag.x0 - cur;
      xr = spec.xlog ? [Math.pow(10, span[0] + d), Math.pow(10, span[1] + d)] : [span[0] + d, span[1] + d];
      draw();
      return;
    }
    const x = toData(evt);
    const parts = series.map((s) => {
      let best = null;
      for (const p of s.points) if (!best || Math.abs(fx(p[0]) - fx(x)) < Math.abs(fx(best[0]) - fx(x))) best = p;
      return best ? s.name + ": " + tickLabel(best[0]) + ", " + tickLabel(best[1]) : "";
    });
    tip.show(parts.filter(Boolean).join("\n"), evt.clientX, evt.clientY);
  });
  svg.addEventListener("pointerleave", () => tip.hide());
  svg.addEventListener("dblclick", () => { xr = home.slice(); draw(); });
  draw();
  return svg;
}

function barChart(container, spec) {
  const W = 560, H = 240, m = { l: 52, r: 12, t: 10, b: 46 };
  const svg = el("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, "data-role": "chart" });
  container.appendChild(svg);
  const bars = spec.bars || [];
  const top = Math.max(spec.line || 0, ...bars.map((b) => b.value).filter(Number.isFinite), 1e-9) * 1.1;
  const Y = (v) => H - m.b - v / top * (H - m.t - m.b);
  for (const v of niceTicks(0, top)) {
    el("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), stroke: "#eef0f3" }, svg);
    el("text", { x: m.l - 4, y: Y(v) + 4, "text-anchor": "end" }, svg).textContent = tickLabel(v);
  }
  const bw = (W - m.l - m.r) / Math.max(1, bars.length);
  bars.forEach((b, i) => {
    const x = m.l + i * bw + bw * 0.15;
    const r = el("rect", { x, y: Y(b.value), width: bw * 0.7, height: Math.max(0, H - m.b - Y(b.value)),
                           fill: b.color || PALETTE[0], class: "bar", "data-value": b.value }, svg);
    if (b.title) el("title", {}, r).textContent = b.title;
    el("text", { x: x + bw * 0.35, y: H - m.b + 14, "text-anchor": "middle" }, svg).textContent = b.label;
  });
  if (spec.line) {
    el("line", { x1: m.l, x2: W - m.r, y1: Y(spec.line), y2: Y(spec.line), stroke: "#98a2b3",
                 "stroke-dasharray": "4 3" }, svg);
  }
  el("path", { d: "M" + m.l + " " + m.t + " V" + (H - m.b) + " H" + (W - m.r), stroke: "#98a2b3", fill: "none" }, svg);
  el("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
               transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")" }, svg).textContent = spec.ylabel || "";
  el("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle" }, svg).textContent = spec.xlabel || "";
  return svg;
}

/** Empirical CDF points [[value, share], ...] of sorted values. */
function cdfPoints(sorted) {
  const n = sorted.length;
  return sorted.map((v, i) => [v, (i + 1) / n]);
}
