/* Model page: provenance, training curve, evaluation metrics, error CDFs, trajectories and
 * covariance calibration of the checkpoint. */
"use strict";

const MODE_COLORS = { regress: "#2f6fdf", refine: "#e8590c", truth: "#2b8a3e" };

function provenanceRows(m) {
  const meta = m.meta || {};
  const model = meta.model || {}, inp = meta.input || {}, prov = meta.provenance || {};
  const rows = [
    ["checkpoint", pathText(m.checkpoint)],
    ["network", (model.kind || "?") + " / " + (model.backbone || "?")],
    ["input", inp.width ? inp.width + "x" + inp.height : "–"],
    ["pretrained", meta.pretrained === undefined ? "–" : (meta.pretrained ? "yes" : "no") +
      (meta.weights_source ? " (" + meta.weights_source + ")" : "")],
    ["map frame", meta.map_frame],
    ["created", meta.created],
    ["package version", meta.package_version],
    ["dataset", pathText(prov.dataset)],
    ["dataset registration", prov.dataset_registration_rate !== undefined ? pct(prov.dataset_registration_rate, 1) : "–"],
    ["dataset alignment RMS", prov.dataset_alignment_rms_m !== undefined ? fmt(100 * prov.dataset_alignment_rms_m, 1, "cm") : "–"],
    ["training frames", prov.splits ? prov.splits.train + " train, " + prov.splits.validation + " validation" : "–"],
    ["best epoch / epochs run", prov.best_epoch !== undefined ? prov.best_epoch + " / " + prov.epochs_run : "–"],
    ["training time", prov.train_seconds !== undefined ? fmt(prov.train_seconds, 0, "s") + " on " + prov.device : "–"],
    ["refinement modes", (m.modes || []).join(", ") || "–"],
  ];
  const cfg = prov.train_config || {};
  for (const k of ["model", "backbone", "epochs", "batch_size", "lr", "loss", "input_height", "input_width", "augment"]) {
    if (cfg[k] !== undefined) rows.push(["config: " + k, typeof cfg[k] === "object" ? JSON.stringify(cfg[k]) : cfg[k]]);
  }
  const val = (meta.metrics || {}).validation;
  if (val) rows.push(["validation median", fmt(val.median_position_m, 2, "m") + ", " + fmt(val.median_rotation_deg, 1, "deg")]);
  const cal = meta.calibration;
  if (cal) {
    rows.push(["covariance calibration", cal.method + ", " + cal.samples + " samples, k_pos " + fmt(cal.k_pos, 2) +
               ", k_rot " + fmt(cal.k_rot, 2) + (cal.s_pos !== undefined ? ", s_pos " + fmt(cal.s_pos, 2) +
               ", s_rot " + fmt(cal.s_rot, 2) : "")]);
  }
  return rows;
}

function metricRows(mode, x) {
  const within = Object.keys(x).filter((k) => k.startsWith("within_"));
  const rows = [
    [mode + ": median", fmt(x.median_position_m, 3, "m") + ", " + fmt(x.median_rotation_deg, 2, "deg")],
    [mode + ": mean", fmt(x.mean_position_m, 3, "m") + ", " + fmt(x.mean_rotation_deg, 2, "deg")],
  ];
  for (const k of within) rows.push([mode + ": " + k.replace("within_", "within "), pct(x[k])]);
  if (x.baseline_mean_pose) {
    const f = x.improvement_over_baseline;
    rows.push([mode + ": mean-pose baseline", fmt(x.baseline_mean_pose.median_position_m, 2, "m") +
               (f >= 1 ? " (the model is " + fmt(f, 1) + "x better)" :
                f > 0 ? " (the model is " + fmt(1 / f, 1) + "x worse)" : "")]);
  }
  if (x.coverage_68_position !== undefined) {
    rows.push([mode + ": inside 68% / 95% (position)", pct(x.coverage_68_position) + " / " + pct(x.coverage_95_position)]);
    rows.push([mode + ": outside 99%", pct(x.outside_99_any)]);
  }
  if (x.refined_share !== undefined) rows.push([mode + ": refined", pct(x.refined_share) + ", median " + fmt(x.median_inliers, 0) + " inliers"]);
  if (x.ms_per_frame !== undefined) rows.push([mode + ": time per frame", fmt(x.ms_per_frame, 0, "ms")]);
  return rows;
}

