"""Trajectory and coverage figures over the floor plan (matplotlib, Agg, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from camera_pose_ros.fileio import atomic_path  # noqa: E402
from camera_pose_ros.io.floorplan import FloorPlan  # noqa: E402

__all__ = ["plot_trajectories", "plot_series", "plot_coverage"]


def _save(fig: plt.Figure, out: str | os.PathLike) -> Path:
    """Lay out, write atomically (format from the suffix, PNG without one) and close."""
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(out)


def plot_trajectories(
    out: str | os.PathLike, tracks: dict[str, np.ndarray], *, floorplan: FloorPlan | None = None,
    points: dict[str, np.ndarray] | None = None, title: str = "",
) -> Path:
    """Draw named 2D tracks (N, >=2, map frame) and marked points over the floor plan."""
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    if floorplan is not None:
        ax.imshow(floorplan.to_image(), cmap="gray", extent=floorplan.extent(), vmin=0,
                  vmax=255, interpolation="nearest")
    for name, xy in tracks.items():
        if len(xy):
            n = int(np.isfinite(xy[:, 0]).sum())
            ax.plot(xy[:, 0], xy[:, 1], "-", lw=1.2, label=f"{name} ({n})")
    for name, xy in (points or {}).items():
        if len(xy):
            ax.plot(xy[:, 0], xy[:, 1], "o", ms=6, mfc="none", mew=1.5, label=name)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, map)")
    ax.set_ylabel("y (m, map)")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out)


def plot_series(
    out: str | os.PathLike, points: dict[str, tuple[np.ndarray, np.ndarray]], *,
    lines: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, xlabel: str = "",
    ylabel: str = "", title: str = "", log_y: bool = False,
) -> Path:
    """Named scatter series ``(x, y)`` and line series over one axis (e.g. residuals over
    time with a threshold)."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    for name, (x, y) in points.items():
        if len(x):
            ax.plot(x, y, ".", ms=4, label=f"{name} ({len(x)})")
    for name, (x, y) in (lines or {}).items():
        if len(x):
            ax.plot(x, y, "-", lw=1.0, color="0.4", label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out)


def plot_coverage(
    out: str | os.PathLike, floorplan: FloorPlan, views_HW: np.ndarray, headings_HW: np.ndarray,
    *, gaps: list[dict], one_heading: list[dict] | None = None,
    track: np.ndarray | None = None, heading_bins: int = 8, title: str = "",
) -> Path:
    """Two panels over the plan: how many views saw each walkable cell, and from how many
    heading sectors. Unseen walkable cells are red; ``gaps`` (dicts with ``x, y, area_m2,
    extent_m``) are circled and numbered in both panels; the second panel's title counts the
    ``one_heading`` areas; ``track`` (N, >=2) is the registered trajectory."""
    free = floorplan.walkable
    seen = free & (views_HW > 0)
    extent = floorplan.extent()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110)
    unseen = np.zeros((*free.shape, 4))
    unseen[free & ~seen] = (0.85, 0.1, 0.1, 0.55)
    panels = (
        (np.ma.masked_where(~seen, np.maximum(views_HW, 1)), "viridis", "views seeing the cell",
         matplotlib.colors.LogNorm(1, max(2, int(views_HW[seen].max()) if seen.any() else 2))),
        (np.ma.masked_where(~seen, headings_HW), plt.get_cmap("plasma", heading_bins),
         f"headings it was seen from (of {heading_bins})",
         matplotlib.colors.Normalize(0.5, heading_bins + 0.5)),
    )
    for k, (ax, (values, cmap, label, norm)) in enumerate(zip(axes, panels, strict=True)):
        ax.imshow(floorplan.to_image(), cmap="gray", extent=extent, vmin=0, vmax=255,
                  interpolation="nearest")
        im = ax.imshow(values, cmap=cmap, norm=norm, origin="lower", extent=extent,
                       interpolation="nearest")
        ax.imshow(unseen, origin="lower", extent=extent, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        if k == 1:
            bar.set_ticks(range(1, heading_bins + 1))
        if track is not None and len(track):
            ax.plot(track[:, 0], track[:, 1], "-", color="white", lw=0.8, alpha=0.9)
        for i, gap in enumerate(gaps, 1):
            ax.add_patch(plt.Circle((gap["x"], gap["y"]), gap["extent_m"], fill=False,
                                    color="red", lw=1.5))
            ax.annotate(f"gap {i}: {gap['area_m2']:.1f} m\u00b2", (gap["x"], gap["y"]),
                        color="darkred", fontsize=8, ha="center", va="center", weight="bold",
                        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7, "lw": 0})
        ax.set_title("red: walkable, never seen; circled: gaps" if k == 0 else
                     f"1: seen one way only ({len(one_heading or ())} area(s) of 1 m\u00b2 "
                     "or more)", fontsize=9)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.set_xlabel("x (m, map)")
    axes[0].set_ylabel("y (m, map)")
    if title:
        fig.suptitle(title)
    return _save(fig, out)
