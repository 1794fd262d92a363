"""Pose CSV files: ``[image,]stamp,x,y,z,qw,qx,qy,qz`` (map frame, scalar-first quaternion).

Stamps are seconds written with nanosecond precision. Extra columns (covariance) are kept
as they are.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.fileio import write_text_atomic

__all__ = ["PoseTable", "read_poses", "write_poses", "POSE_COLUMNS", "format_stamp",
           "parse_stamp", "seconds_to_ns"]

POSE_COLUMNS = ("x", "y", "z", "qw", "qx", "qy", "qz")


def format_stamp(stamp_ns: int) -> str:
    """Seconds with exactly nine decimals from integer nanoseconds (no float rounding)."""
    ns = int(stamp_ns)
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def parse_stamp(text: str) -> int:
    """Integer nanoseconds from a decimal seconds string (exact up to nine decimals)."""
    s = text.strip()
    if "e" in s.lower():
        return seconds_to_ns(float(s))
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("+-").partition(".")
    ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if neg else ns


def seconds_to_ns(seconds: float) -> int:
    """Nanoseconds of a float stamp (video time, file names)."""
    return int(round(float(seconds) * 1e9))


@dataclass
class PoseTable:
    """Poses of a sequence of frames, all arrays of the same length N.

    Attributes:
        stamps_ns: int64 nanoseconds (exact; ``stamps`` gives float seconds).
        positions_N3: camera centres in the map frame, metres.
        quats_wxyz_N4: ``map_from_cam`` rotations, scalar first.
        images: image file names relative to the dataset, or None.
        extra: further columns by name (strings), e.g. covariance terms.
    """

    stamps_ns: np.ndarray
    positions_N3: np.ndarray
    quats_wxyz_N4: np.ndarray
    images: list[str] | None = None
    extra: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stamps_ns = np.asarray(self.stamps_ns, dtype=np.int64)

    @property
    def stamps(self) -> np.ndarray:
        """Float seconds (for arithmetic; about 0.2 us resolution at present-day stamps)."""
        return self.stamps_ns / 1e9

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def subset(self, index: np.ndarray | list[int]) -> PoseTable:
        """Rows selected by integer index or boolean mask, in that order."""
        idx = np.arange(len(self))[np.asarray(index)] if len(self) else np.asarray([], int)
        return PoseTable(
            self.stamps_ns[idx],
            self.positions_N3[idx],
            self.quats_wxyz_N4[idx],
            None if self.images is None else [self.images[i] for i in idx],
            {k: [v[i] for i in idx] for k, v in self.extra.items()},
        )


def write_poses(path: str | os.PathLike, table: PoseTable) -> Path:
    """Write a pose CSV atomically (``image`` column first when the table has images)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = (["image"] if table.images is not None else []) + ["stamp", *POSE_COLUMNS]
    writer.writerow(header + list(table.extra))
    for i in range(len(table)):
        row = [table.images[i]] if table.images is not None else []
        row.append(format_stamp(table.stamps_ns[i]))
        row += [f"{v:.6f}" for v in table.positions_N3[i]]
        row += [f"{v:.9f}" for v in table.quats_wxyz_N4[i]]
        row += [table.extra[k][i] for k in table.extra]
        writer.writerow(row)
    return write_text_atomic(path, buf.getvalue())


def read_poses(path: str | os.PathLike) -> PoseTable:
    """Read a pose CSV; missing columns or unparsable values raise :class:`InputDataError`."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"pose file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in ("stamp", *POSE_COLUMNS) if c not in cols]
        if missing:
            raise InputDataError(
                f"{path}: missing column(s) {', '.join(missing)}; expected "
                "[image,]stamp,x,y,z,qw,qx,qy,qz"
            )
        rows = list(reader)
    try:
        stamps = np.array([parse_stamp(r["stamp"]) for r in rows], dtype=np.int64)
        pos = np.array([[float(r[c]) for c in ("x", "y", "z")] for r in rows]).reshape(-1, 3)
        quat = np.array([[float(r[c]) for c in ("qw", "qx", "qy", "qz")] for r in rows])
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{path}: unparsable number ({exc})") from exc
    quat = quat.reshape(-1, 4)
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
        raise InputDataError(f"{path}: non-finite pose values")
    norms = np.linalg.norm(quat, axis=1) if len(quat) else np.ones(0)
    if np.any(norms < 1e-6):
        raise InputDataError(f"{path}: zero quaternion in a row")
    quat = quat / norms[:, None] if len(quat) else quat
    images = [r["image"] for r in rows] if "image" in cols else None
    known = {"image", "stamp", *POSE_COLUMNS}
    extra = {c: [r[c] for r in rows] for c in cols if c not in known}
    return PoseTable(stamps, pos, quat, images, extra)
