"""Floor plans as ROS map_server maps (YAML + PGM) and the walkable area they define.

Internally the grid is ``occupancy`` int8 in ROS OccupancyGrid order (row 0 at the map's
``origin`` y, i.e. the bottom of the picture), values -1 unknown, 0 free, 100 occupied.
Free cells are walkable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.fileio import atomic_path, write_text_atomic

__all__ = ["FloorPlan", "MAX_COORD"]

#: metres; coordinates beyond this are refused as garbage (UTM northings stay below 1e7)
MAX_COORD = 1e8


@dataclass
class FloorPlan:
    """An occupancy grid with its placement in the map frame.

    Attributes:
        occupancy: (H, W) int8, row 0 at ``origin`` y; -1 unknown, 0 free, 100 occupied.
        resolution: metres per cell.
        origin: map coordinates (x, y) of the corner of cell (0, 0).
    """

    occupancy: np.ndarray
    resolution: float
    origin: tuple[float, float]

    @property
    def walkable(self) -> np.ndarray:
        """Boolean (H, W) mask of free cells."""
        return self.occupancy == 0

    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` of the grid in the map frame (for plotting)."""
        h, w = self.occupancy.shape
        x0, y0 = self.origin
        return x0, x0 + w * self.resolution, y0, y0 + h * self.resolution

    def world_to_cell(self, xy_N2: np.ndarray) -> np.ndarray:
        """Integer (row, col) cells of map points (N, 2); may fall outside the grid."""
        xy = np.asarray(xy_N2, float).reshape(-1, 2)
        col = np.floor((xy[:, 0] - self.origin[0]) / self.resolution).astype(int)
        row = np.floor((xy[:, 1] - self.origin[1]) / self.resolution).astype(int)
        return np.stack([row, col], 1)

    def is_walkable(self, xy_N2: np.ndarray) -> np.ndarray:
        """Boolean per point: inside the grid and on a free cell."""
        rc = self.world_to_cell(xy_N2)
        h, w = self.occupancy.shape
        inside = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
        out = np.zeros(len(rc), bool)
        out[inside] = self.walkable[rc[inside, 0], rc[inside, 1]]
        return out

    def to_image(self) -> np.ndarray:
        """PGM picture (top row = largest y): free 254, occupied 0, unknown 205."""
        img = np.full(self.occupancy.shape, 205, np.uint8)
        img[self.occupancy == 0] = 254
        img[self.occupancy >= 65] = 0
        return np.ascontiguousarray(img[::-1])

    def save(self, yaml_path: str | os.PathLike) -> Path:
        """Write ``NAME.yaml`` and ``NAME.pgm`` (map_server, trinary mode) atomically."""
        yaml_path = Path(yaml_path)
        pgm = yaml_path.with_suffix(".pgm")
        with atomic_path(pgm) as tmp:
            if not cv2.imwrite(str(tmp), self.to_image()):
                raise InputDataError(f"could not write {pgm}")
        meta = {
            "image": pgm.name,
            "mode": "trinary",
            "resolution": float(self.resolution),
            "origin": [float(self.origin[0]), float(self.origin[1]), 0.0],
            "negate": 0,
            "occupied_thresh": 0.65,
            "free_thresh": 0.196,  # as ROS map_saver: unknown (205) must not read as free
        }
        return write_text_atomic(yaml_path, yaml.safe_dump(meta, sort_keys=False))

    @classmethod
    def from_grid(cls, data: Sequence[int] | bytes | np.ndarray, width: int, height: int,
                  resolution: float, origin_xy: tuple[float, float],
                  max_cells: int = 100_000_000) -> FloorPlan:
        """A plan from the fields of a ``nav_msgs/OccupancyGrid`` (row-major, row 0 at origin).

        Raises:
            InputDataError: zero width or height, more than ``max_cells`` cells, ``data``
                not ``width * height`` long, a resolution outside 1e-6 to 1000 m (or not a
                number), or an origin that is not finite or beyond ``MAX_COORD``.
        """
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise InputDataError(f"occupancy grid is empty ({width}x{height} cells)")
        if width * height > max_cells:
            raise InputDataError(f"occupancy grid of {width}x{height} cells is larger than "
                                 f"{max_cells} cells")
        res = float(resolution)
        if not (np.isfinite(res) and 1e-6 <= res <= 1e3):
            raise InputDataError(f"occupancy grid resolution {res} is not a number of metres "
                                 "per cell (1e-6 to 1000)")
        x0, y0 = (float(v) for v in origin_xy)
        if not (np.isfinite(x0) and np.isfinite(y0) and max(abs(x0), abs(y0)) <= MAX_COORD):
            raise InputDataError(f"occupancy grid origin ({x0}, {y0}) is not finite or beyond "
                                 f"{MAX_COORD:g} m")
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                occ = np.frombuffer(data, dtype=np.int8)
            else:
                occ = np.asarray(data, dtype=np.int8).reshape(-1)
        except (ValueError, OverflowError, TypeError) as exc:
            raise InputDataError(f"occupancy grid data is not int8 cells ({exc})") from exc
        if occ.size != width * height:
            raise InputDataError(f"occupancy grid data has {occ.size} cells, width*height = "
                                 f"{width * height}")
        return cls(occ.reshape(height, width).copy(), res, (x0, y0))

    @classmethod
    def load(cls, yaml_path: str | os.PathLike) -> FloorPlan:
        """Read a map_server YAML and its image (PGM or PNG); yaw in the origin must be 0."""
        yaml_path = Path(yaml_path)
        if not yaml_path.is_file():
            raise InputDataError(f"floor plan not found: {yaml_path}")
        try:
            meta = yaml.safe_load(yaml_path.read_text())
            image = yaml_path.parent / meta["image"]
            res = float(meta["resolution"])
            origin = [float(v) for v in meta["origin"]]
            negate = int(meta.get("negate", 0))
            occ_t = float(meta.get("occupied_thresh", 0.65))
            free_t = float(meta.get("free_thresh", 0.196))
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise InputDataError(f"{yaml_path}: not a map_server map ({exc})") from exc
        if len(origin) > 2 and abs(origin[2]) > 1e-9:
            raise InputDataError(f"{yaml_path}: rotated map origins are not supported")
        pix = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        if pix is None:
            raise InputDataError(f"{yaml_path}: cannot read map image {image}")
        p = pix.astype(float) / 255.0
        occ_prob = p if negate else 1.0 - p
        occ = np.full(pix.shape, -1, np.int8)
        occ[occ_prob > occ_t] = 100
        occ[occ_prob < free_t] = 0
        return cls(np.ascontiguousarray(occ[::-1]), res, (origin[0], origin[1]))
