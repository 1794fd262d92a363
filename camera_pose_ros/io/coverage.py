"""What a walk's cameras saw of a floor plan, and how far a pose is from the mapped views.

:class:`CoverageMap` casts rays across each camera's horizontal field of view, from its
position along the floor, stopped by walls and unknown space (the camera's height and pitch
are ignored: a plan is 2D). Per cell it counts how many views saw it and from how many
distinct headings: each view's heading (the yaw of its optical axis) falls in one of
``heading_bins`` sectors (8: 45 deg each, the first centred on the map's +x), so a cell seen
walking up and down a corridor has 2 headings. Walkable areas no view
saw are *gaps*: places to record again. Areas seen from one heading only are listed too: a
query looking the other way there sees what the map never saw. It adds views in batches
(the recorder adds them as the walk goes); :func:`view_coverage` is the one-call form.

:class:`MappedViews` holds the positions and viewing directions of the registered mapping
cameras (a refinement map's frames or a dataset's ``poses.csv``: :func:`load_mapped_views`)
and answers, per query pose, the distance to the nearest one, so a large error can be told
from an unmapped area.

Numpy and scipy only; vectorised (a report's 2000 poses take about a second).
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.io.refmap import REFINEMENT_MAP, load_refinement_map_frames

__all__ = ["CoverageMap", "view_coverage", "optical_axes", "MappedViews", "NearestViews",
           "load_mapped_views", "nearest_view_summary", "HEADING_BINS", "FAR_FROM_MAP_M",
           "SAME_WAY_DEG"]

#: heading sectors a cell can be seen from (8: 45 deg each)
HEADING_BINS = 8
#: a query farther than this from every mapped view is reported as off the map
FAR_FROM_MAP_M = 1.0
#: a mapped view "looks the same way" when its optical axis is within this of the query's
SAME_WAY_DEG = 45.0
_NEAR = np.ones((3, 3), bool)
_CHUNK = 64  # views cast together at most
_CHUNK_CELLS = 2e7  # views x window cells of one chunk's hit matrix at most
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def optical_axes(quats_wxyz_N4: np.ndarray) -> np.ndarray:
    """(N, 3) viewing directions (camera z axis in the map frame) of ``map_from_cam`` rotations."""
    q = np.asarray(quats_wxyz_N4, float).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)


class CoverageMap:
    """Per-cell view and heading counts of a floor plan, accumulated view by view.

    Args:
        plan: the floor plan (free cells are walkable; walls and unknown cells stop rays).
        hfov_rad: the cameras' horizontal field of view.
        max_range: metres a ray travels at most.
        heading_bins: heading sectors (1 to 8).
        rays: rays per view (default: enough that neighbouring rays are at most two cells
            apart at ``max_range``, 31 to 181).
    """

    def __init__(self, plan: FloorPlan, *, hfov_rad: float = math.radians(60.0),
                 max_range: float = 8.0, heading_bins: int = HEADING_BINS,
                 rays: int | None = None) -> None:
        if not 1 <= heading_bins <= 8:
            raise ValueError(f"heading_bins must be 1 to 8, got {heading_bins}")
        if not (math.isfinite(hfov_rad) and 0 < hfov_rad <= 2 * math.pi):
            raise ValueError(f"field of view must be in (0, 360] deg, got {hfov_rad} rad")
        if not (math.isfinite(max_range) and max_range > 0):
            raise ValueError(f"max_range must be > 0 m, got {max_range}")
        self.plan = plan
        occ = plan.occupancy
        self.shape = occ.shape
        self.free = occ == 0
        self._blocking = (occ != 0).ravel()  # walls and unknown space end a ray
        self.walls = (occ >= 65) & ndimage.binary_dilation(self.free, _NEAR)
        self.hfov_rad, self.max_range, self.heading_bins = hfov_rad, max_range, heading_bins
        res = plan.resolution
        self.rays = rays or int(np.clip(math.ceil(hfov_rad * max_range / (2 * res)) + 1,
                                        31, 181))
        self._steps = np.arange(0.0, max_range, res * 0.7)
        self._offsets = np.linspace(-hfov_rad / 2, hfov_rad / 2, self.rays)
        n = occ.size
        self._views = np.zeros(n, np.int32)  # views whose rays reached the cell
        self._bits = np.zeros(n, np.uint8)  # bit b: seen by a view of heading sector b
        self.poses = 0
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add_views(self, positions_N3: np.ndarray, quats_wxyz_N4: np.ndarray) -> None:
        """Cast the rays of cameras at ``positions`` (map frame) with ``map_from_cam``
        rotations; non-finite poses are skipped."""
        pos = np.asarray(positions_N3, float).reshape(-1, 3)
        quats = np.asarray(quats_wxyz_N4, float).reshape(-1, 4)
        ok = (np.isfinite(pos).all(1) & np.isfinite(quats).all(1)
              & (np.linalg.norm(quats, axis=1) > 1e-9))
        pos, quats = pos[ok], quats[ok]
        self._cache = None
        fwd = optical_axes(quats)
        # chunks of nearby views: a chunk marks its cells in a (views, window cells) matrix
        reach = self.max_range / self.plan.resolution + 2
        xy = (pos[:, :2] - np.asarray(self.plan.origin)) / self.plan.resolution
        i = 0
        while i < len(pos):
            j = i + 1
            lo, hi = xy[i].copy(), xy[i].copy()
            while j < len(pos) and j - i < _CHUNK:
                lo2, hi2 = np.minimum(lo, xy[j]), np.maximum(hi, xy[j])
                if (j - i + 1) * np.prod(hi2 - lo2 + 2 * reach) > _CHUNK_CELLS:
                    break
                lo, hi, j = lo2, hi2, j + 1
            self._cast(pos[i:j], fwd[i:j])
            i = j
        self.poses += len(pos)

    def _march(self, pos_N3: np.ndarray, fwd_N3: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """March every ray of the views: the headings (n,), and per ray sample its grid
        row and column and whether the ray reaches it (up to and including the first wall
        or unknown cell), each (n * rays, steps)."""
        h, w = self.shape
        res = self.plan.resolution
        r = self.rays
        heading = np.arctan2(fwd_N3[:, 1], fwd_N3[:, 0])
        ang = (heading[:, None] + self._offsets[None]).reshape(-1)  # (n*r,)
        # sample positions in cell units along each ray: (n*r, steps)
        steps = (self._steps / res).astype(np.float32)[None, :]
        col_f = np.repeat((pos_N3[:, 0] - self.plan.origin[0]) / res, r)[:, None]
        row_f = np.repeat((pos_N3[:, 1] - self.plan.origin[1]) / res, r)[:, None]
        col = np.floor(col_f + steps * np.cos(ang).astype(np.float32)[:, None]).astype(np.int64)
        row = np.floor(row_f + steps * np.sin(ang).astype(np.float32)[:, None]).astype(np.int64)
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        flat = np.clip(row, 0, h - 1) * w + np.clip(col, 0, w - 1)
        stop = ~inside | self._blocking[flat]
        stop[:, 0] = ~inside[:, 0]  # a camera standing on a wall cell still looks out
        first = np.where(stop.any(1), stop.argmax(1), stop.shape[1])
        mark = (np.arange(stop.shape[1])[None, :] <= first[:, None]) & inside
        return heading, row, col, mark

    def view_cells(self, positions_N3: np.ndarray, quats_wxyz_N4: np.ndarray, *,
                   lattice: int = 1) -> list[np.ndarray | None]:
        """Per view, the sorted flat indices of the free cells (floor) its rays reach (None
        for a non-finite pose); ``lattice`` > 1 keeps only the cells whose row and column
        are multiples of it (a sparser sample of the same floor: smaller sets). The views
        are not added to the map.

        Two views whose sets do not meet see no common floor: walls lie between them (a
        wall's two faces are no common floor, whichever side each view stands on).
        """
        pos = np.asarray(positions_N3, float).reshape(-1, 3)
        quats = np.asarray(quats_wxyz_N4, float).reshape(-1, 4)
        ok = (np.isfinite(pos).all(1) & np.isfinite(quats).all(1)
              & (np.linalg.norm(quats, axis=1) > 1e-9))
        out: list[np.ndarray | None] = [None] * len(pos)
        free = self.free.ravel()
        for i in np.flatnonzero(ok):
            _, row, col, mark = self._march(pos[i:i + 1], optical_axes(quats[i:i + 1]))
            row, col = row[mark], col[mark]
            keep = (row % lattice == 0) & (col % lattice == 0)
            cells = np.unique(row[keep] * self.shape[1] + col[keep])
            out[i] = cells[free[cells]]
        return out

    def _cast(self, pos_N3: np.ndarray, fwd_N3: np.ndarray) -> None:
        h, w = self.shape
        n, r = len(pos_N3), self.rays
        heading, row, col, mark = self._march(pos_N3, fwd_N3)
        if not mark.any():
            return
        cam = np.broadcast_to((np.arange(n * r) // r)[:, None], mark.shape)[mark]
        rows, cols = row[mark], col[mark]
        # the window of the grid the chunk reaches, one cell wider for the fill below
        r0, c0 = max(0, int(rows.min()) - 1), max(0, int(cols.min()) - 1)
        hh, ww = min(h, int(rows.max()) + 2) - r0, min(w, int(cols.max()) + 2) - c0
        # a view counts once per cell however many of its rays (and steps) reach it
        hit = np.zeros((n, hh, ww), bool)
        hit[cam, rows - r0, cols - c0] = True
        # rays sample the cells, so a free cell between two rays of a view can be missed:
        # the view also sees the free cells next to the floor it saw (not past a seen wall)
        free = self.free[r0:r0 + hh, c0:c0 + ww]
        hit |= _or_filter3(hit & free) & free
        hit = hit.reshape(n, hh * ww)
        views = self._views.reshape(self.shape)[r0:r0 + hh, c0:c0 + ww]
        views += hit.sum(0, dtype=np.int32).reshape(hh, ww)
        # the view's heading sector (sector 0 centred on the map's +x), for all its cells
        width = 2 * np.pi / self.heading_bins
        sector = np.floor(np.mod(heading + width / 2, 2 * np.pi) / width).astype(np.int64)
        sector %= self.heading_bins
        bits = self._bits.reshape(self.shape)[r0:r0 + hh, c0:c0 + ww]
        for b in np.unique(sector):
            bits[hit[sector == b].any(0).reshape(hh, ww)] |= np.uint8(1 << int(b))

    # -- per-cell results ----------------------------------------------------------------
    def _filled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views, heading bits and the seen mask (H, W); the seen mask also holds the wall
        cells between a seen wall cell and seen floor (the face of a wall in view, which
        rays stopping at the first wall cell they reach can step over)."""
        if self._cache is None:  # computed once per batch of views
            views = self._views.reshape(self.shape)
            seen = views > 0
            seen |= (self.walls & ndimage.binary_dilation(seen & self.walls, _NEAR)
                     & ndimage.binary_dilation(seen & self.free, _NEAR))
            self._cache = (views, self._bits.reshape(self.shape), seen)
        return self._cache

    def cell_views(self) -> np.ndarray:
        """(H, W) int32: how many views saw each cell (0 where none)."""
        return self._filled()[0]

    def cell_headings(self) -> np.ndarray:
        """(H, W) uint8: from how many distinct heading sectors each cell was seen."""
        return _POPCOUNT[self._filled()[1]]

    def seen(self) -> np.ndarray:
        """(H, W) bool: cells some view saw (walls and floor)."""
        return self._filled()[2]

    def summary(self, *, min_gap_m2: float = 1.0, max_gaps: int = 5) -> dict:
        """Shares of the plan seen, counts, the largest gaps; JSON-safe.

        Keys: ``walkable_m2``; ``walkable_seen`` (share of walkable cells some view saw);
        ``walkable_seen_2_headings`` (share seen from at least 2 heading sectors);
        ``walls_seen`` (share of wall cells next to the floor that some view saw);
        ``headings_histogram`` (share of walkable cells seen from 0, 1, ... ``heading_bins``
        sectors); ``median_views`` (over seen walkable cells); ``gaps`` (unseen walkable
        areas of at least ``min_gap_m2``, largest first: ``x, y`` a cell of the area near its
        centre, ``area_m2``, ``extent_m`` the distance from there to its farthest cell);
        ``one_heading_areas`` (the same for areas seen from one sector only); ``method``,
        ``poses_used``, ``hfov_deg``, ``max_range_m``, ``heading_bins``, ``cell_m``.
        """
        views, bits, seen = self._filled()
        headings = _POPCOUNT[bits]
        free = self.free
        n_free = max(1, int(free.sum()))
        seen_free = seen & free
        hist = np.bincount(np.where(seen_free, headings, 0)[free],
                           minlength=self.heading_bins + 1)[:self.heading_bins + 1]
        res = self.plan.resolution
        return {
            "method": (f"rays along the floor across a {math.degrees(self.hfov_rad):.0f} deg "
                       f"field of view, up to {self.max_range:g} m, stopped by walls and "
                       f"unknown space; a view's heading (its yaw) in one of "
                       f"{self.heading_bins} sectors of {360 / self.heading_bins:g} deg"),
            "poses_used": int(self.poses),
            "hfov_deg": float(math.degrees(self.hfov_rad)),
            "max_range_m": float(self.max_range),
            "heading_bins": int(self.heading_bins),
            "cell_m": float(res),
            "walkable_m2": float(free.sum() * res * res),
            "walkable_seen": float(seen_free.sum() / n_free),
            "walkable_seen_2_headings": float((seen_free & (headings >= 2)).sum() / n_free),
            "walls_seen": float((seen & self.walls).sum() / max(1, int(self.walls.sum()))),
            "headings_histogram": [float(v / n_free) for v in hist],
            "median_views": float(np.median(views[seen_free])) if seen_free.any() else 0.0,
            "gaps": self._regions(free & ~seen, min_gap_m2, max_gaps),
            "one_heading_areas": self._regions(seen_free & (headings == 1), min_gap_m2,
                                               max_gaps),
        }

    def _regions(self, mask: np.ndarray, min_m2: float, most: int) -> list[dict]:
        """The largest connected areas of ``mask`` (at least ``min_m2``), largest first."""
        labels, n = ndimage.label(mask, _NEAR)
        if not n:
            return []
        res = self.plan.resolution
        sizes = np.bincount(labels.ravel())[1:] * res * res
        boxes = ndimage.find_objects(labels)
        out = []
        for lab in np.argsort(sizes, kind="stable")[::-1][:most]:
            if sizes[lab] < min_m2:
                break
            box = boxes[lab]
            rr, cc = np.nonzero(labels[box] == lab + 1)
            rr, cc = rr + box[0].start, cc + box[1].start
            # the area's cell nearest its centroid: the centroid of an L lies outside it
            k = int(np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2))
            extent = float(np.sqrt(((rr - rr[k]) ** 2 + (cc - cc[k]) ** 2).max()) + 0.5) * res
            out.append({"x": float(self.plan.origin[0] + (cc[k] + 0.5) * res),
                        "y": float(self.plan.origin[1] + (rr[k] + 0.5) * res),
                        "area_m2": float(sizes[lab]), "extent_m": extent})
        return out

    def grid_codes(self, max_side: int = 600) -> dict:
        """A coarse grid for drawing: ``width, height, cell, origin`` and ``codes`` (base64
        uint8, row 0 at the plan's origin y: 0 nothing, 1 free unseen, 2 free seen, 3 wall
        seen, 4 wall unseen), at most ``max_side`` cells a side."""
        h, w = self.shape
        seen = self._filled()[2]
        k = max(1, math.ceil(max(h, w) / max_side))
        hk, wk = math.ceil(h / k), math.ceil(w / k)

        def block_any(mask: np.ndarray) -> np.ndarray:
            pad = np.zeros((hk * k, wk * k), bool)
            pad[:h, :w] = mask
            return np.asarray(pad.reshape(hk, k, wk, k).any(axis=(1, 3)))

        grid = np.zeros((hk, wk), np.uint8)
        grid[block_any(self.free)] = 1
        grid[block_any(seen & self.free)] = 2
        grid[block_any(self.walls)] = 4
        grid[block_any(seen & self.walls)] = 3
        return {"width": int(wk), "height": int(hk), "cell": float(self.plan.resolution * k),
                "origin": [float(self.plan.origin[0]), float(self.plan.origin[1])],
                "codes": base64.b64encode(grid.tobytes()).decode("ascii")}