function evaluationPanel(parent, ev, planMeta) {
  const panel = h("section", { class: "panel", "data-split": ev.split });
  parent.appendChild(panel);
  panel.appendChild(h("h2", {}, "Evaluation: " + ev.split + " split"));
  const where = h("div", { class: "muted" });
  where.appendChild(pathText(ev.path));
  if (ev.checkpoint) {
    where.appendChild(document.createTextNode(", checkpoint "));
    where.appendChild(pathText(ev.checkpoint));
  }
  panel.appendChild(where);
  if (ev.same_checkpoint === false) panel.appendChild(h("div", { class: "note" }, "this evaluation was made with another checkpoint (" + ev.checkpoint + ")"));
  if (ev.problem) panel.appendChild(h("div", { class: "note" }, ev.problem));
  const m = ev.metrics || {};
  let rows = metricRows("regress", m);
  if (m.modes && m.modes.refine) rows = rows.concat(metricRows("refine", m.modes.refine));
  panel.appendChild(kvTable(rows));
  const modes = ev.modes || {};
  const charts = h("div", { class: "charts" });
  panel.appendChild(charts);
  const box = (title) => {
    const b = h("div");
    b.appendChild(h("h2", {}, title));
    charts.appendChild(b);
    return b;
  };
  const names = Object.keys(modes);
  lineChart(box("Position error CDF"), {
    series: names.map((k) => ({ name: k, color: MODE_COLORS[k], step: true, points: cdfPoints(modes[k].position_errors_m) })),
    xlabel: "position error (m, log)", ylabel: "share of frames", xlog: true, ymin: 0, ymax: 1 });
  lineChart(box("Rotation error CDF"), {
    series: names.map((k) => ({ name: k, color: MODE_COLORS[k], step: true, points: cdfPoints(modes[k].rotation_errors_deg) })),
    xlabel: "rotation error (deg, log)", ylabel: "share of frames", xlog: true, ymin: 0, ymax: 1 });
  const calSeries = [];
  for (const k of names) {
    const c = modes[k].calibration;
    if (!c) continue;
    calSeries.push({ name: k + " position", color: MODE_COLORS[k], points: c.levels.map((lv, i) => [lv, c.position[i]]) });
    calSeries.push({ name: k + " rotation", color: MODE_COLORS[k], dash: "5 3", points: c.levels.map((lv, i) => [lv, c.rotation[i]]) });
  }
  lineChart(box("Covariance calibration"), {
    series: calSeries, reference: [[0, 0], [1, 1]], xmin: 0, xmax: 1, ymin: 0, ymax: 1,
    xlabel: "nominal share inside the ellipsoid", ylabel: "observed share" });
  const tb = box("Trajectory");
  const view = new PlanView(tb, { small: true });
  if (planMeta) view.setPlan(planMeta); else view.fitPoints(ev.ground_truth_xy || []);
  if (ev.ground_truth_xy) view.track("tracks", ev.ground_truth_xy, { stroke: MODE_COLORS.truth, "data-mode": "truth" });
  for (const k of names) {
    view.track("tracks", modes[k].xy, { stroke: MODE_COLORS[k], "stroke-dasharray": "3 2", "data-mode": k });
    for (const p of modes[k].xy) view.dot("points", p[0], p[1], view.size * 0.1, { fill: MODE_COLORS[k] });
  }
  const lg = h("div", { class: "legend" });
  for (const [k, c] of Object.entries({ truth: MODE_COLORS.truth, ...Object.fromEntries(names.map((n) => [n, MODE_COLORS[n]])) })) {
    const s = h("span");
    s.appendChild(h("i", { style: "background:" + c }));
    s.appendChild(document.createTextNode(k === "truth" ? "ground truth" : k));
    lg.appendChild(s);
  }
  tb.appendChild(lg);
}

async function main() {
  const notes = document.getElementById("notes");
  let m;
  try {
    m = await api("api/model");
  } catch (err) {
    showError(notes, err.message);
    return;
  }
  for (const p of m.problems || []) notes.appendChild(h("div", { class: "note" }, p));
  kvTable(provenanceRows(m), document.getElementById("provenance"));
  const curve = m.training_curve;
  const cbox = document.getElementById("curve");
  if (curve && curve.length) {
    lineChart(cbox, { series: [
      { name: "training loss", points: curve.map((r) => [r.epoch, r.train_loss]) },
    ], xlabel: "epoch", ylabel: "loss" });
    lineChart(cbox, { series: [
      { name: "validation median position (m)", color: "#e8590c", points: curve.map((r) => [r.epoch, r.val_median_position_m]) },
      { name: "validation median rotation (deg / 10)", color: "#7048e8", points: curve.map((r) => [r.epoch, r.val_median_rotation_deg / 10]) },
    ], xlabel: "epoch", ylabel: "validation error" });
  } else {
    cbox.appendChild(h("div", { class: "muted" }, "no training curve (metrics.csv beside the checkpoint)"));
  }
  let planMeta = null;
  try { planMeta = await api("api/floorplan"); } catch (err) { planMeta = null; }
  const evs = document.getElementById("evaluations");
  for (const ev of m.evaluations || []) evaluationPanel(evs, ev, planMeta);
  document.body.setAttribute("data-ready", "1");
}

document.addEventListener("DOMContentLoaded", main);
