/* Dataset page: what `camera-pose dataset` wrote, and what the mapping walk saw. */
"use strict";

const SPLIT_COLORS = { train: "#2f6fdf", validation: "#7048e8", test: "#e8590c", registered: "#2f6fdf" };

function card(parent, value, key, attrs = {}) {
  const c = h("div", Object.assign({ class: "card" }, attrs));
  c.appendChild(h("div", { class: "v" }, value));
  c.appendChild(h("div", { class: "k" }, key));
  parent.appendChild(c);
}

async function main() {
  const notes = document.getElementById("notes");
  let d;
  try {
    d = await api("api/dataset");
  } catch (err) {
    showError(notes, err.message);
    return;
  }
  for (const p of d.problems || []) notes.appendChild(h("div", { class: "note" }, p));
  const r = d.report || {};
  const cards = document.getElementById("cards");
  card(cards, pct(r.registration_rate, 1), "registered (" + r.registered + " of " + r.frames + " frames)",
       { id: "registration" });
  card(cards, fmt(100 * (r.alignment_rms_m || 0), 1, "cm"), "alignment RMS (" + r.control_points_used +
       " of " + r.control_points + " control points)");
  card(cards, fmt(r.reprojection_error_px, 2, "px"), "SfM reprojection error");
  card(cards, String(r.points3D), "3D points");
  const splits = r.splits || {};
  card(cards, Object.entries(splits).map(([k, v]) => v).join(" / "),
       "split sizes (" + Object.keys(splits).join(" / ") + ")", { id: "split-sizes" });
  if (d.coverage) {
    card(cards, pct(d.coverage.walkable_seen), "of the walkable floor seen", { id: "coverage-floor" });
    card(cards, pct(d.coverage.walls_seen), "of the walls seen");
  }
  const gt = r.pose_error_vs_ground_truth;
  if (gt) card(cards, fmt(100 * gt.median_position_m, 1, "cm"), "camera poses vs ground truth (median)");

  const view = new PlanView(document.getElementById("plan"));
  const meta = await loadPlan(view, notes);
  if (!meta) view.fitPoints(d.registered.xy);
  if (d.coverage) {
    view.coverage(d.coverage.grid);
    for (const g of d.coverage.gaps) {
      view.dot("points", g.x, g.y, Math.sqrt(g.area_m2 / Math.PI), { class: "gap" },
               "not seen: " + g.area_m2.toFixed(1) + " m2 around (" + g.x.toFixed(1) + ", " + g.y.toFixed(1) + ")");
    }
    document.getElementById("show-coverage").addEventListener("change", (e) => {
      view.layers.overlay.style.display = e.target.checked ? "" : "none";
    });
  } else {
    document.getElementById("coverage-legend").textContent = "coverage needs a floor plan";
  }
  const legend = document.getElementById("split-legend");
  const tracks = Object.keys(d.splits).length ? d.splits : { registered: d.registered };
  for (const [name, t] of Object.entries(tracks)) {
    view.track("tracks", t.xy, { stroke: SPLIT_COLORS[name] || "#333", "data-split": name });
    const s = h("span");
    s.appendChild(h("i", { style: "background:" + (SPLIT_COLORS[name] || "#333") }));
    s.appendChild(document.createTextNode(name + " (" + t.count + ")"));
    legend.appendChild(s);
  }
  const cps = d.control_points || [];
  cps.forEach((cp, i) => {
    view.dot("points", cp.x, cp.y, view.size * 0.3,
             { class: "cp", fill: cp.inlier ? "#ffd43b" : "#c92a2a" },
             "control point " + (i + 1) + " (" + cp.key + "): residual " +
             (100 * cp.residual_m).toFixed(1) + " cm" + (cp.inlier ? "" : " (rejected)"));
  });
  const s = h("span");
  s.appendChild(h("i", { style: "background:#ffd43b" }));
  s.appendChild(document.createTextNode("control points"));
  legend.appendChild(s);

  barChart(document.getElementById("residuals"), {
    bars: cps.map((cp, i) => ({ label: String(i + 1), value: 100 * cp.residual_m,
                             color: cp.inlier ? "#2b8a3e" : "#c92a2a",
                             title: cp.key + ": " + (100 * cp.residual_m).toFixed(2) + " cm" })),
    ylabel: "residual (cm)", xlabel: "control point (red: rejected)",
    line: d.alignment_rms_m ? 100 * d.alignment_rms_m : null,
  });
  kvTable(cps.map((cp, i) => [(i + 1) + ": " + cp.key, (100 * cp.residual_m).toFixed(1) + " cm" +
                               (cp.inlier ? "" : " rejected"), "num"]),
          document.getElementById("cp-table"));
  const rows = [["dataset", pathText(d.data)]];
  for (const [k, v] of Object.entries(r.timings_s || {})) rows.push(["time: " + k, fmt(v, 1, "s")]);
  if (gt) rows.push(["vs ground truth", fmt(100 * gt.median_position_m, 1, "cm") + ", " + fmt(gt.median_rotation_deg, 2, "deg") + " (median)"]);
  if (d.coverage) {
    rows.push(["coverage model", "rays over a " + fmt(d.coverage.hfov_deg, 0) + " deg field of view, up to " +
               fmt(d.coverage.max_range_m, 0) + " m, stopped by walls (" + d.coverage.poses_used + " poses)"]);
  }
  kvTable(rows, document.getElementById("report"));
  document.body.setAttribute("data-ready", "1");
}

document.addEventListener("DOMContentLoaded", main);
