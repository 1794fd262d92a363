/* Localize page: upload a photo or pick a dataset frame, see its pose in each mode. */
"use strict";

const loc = { view: null, info: null, busy: false, previewUrl: null };

function setBusy(on, text) {
  loc.busy = on;
  document.getElementById("pick").disabled = on;
  document.getElementById("file").disabled = on;
  if (on) {
    const box = document.getElementById("result");
    box.className = "muted";
    box.textContent = text;
  }
}

function showResult(res) {
  const view = loc.view;
  view.clear("markers");
  document.getElementById("errors").textContent = "";
  const box = document.getElementById("result");
  box.className = "";
  box.textContent = "";
  const rows = [["image", (res.name || "") + " (" + res.width + "x" + res.height + ")"]];
  if (res.ground_truth) {
    view.marker(res.ground_truth, "truth", "result-truth");
    rows.push(["ground truth", fmt(res.ground_truth.x) + ", " + fmt(res.ground_truth.y) + " m"]);
  }
  for (const [mode, p] of Object.entries(res.modes || {})) {
    if (p.error) { rows.push([mode, p.error]); continue; }
    const g = view.marker(p, mode, "result-" + mode);
    g.setAttribute("data-mode", mode);
    rows.push([mode, fmt(p.x) + ", " + fmt(p.y) + ", " + fmt(p.z) + " m, heading " +
               (p.heading === null ? "–" : fmt(p.heading * 180 / Math.PI, 1, "deg"))]);
    if (p.sigma) rows.push(["  sigma", fmt(p.sigma[0], 3) + " / " + fmt(p.sigma[1], 3) + " / " + fmt(p.sigma[2], 3) + " m, yaw " + fmt(p.sigma[5], 2, "deg")]);
    if (mode === "refine") {
      rows.push(["  refined", p.refined ? "yes, " + p.inliers + " inliers" :
                 "no (" + (p.note || "failed") + "), " + p.inliers + " inliers: the regressed pose"]);
    }
    rows.push(["  time", fmt(p.ms, 0, "ms")]);
    if (p.error_m !== undefined) rows.push(["  error", fmt(p.error_m, 3, "m") + ", " + fmt(p.error_deg, 2, "deg")]);
  }
  if (!res.refine_available && res.refine_problem) rows.push(["refine", "not available: " + res.refine_problem]);
  if (res.total_ms !== undefined) rows.push(["total", fmt(res.total_ms, 0, "ms")]);
  box.appendChild(kvTable(rows));
  box.setAttribute("data-done", "1");
}

function showFailure(err) {
  document.getElementById("result").textContent = "";
  const box = document.getElementById("errors");
  box.textContent = "";
  showError(box, err.message).setAttribute("data-status", err.status || "");
}

async function upload(file) {
  if (loc.busy || !file) return;
  setBusy(true, "localizing " + file.name + "...");
  if (loc.previewUrl) URL.revokeObjectURL(loc.previewUrl);
  loc.previewUrl = URL.createObjectURL(file);
  document.getElementById("preview").src = loc.previewUrl;
  try {
    const res = await api("api/localize?name=" + encodeURIComponent(file.name),
                          { method: "POST", body: file,
                            headers: { "content-type": file.type || "application/octet-stream" } });
    showResult(res);
  } catch (err) {
    showFailure(err);
  } finally {
    setBusy(false);
  }
}

async function pick() {
  if (loc.busy) return;
  const split = document.getElementById("split").value;
  const index = parseInt(document.getElementById("index").value, 10) || 0;
  setBusy(true, "localizing frame " + index + " of the " + split + " split...");
  document.getElementById("preview").src = "api/frames/" + split + "/" + index + ".jpg";
  try {
    showResult(await api("api/localize/frame?split=" + split + "&index=" + index, { method: "POST" }));
  } catch (err) {
    showFailure(err);
  } finally {
    setBusy(false);
  }
}

async function main() {
  const notes = document.getElementById("notes");
  loc.view = new PlanView(document.getElementById("plan"));
  try {
    loc.info = await api("api/info");
  } catch (err) {
    showError(notes, err.message);
    return;
  }
  showProblems(loc.info, notes);
  const meta = await loadPlan(loc.view, null);
  if (!meta) loc.view.fit([-10, 10, -10, 10]);
  document.getElementById("limits").textContent = "modes: " + (loc.info.modes.join(", ") || "none") +
    "; at most " + (loc.info.max_upload_bytes / 1048576).toFixed(0) + " MiB and " +
    (loc.info.max_upload_pixels / 1e6).toFixed(0) + " Mpixels; nothing is stored";
  const sel = document.getElementById("split");
  for (const s of loc.info.splits) sel.appendChild(h("option", { value: s }, s));
  if (!loc.info.splits.length) document.getElementById("pick").disabled = true;
  if (loc.info.splits.includes("test")) sel.value = "test";
  document.getElementById("file").addEventListener("change", (e) => upload(e.target.files[0]));
  document.getElementById("pick").addEventListener("click", pick);
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", main);
