"""Pose-error metrics: pure, importable functions (numpy and scipy only, no torch).

Position error in metres, rotation error in degrees (blind to the quaternion sign), shares
of frames within the usual (position, rotation) thresholds.

Honesty of the claimed covariances (:func:`honesty_summary`): a consumer such as a SLAM or
navigation stack takes a PoseWithCovarianceStamped at its word, so besides the medians we
report how often the error lies outside the 99% ellipsoid of its own covariance, the
coverage of the 68.3% / 95.4% ellipsoids (nominal 0.683 / 0.954), and the share of frames
that are "confidently wrong" (more than 1 m off while claiming less than 0.5 m). Covariances
are 6x6 in REP 103 order (x, y, z, rotation about the map's x, y, z); errors are position
differences and rotation vectors of ``R_pred R_gt^T`` (radians, about the map axes).
A singular or non-finite covariance block, or a non-finite error, counts as outside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.geometry import position_errors, quat_wxyz_to_xyzw, rotation_errors_deg

__all__ = ["THRESHOLDS", "match_by_stamp", "error_summary", "threshold_key", "CHI2_3_99",
           "COVERAGE_LEVELS", "COV_COLUMNS", "pose_error_vectors", "block_mahalanobis_sq",
           "honesty_summary", "refinement_summary", "covariance_columns",
           "covariances_from_columns", "summary_table"]

#: squared Mahalanobis bound of the 99% ellipsoid in 3 dimensions (11.345)
CHI2_3_99 = float(chi2.ppf(0.99, 3))
#: nominal coverage of the 1- and 2-sigma ellipsoids, by report key suffix
COVERAGE_LEVELS: dict[str, float] = {"68": 0.6827, "95": 0.9545}
#: upper triangle of a 6x6 covariance as pose CSV columns ``cov_ij`` (i <= j)
COV_COLUMNS = [f"cov_{i}{j}" for i in range(6) for j in range(i, 6)]
#: "confidently wrong": more than this many metres off ...
WRONG_M = 1.0
#: ... while the largest claimed position standard deviation is below this
CONFIDENT_SIGMA_M = 0.5
#: an accepted refined pose further off than this is a false acceptance
FALSE_ACCEPT_M = 0.25

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


def pose_error_vectors(pred_pos_N3: np.ndarray, pred_quat_wxyz_N4: np.ndarray,
                       gt_pos_N3: np.ndarray, gt_quat_wxyz_N4: np.ndarray) -> np.ndarray:
    """(N, 6) errors: position difference (m) and rotation vector of ``R_pred R_gt^T`` (rad).

    The rotation vector is about the map axes, as the covariance's rotation block (REP 103).
    """
    pred_pos = np.asarray(pred_pos_N3, float).reshape(-1, 3)
    if len(pred_pos) == 0:
        return np.zeros((0, 6))
    rp = Rotation.from_quat(quat_wxyz_to_xyzw(np.asarray(pred_quat_wxyz_N4, float)))
    rg = Rotation.from_quat(quat_wxyz_to_xyzw(np.asarray(gt_quat_wxyz_N4, float)))
    d_rot = (rp * rg.inv()).as_rotvec().reshape(-1, 3)
    return np.concatenate([pred_pos - np.asarray(gt_pos_N3, float).reshape(-1, 3), d_rot], 1)


def _valid_blocks(c_N33: np.ndarray, rel_tol: float = 1e-12
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask of finite positive-definite 3x3 blocks, and their eigenvalues and eigenvectors."""
    n = len(c_N33)
    w_all, v_all = np.ones((n, 3)), np.tile(np.eye(3), (n, 1, 1))
    ok = np.isfinite(c_N33).all(axis=(1, 2))
    if ok.any():
        c = c_N33[ok]
        w_all[ok], v_all[ok] = np.linalg.eigh(0.5 * (c + np.swapaxes(c, 1, 2)))
    ok &= (w_all[:, 0] > 0) & (w_all[:, 0] > rel_tol * w_all[:, -1])
    return ok, w_all, v_all