def _or_filter3(mask: np.ndarray) -> np.ndarray:
    """OR over each cell's 3x3 neighbourhood in the last two axes."""
    h, w = mask.shape[-2:]
    pad = np.zeros((*mask.shape[:-2], h + 2, w + 2), mask.dtype)
    pad[..., 1:-1, 1:-1] = mask
    out = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            out |= pad[..., dr:dr + h, dc:dc + w]
    return out


def view_coverage(plan: FloorPlan, positions_N3: np.ndarray, quats_wxyz_N4: np.ndarray,
                  hfov_rad: float = math.radians(60.0), *, max_range: float = 8.0,
                  max_poses: int = 800, max_side: int = 600, min_gap_m2: float = 1.0) -> dict:
    """Which parts of the plan the cameras saw (:class:`CoverageMap` in one call).

    Returns :meth:`CoverageMap.summary` and a coarse ``grid`` for drawing
    (:meth:`CoverageMap.grid_codes`). Beyond ``max_poses`` cameras an even subset is used.
    """
    pos = np.asarray(positions_N3, float).reshape(-1, 3)
    quats = np.asarray(quats_wxyz_N4, float).reshape(-1, 4)
    if len(pos) > max_poses:
        keep = np.linspace(0, len(pos) - 1, max_poses).round().astype(int)
        pos, quats = pos[keep], quats[keep]
    cov = CoverageMap(plan, hfov_rad=hfov_rad, max_range=max_range)
    cov.add_views(pos, quats)
    return {**cov.summary(min_gap_m2=min_gap_m2), "grid": cov.grid_codes(max_side)}


