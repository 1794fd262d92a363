"""Trajectory figures over the floor plan (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from camera_pose_ros.fileio import atomic_path  # noqa: E402
from camera_pose_ros.io.floorplan import FloorPlan  # noqa: E402

__all__ = ["plot_trajectories", "plot_series"]


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
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(out)


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
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(out)