def _block_sq(e_N3: np.ndarray, c_N33: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances of one 3x3 block; inf where it is singular/non-finite."""
    ok, w, v = _valid_blocks(c_N33)
    ok &= np.isfinite(e_N3).all(axis=1)
    proj = np.einsum("nij,ni->nj", v, np.where(np.isfinite(e_N3), e_N3, 0.0))
    d = np.sum(proj**2 / np.where(w > 0, w, 1.0), axis=1)
    return np.where(ok, d, np.inf)


def block_mahalanobis_sq(err_N6: np.ndarray, cov_N66: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distances of the position and rotation blocks, (N,) each.

    ``inf`` where the block's covariance is singular (not positive definite, or its smallest
    eigenvalue below 1e-12 of its largest) or non-finite, or the error is non-finite: such a
    frame is outside every ellipsoid. Cross terms between the blocks are ignored.

    Raises:
        InputDataError: ``err_N6`` and ``cov_N66`` hold different numbers of frames.
    """
    err = np.asarray(err_N6, float).reshape(-1, 6)
    cov = np.asarray(cov_N66, float).reshape(-1, 6, 6)
    if len(err) != len(cov):
        raise InputDataError(f"{len(err)} errors but {len(cov)} covariances: each error "
                             "needs the covariance of its own frame")
    return (_block_sq(err[:, :3], cov[:, :3, :3]), _block_sq(err[:, 3:], cov[:, 3:, 3:]))


def _share(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else 0.0


def honesty_summary(err_N6: np.ndarray, cov_N66: np.ndarray, *, wrong_m: float = WRONG_M,
                    confident_sigma_m: float = CONFIDENT_SIGMA_M) -> dict:
    """How far the claimed covariances can be believed; every value finite (JSON-safe).

    Keys: ``frames``; ``outside_99_position`` / ``_rotation`` / ``_any`` (share of frames
    whose error lies outside the 99% ellipsoid of its own covariance, per block and either);
    ``coverage_68_position`` / ``coverage_95_position`` and the rotation ones (shares inside
    the 68.3% / 95.4% ellipsoids, nominal 0.683 / 0.954); ``overconfident_1m_0.5m`` (share
    of all frames that are more than ``wrong_m`` off while the largest position standard
    deviation claimed is below ``confident_sigma_m``: confidently wrong); ``wrong_1m``
    (share more than ``wrong_m`` off, whatever they claim); ``median_claimed_sigma_m``
    (median largest position standard deviation over the frames with a finite covariance;
    0.0 when there are none); ``invalid_covariance`` (share with a singular or non-finite
    block, all counted as outside).
    """
    err = np.asarray(err_N6, float).reshape(-1, 6)
    cov = np.asarray(cov_N66, float).reshape(-1, 6, 6)
    d_pos, d_rot = block_mahalanobis_sq(err, cov)
    out: dict = {"frames": int(len(err))}
    out["outside_99_position"] = _share(~(d_pos <= CHI2_3_99))
    out["outside_99_rotation"] = _share(~(d_rot <= CHI2_3_99))
    out["outside_99_any"] = _share(~((d_pos <= CHI2_3_99) & (d_rot <= CHI2_3_99)))
    for block, d in (("position", d_pos), ("rotation", d_rot)):
        for key, level in COVERAGE_LEVELS.items():
            out[f"coverage_{key}_{block}"] = _share(d <= chi2.ppf(level, 3))
    pos_cov = cov[:, :3, :3]
    finite = np.isfinite(pos_cov).all(axis=(1, 2))
    sigma = np.full(len(err), np.inf)  # a non-finite covariance claims nothing
    if finite.any():
        c = pos_cov[finite]
        w = np.linalg.eigvalsh(0.5 * (c + np.swapaxes(c, 1, 2)))
        sigma[finite] = np.sqrt(np.clip(w[:, -1], 0.0, None))
    t_err = np.linalg.norm(err[:, :3], axis=1)
    wrong = ~(t_err <= wrong_m)  # a NaN position error is wrong too
    out[f"overconfident_{wrong_m:g}m_{confident_sigma_m:g}m"] = _share(
        wrong & (sigma < confident_sigma_m))
    out[f"wrong_{wrong_m:g}m"] = _share(wrong)
    out["median_claimed_sigma_m"] = float(np.median(sigma[finite])) if finite.any() else 0.0
    out["invalid_covariance"] = _share(~(_valid_blocks(cov[:, :3, :3])[0]
                                         & _valid_blocks(cov[:, 3:, 3:])[0]))
    return out


def refinement_summary(position_err_N: np.ndarray, accepted_N: np.ndarray, *,
                       false_accept_m: float = FALSE_ACCEPT_M) -> dict:
    """Share refined, and the false acceptance rate among the accepted refined poses.

    ``false_acceptance_25cm``: accepted poses more than ``false_accept_m`` off, as a share
    of the accepted ones (0.0 when none was accepted; ``accepted_frames`` says how many).
    """
    t_err = np.asarray(position_err_N, float).reshape(-1)
    acc = np.asarray(accepted_N, bool).reshape(-1)
    n_acc = int(acc.sum())
    far = ~(t_err[acc] <= false_accept_m)
    return {"refined_share": _share(acc), "accepted_frames": n_acc,
            f"false_acceptance_{false_accept_m * 100:g}cm": float(far.mean()) if n_acc
            else 0.0}


def covariance_columns(cov_N66: np.ndarray) -> dict[str, list[str]]:
    """Pose CSV columns ``cov_ij`` (upper triangle, REP 103 order) of (N, 6, 6) covariances."""
    cov = np.asarray(cov_N66, float).reshape(-1, 6, 6)
    iu = np.triu_indices(6)
    return {name: [f"{v:.9g}" for v in cov[:, i, j]]
            for name, i, j in zip(COV_COLUMNS, *iu, strict=True)}


def covariances_from_columns(columns: Mapping[str, Sequence[str]]) -> np.ndarray | None:
    """(N, 6, 6) symmetric covariances from ``cov_ij`` columns; None when they are absent.

    An unparsable value becomes NaN (so the frame counts as outside, never an exception).
    """
    if not all(c in columns for c in COV_COLUMNS):
        return None
    n = len(columns[COV_COLUMNS[0]])
    cov = np.zeros((n, 6, 6))

    def num(text: str) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return float("nan")

    for name, i, j in zip(COV_COLUMNS, *np.triu_indices(6), strict=True):
        vals = np.array([num(v) for v in columns[name]], float)
        cov[:, i, j] = vals
        cov[:, j, i] = vals
    return cov


def summary_table(rows: Mapping[str, Mapping]) -> str:
    """A Markdown table of error and honesty figures, one row per mode or source.

    Each value is a summary holding :func:`error_summary` keys and, where present,
    :func:`honesty_summary` and :func:`refinement_summary` keys; missing figures show "-".
    """
    def pct(m: Mapping, key: str) -> str:
        v = m.get(key)
        return "-" if v is None else f"{100 * v:.0f}%"

    head = ("| | frames | median | within 25cm,2deg / 1m,10deg | outside 99% (pos / rot / any)"
            " | coverage 68 / 95 (pos) | confidently wrong | median claimed sigma | refined"
            " | false accept |")
    lines = [head, "|" + "---|" * 10]
    for name, m in rows.items():
        med = ("-" if "median_position_m" not in m else
               f"{m['median_position_m']:.2f} m, {m['median_rotation_deg']:.1f} deg")
        sig = m.get("median_claimed_sigma_m")
        lines.append(
            f"| {name} | {m.get('frames', 0)} | {med} | {pct(m, 'within_25cm_2deg')} / "
            f"{pct(m, 'within_100cm_10deg')} | {pct(m, 'outside_99_position')} / "
            f"{pct(m, 'outside_99_rotation')} / {pct(m, 'outside_99_any')} | "
            f"{pct(m, 'coverage_68_position')} / {pct(m, 'coverage_95_position')} | "
            f"{pct(m, 'overconfident_1m_0.5m')} | "
            f"{'-' if sig is None else f'{sig:.2f} m'} | {pct(m, 'refined_share')} | "
            f"{pct(m, 'false_acceptance_25cm')} |")
    return "\n".join(lines)