# -- nearest mapped view -------------------------------------------------------------------
@dataclass(frozen=True)
class NearestViews:
    """Per query: ``distance_m`` to the nearest mapped camera, ``angle_deg`` between the
    query's viewing direction and that camera's (NaN without query rotations), and
    ``same_way_m`` to the nearest mapped camera looking within :data:`SAME_WAY_DEG` of the
    query's direction (inf when none does; NaN without query rotations)."""

    distance_m: np.ndarray
    angle_deg: np.ndarray
    same_way_m: np.ndarray

    def columns(self) -> dict[str, list[str]]:
        """Pose-CSV columns ``nearest_view_m``, ``nearest_view_angle_deg``,
        ``nearest_same_way_view_m`` (millimetres, hundredths of a degree)."""
        return {"nearest_view_m": [f"{v:.3f}" for v in self.distance_m],
                "nearest_view_angle_deg": [f"{v:.2f}" for v in self.angle_deg],
                "nearest_same_way_view_m": [f"{v:.3f}" for v in self.same_way_m]}


@dataclass(frozen=True)
class MappedViews:
    """Camera centres and viewing directions of the registered mapping frames (map frame).

    Attributes:
        names: (M,) image names (may be empty strings).
        positions_N3: (M, 3) camera centres.
        axes_N3: (M, 3) unit viewing directions (camera z).
        source: where they were read from.
    """

    names: np.ndarray
    positions_N3: np.ndarray
    axes_N3: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.positions_N3)

    @classmethod
    def from_matrices(cls, map_from_cam_M44: np.ndarray, names: np.ndarray | None = None,
                      source: str = "") -> MappedViews:
        """From (M, 4, 4) ``map_from_cam`` poses (a refinement map's)."""
        m = np.asarray(map_from_cam_M44, float).reshape(-1, 4, 4)
        axes = m[:, :3, 2] / np.maximum(np.linalg.norm(m[:, :3, 2], axis=1, keepdims=True),
                                        1e-12)
        return cls(np.asarray(names if names is not None else [""] * len(m)).astype(str),
                   m[:, :3, 3].copy(), axes, source)

    @classmethod
    def from_poses(cls, positions_N3: np.ndarray, quats_wxyz_N4: np.ndarray,
                   names: list[str] | np.ndarray | None = None, source: str = "") -> MappedViews:
        """From positions and scalar-first quaternions (a pose table's)."""
        pos = np.asarray(positions_N3, float).reshape(-1, 3)
        return cls(np.asarray(names if names is not None else [""] * len(pos)).astype(str),
                   pos.copy(), optical_axes(quats_wxyz_N4), source)

    def excluding(self, names: list[str] | tuple[str, ...] | np.ndarray) -> MappedViews:
        """Without the frames named ``names`` (an evaluated split's own frames)."""
        keep = ~np.isin(self.names, np.asarray(list(names), str))
        return MappedViews(self.names[keep], self.positions_N3[keep], self.axes_N3[keep],
                           self.source)

    def nearest(self, positions_N3: np.ndarray, quats_wxyz_N4: np.ndarray | None = None
                ) -> NearestViews:
        """Distances (and angles) from query poses to the nearest mapped views.

        Raises:
            InputDataError: there is no mapped view.
        """
        if len(self) == 0:
            raise InputDataError("no mapped view to measure the distance to")
        pos = np.asarray(positions_N3, float).reshape(-1, 3)
        n = len(pos)
        finite = np.isfinite(pos).all(1)
        dist, angle, same = (np.full(n, np.nan) for _ in range(3))
        if finite.any():
            d, idx = cKDTree(self.positions_N3).query(pos[finite])
            dist[finite] = d
        if quats_wxyz_N4 is None or not finite.any():
            return NearestViews(dist, angle, same)
        q = np.asarray(quats_wxyz_N4, float).reshape(-1, 4)
        ok = finite & np.isfinite(q).all(1) & (np.linalg.norm(q, axis=1) > 1e-9)
        axes = np.full((n, 3), np.nan)
        axes[ok] = optical_axes(q[ok])
        nearest_idx = np.zeros(n, int)
        nearest_idx[finite] = idx
        cos = np.einsum("ij,ij->i", axes[ok], self.axes_N3[nearest_idx[ok]])
        angle[ok] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        cos_max = math.cos(math.radians(SAME_WAY_DEG))
        rows = np.flatnonzero(ok)
        for i in range(0, len(rows), 256):  # (256, M) at a time
            r = rows[i:i + 256]
            d2 = ((pos[r, None, :] - self.positions_N3[None]) ** 2).sum(-1)
            d2[axes[r] @ self.axes_N3.T < cos_max] = np.inf
            same[r] = np.sqrt(d2.min(1))
        return NearestViews(dist, angle, same)


