"""Pose-error metrics: pure, importable functions (numpy only).

Position error in metres, rotation error in degrees (blind to the quaternion sign), shares
of frames within the usual (position, rotation) thresholds.
"""

from __future__ import annotations

import numpy as np

from camera_pose_ros.geometry import position_errors, rotation_errors_deg

__all__ = ["THRESHOLDS", "match_by_stamp", "error_summary", "threshold_key"]

#: (metres, degrees) pairs reported everywhere
THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.25, 2.0), (0.5, 5.0), (1.0, 10.0))


def threshold_key(metres: float, degrees: float) -> str:
    """Name of a threshold pair in reports, e.g. ``within_25cm_2deg``."""
    return f"within_{metres * 100:g}cm_{degrees:g}deg"


def match_by_stamp(stamps_a: np.ndarray, stamps_b: np.ndarray,
                   max_dt: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (ia, ib) of entries whose stamps differ by at most ``max_dt`` seconds.

    Each entry of ``a`` is paired with its nearest stamp in ``b``.
    """
    a = np.asarray(stamps_a, float)
    b = np.asarray(stamps_b, float)
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    order = np.argsort(b)
    bs = b[order]
    pos = np.clip(np.searchsorted(bs, a), 1, len(bs) - 1) if len(bs) > 1 else np.zeros(len(a),
                                                                                      int)
    left = np.clip(pos - 1, 0, len(bs) - 1)
    right = np.clip(pos, 0, len(bs) - 1)
    pick = np.where(np.abs(bs[left] - a) <= np.abs(bs[right] - a), left, right)
    ok = np.abs(bs[pick] - a) <= max_dt
    return np.flatnonzero(ok), order[pick[ok]]


def error_summary(pred_pos_N3: np.ndarray, pred_quat_wxyz_N4: np.ndarray,
                  gt_pos_N3: np.ndarray, gt_quat_wxyz_N4: np.ndarray) -> dict:
    """Median/mean errors and threshold shares of matched prediction/ground-truth pairs."""
    t_err = position_errors(pred_pos_N3, gt_pos_N3)
    r_err = rotation_errors_deg(pred_quat_wxyz_N4, gt_quat_wxyz_N4)
    if len(t_err) == 0:
        return {"frames": 0}
    out = {
        "frames": int(len(t_err)),
        "median_position_m": float(np.median(t_err)),
        "mean_position_m": float(np.mean(t_err)),
        "median_rotation_deg": float(np.median(r_err)),
        "mean_rotation_deg": float(np.mean(r_err)),
    }
    for m, d in THRESHOLDS:
        out[threshold_key(m, d)] = float(np.mean((t_err <= m) & (r_err <= d)))
    return out
