"""Pose CSV files: ``[image,]stamp,x,y,z,qw,qx,qy,qz`` (map frame, scalar-first quaternion).

Stamps are seconds written with nanosecond precision. Extra columns (covariance) are kept
as they are.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import FormatError, InputDataError
from camera_pose_ros.fileio import write_text_atomic

__all__ = ["PoseTable", "read_poses", "write_poses", "POSE_COLUMNS", "format_stamp",
           "parse_stamp", "seconds_to_ns", "read_csv_rows"]

POSE_COLUMNS = ("x", "y", "z", "qw", "qx", "qy", "qz")
_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")
_MAX_SECONDS = 9.2e9  # int64 nanoseconds


def read_csv_rows(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV a person may have written or exported.

    Accepts a UTF-8 byte-order mark (spreadsheet exports) and spaces around the column
    names; blank lines are skipped.

    Raises:
        InputDataError: not UTF-8 text, or a CSV the reader cannot parse.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            lines = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: not a UTF-8 text {what} (byte {exc.start} is "
                             f"0x{exc.object[exc.start]:02x})") from exc
    except csv.Error as exc:
        raise InputDataError(f"{path}: not a readable CSV {what} ({exc})") from exc
    if not lines:
        return [], []
    header = [c.strip() for c in lines[0][1]]
    rows = []
    for line, values in lines[1:]:
        while len(values) > len(header) and not values[-1].strip():
            values = values[:-1]  # trailing commas
        if len(values) != len(header):
            raise InputDataError(f"{path}:{line}: {len(values)} value(s), the header has "
                                 f"{len(header)} column(s)")
        row = {k: v.strip() for k, v in zip(header, values, strict=True)}
        row["__line__"] = str(line)
        rows.append(row)
    return header, rows


def format_stamp(stamp_ns: int) -> str:
    """Seconds with exactly nine decimals from integer nanoseconds (no float rounding)."""
    ns = int(stamp_ns)
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def parse_stamp(text: str) -> int:
    """Integer nanoseconds from a decimal seconds string (exact up to nine decimals).

    Raises:
        FormatError: not a number, not finite, or beyond int64 nanoseconds (year 2262).
    """
    s = str(text).strip()
    if "e" in s.lower() or s.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        try:
            seconds = float(s)
        except ValueError:
            raise FormatError(f"stamp {s!r} is not a number of seconds") from None
        if not math.isfinite(seconds) or abs(seconds) >= _MAX_SECONDS:
            raise FormatError(f"stamp {s!r} is not a time in seconds")
        return seconds_to_ns(seconds)
    if not _DECIMAL.fullmatch(s):
        raise FormatError(f"stamp {s!r} is not a decimal number of seconds")
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("+-").partition(".")
    ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    if ns >= 2**63:
        raise FormatError(f"stamp {s!r} is beyond int64 nanoseconds")
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
    cols, rows = read_csv_rows(path, "pose file")
    missing = [c for c in ("stamp", *POSE_COLUMNS) if c not in cols]
    if missing:
        raise InputDataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected "
            "[image,]stamp,x,y,z,qw,qx,qy,qz"
        )
    stamps, pos, quat = [], [], []
    for r in rows:
        try:
            stamps.append(parse_stamp(r["stamp"]))
            pos.append([float(r[c]) for c in ("x", "y", "z")])
            quat.append([float(r[c]) for c in ("qw", "qx", "qy", "qz")])
        except (TypeError, ValueError, FormatError) as exc:
            raise InputDataError(f"{path}:{r['__line__']}: unparsable number ({exc})") from exc
    pos_a = np.array(pos, dtype=float).reshape(-1, 3)
    quat_a = np.array(quat, dtype=float).reshape(-1, 4)
    if not (np.all(np.isfinite(pos_a)) and np.all(np.isfinite(quat_a))):
        raise InputDataError(f"{path}: non-finite pose values")
    if np.any(np.abs(pos_a) > 1e9):
        raise InputDataError(f"{path}: positions beyond 1e9 m: not metres in a map")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(quat_a, axis=1) if len(quat_a) else np.ones(0)
    if np.any(norms < 1e-6) or not np.all(np.isfinite(norms)):
        raise InputDataError(f"{path}: zero or overflowing quaternion in a row")
    quat_a = quat_a / norms[:, None] if len(quat_a) else quat_a
    images = [r["image"] for r in rows] if "image" in cols else None
    known = {"image", "stamp", *POSE_COLUMNS}
    extra = {c: [r[c] for r in rows] for c in cols if c not in known}
    return PoseTable(np.array(stamps, dtype=np.int64), pos_a, quat_a, images, extra)