def load_mapped_views(path: str | os.PathLike) -> MappedViews:
    """The mapped views of a refinement map (``.npz``: only its frame poses are read), a pose
    CSV with ``image`` names, or a dataset folder (its refinement map, else ``poses.csv``).

    Raises:
        RefinementError: an unreadable refinement map or one of another format.
        InputDataError: neither file in the folder, or an unreadable pose CSV.
    """
    path = Path(path)
    if path.is_dir():
        if (path / REFINEMENT_MAP).is_file():
            path = path / REFINEMENT_MAP
        elif (path / "poses.csv").is_file():
            path = path / "poses.csv"
        else:
            raise InputDataError(f"{path} has neither {REFINEMENT_MAP} nor poses.csv: no "
                                 "mapped views")
    if path.suffix == ".npz":
        names, map_from_cam = load_refinement_map_frames(path)
        return MappedViews.from_matrices(map_from_cam, names, str(path))
    table = read_poses(path)
    return MappedViews.from_poses(table.positions_N3, table.quats_wxyz_N4, table.images,
                                  str(path))


def nearest_view_summary(near: NearestViews, *, position_errors_m: np.ndarray | None = None,
                         far_m: float = FAR_FROM_MAP_M) -> dict:
    """Medians and the share of queries farther than ``far_m`` from every mapped view; with
    ``position_errors_m`` the median error of the queries near the map and of those far from
    it, side by side (what tells an unmapped area from a bad estimate). JSON-safe."""
    d = near.distance_m
    ok = np.isfinite(d)
    out: dict = {"frames": int(ok.sum()), "far_m": float(far_m)}
    if not ok.any():
        return out
    out.update(median_m=float(np.median(d[ok])), p90_m=float(np.percentile(d[ok], 90)),
               share_beyond=float(np.mean(d[ok] > far_m)))
    a, s = near.angle_deg, near.same_way_m
    if np.isfinite(a).any():
        out["median_angle_deg"] = float(np.nanmedian(np.where(np.isfinite(a), a, np.nan)))
    has_s = ~np.isnan(s)
    if has_s.any():
        med = float(np.median(s[has_s]))  # inf when most have no such view: JSON null
        out["median_same_way_m"] = med if math.isfinite(med) else None
        out["share_same_way_beyond"] = float(np.mean(s[has_s] > far_m))
    if position_errors_m is not None:
        err = np.asarray(position_errors_m, float)
        for key, sel in (("near", ok & (d <= far_m)), ("far", ok & (d > far_m))):
            out[f"frames_{key}"] = int(sel.sum())
            if sel.any():
                out[f"median_position_error_{key}_m"] = float(np.median(err[sel]))
    return out
