"""Does a reconstruction agree with the robot's own localization? Finding folded stretches.

Look-alike places (repeated posters and doors, symmetric wings) can join two parts of a
walk in SfM: the model registers every frame at a sub-pixel error, yet a stretch of the
walk sits metres from where it was. The robot's localization (TF or ``/amcl_pose``) does
not fold. :func:`find_disagreements` fits one similarity from the SfM camera centres to
those rough map positions, robustly (the priors jump by about a metre when AMCL corrects
itself), and returns the time ranges whose SfM positions stay metres away from the priors.

Pure numpy: the alignment stage calls it and decides what to do (refuse, or go on when the
user overrides it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camera_pose_ros.errors import AlignmentError
from camera_pose_ros.geometry import Sim3, fit_sim3_samples

__all__ = ["Segment", "Disagreements", "find_disagreements"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the walk whose SfM positions disagree with the priors.

    Attributes:
        start_ns: stamp of its first frame.
        end_ns: stamp of its last frame.
        frames: frames in it (those within it that agree included).
        max_residual_m: the largest distance of a frame in it from its prior.
        median_residual_m: the median distance of its frames from their priors.
    """

    start_ns: int
    end_ns: int
    frames: int
    max_residual_m: float
    median_residual_m: float

    def describe(self, origin_ns: int = 0) -> str:
        """``12.3-25.0 s (40 frames, up to 6.1 m off)``, seconds from ``origin_ns``."""
        return (f"{(self.start_ns - origin_ns) / 1e9:.1f}-{(self.end_ns - origin_ns) / 1e9:.1f}"
                f" s ({self.frames} frames, up to {self.max_residual_m:.1f} m off)")

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {"start_ns": int(self.start_ns), "end_ns": int(self.end_ns),
                "frames": int(self.frames), "max_residual_m": float(self.max_residual_m),
                "median_residual_m": float(self.median_residual_m)}


@dataclass(frozen=True)
class Disagreements:
    """What :func:`find_disagreements` found.

    Attributes:
        map_from_sfm: the robust similarity from the SfM frame to the priors' map frame.
        residuals_m: per frame, the distance of its aligned SfM centre from its prior.
        fit_inliers: the frames the similarity was fitted on.
        segments: stretches of at least ``min_frames`` frames off by over the threshold,
            in time order: a folded reconstruction (empty: none).
        isolated: frames off by over the threshold outside any segment (a single badly
            registered frame, or a glitch of the priors).
    """

    map_from_sfm: Sim3
    residuals_m: np.ndarray
    fit_inliers: np.ndarray
    segments: list[Segment]
    isolated: np.ndarray

    def to_dict(self) -> dict:
        """Plain-JSON summary (for a report)."""
        return {"segments": [s.to_dict() for s in self.segments],
                "isolated_frames": int(self.isolated.sum()),
                "fit_inliers": int(self.fit_inliers.sum()),
                "median_residual_m": float(np.median(self.residuals_m)),
                "map_from_sfm": self.map_from_sfm.to_dict()}


def find_disagreements(
    stamps_ns: np.ndarray, sfm_centres_N3: np.ndarray, prior_centres_N3: np.ndarray, *,
    threshold_m: float = 2.0, fit_threshold_m: float = 0.5, min_frames: int = 3,
    max_gap_frames: int = 2, iterations: int = 500, seed: int = 0,
) -> Disagreements:
    """Stretches of the walk where the SfM camera centres disagree with their priors.

    One similarity from the SfM frame to the map is fitted robustly to every frame (MSAC
    with ``fit_threshold_m``: the priors' noise and their jumps do not move it), then each
    frame's residual is its aligned SfM centre's distance from its prior. Frames off by more
    than ``threshold_m`` that follow each other in time (up to ``max_gap_frames`` agreeing
    frames between them) form a segment; a segment of ``min_frames`` or more is a fold.
    A prior that jumps by a metre for a while stays under the default threshold; a single
    frame far off is ``isolated``, not a fold.

    Args:
        stamps_ns: (N,) frame stamps, nanoseconds (any order).
        sfm_centres_N3: (N, 3) camera centres in the SfM frame (any scale).
        prior_centres_N3: (N, 3) the same frames' rough positions in the map, metres.
        threshold_m: a frame farther than this from its prior disagrees.
        fit_threshold_m: inlier distance of the robust fit.
        min_frames: the fewest frames of a segment.
        max_gap_frames: agreeing frames allowed inside a segment.
        iterations: random samples of the fit.
        seed: of the fit's sampling (the result is deterministic for a seed).

    Raises:
        AlignmentError: fewer than 3 frames, arrays of different lengths or non-finite
            values, or no similarity that 3 frames agree on.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    src = np.asarray(sfm_centres_N3, dtype=float).reshape(-1, 3)
    dst = np.asarray(prior_centres_N3, dtype=float).reshape(-1, 3)
    if not len(stamps) == len(src) == len(dst):
        raise AlignmentError(f"{len(stamps)} stamps, {len(src)} SfM centres and {len(dst)} "
                             "priors: one of each per frame is needed")
    if len(src) < 3:
        raise AlignmentError(f"need at least 3 frames with a prior to check the "
                             f"reconstruction, got {len(src)}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise AlignmentError("non-finite SfM centres or priors")
    if not (threshold_m > 0 and fit_threshold_m > 0 and min_frames >= 1
            and max_gap_frames >= 0):
        raise AlignmentError("thresholds must be positive, min_frames >= 1, "
                             "max_gap_frames >= 0")
    order = np.argsort(stamps, kind="stable")
    try:
        sim, inliers = fit_sim3_samples(src, dst, inlier_threshold=fit_threshold_m,
                                        iterations=iterations, seed=seed)
    except AlignmentError as exc:
        raise AlignmentError(f"the SfM camera centres and their priors agree on no "
                             f"similarity within {fit_threshold_m:.2f} m ({exc})") from exc
    residuals = np.linalg.norm(sim.apply(src) - dst, axis=1)
    off = residuals[order] > threshold_m
    segments: list[Segment] = []
    isolated = np.zeros(len(src), dtype=bool)
    flagged = np.flatnonzero(off)
    runs: list[list[int]] = []
    for i in flagged:  # positions in time order; join runs across short agreeing gaps
        if runs and i - runs[-1][-1] <= max_gap_frames + 1:
            runs[-1].append(int(i))
        else:
            runs.append([int(i)])
    for run in runs:
        members = order[run]
        if len(run) < min_frames:
            isolated[members] = True
            continue
        span = order[run[0]:run[-1] + 1]
        segments.append(Segment(int(stamps[span[0]]), int(stamps[span[-1]]), len(span),
                                float(residuals[members].max()),
                                float(np.median(residuals[span]))))
    return Disagreements(sim, residuals, inliers, segments, isolated)
