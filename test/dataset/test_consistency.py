"""Folded stretches: SfM camera centres against the robot's rough map positions (arrays only)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.dataset.consistency import find_disagreements
from camera_pose_ros.errors import AlignmentError

T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 frames a second


def _walk(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Stamps and map positions of a walk twice round a 12 m x 6.5 m corridor loop."""
    s = np.linspace(0.0, 2.0, n, endpoint=False) % 1.0 * 37.0  # arc length along the loop
    x = np.interp(s, [0, 12, 18.5, 30.5, 37], [2, 14, 14, 2, 2])
    y = np.interp(s, [0, 12, 18.5, 30.5, 37], [1.75, 1.75, 8.25, 8.25, 1.75])
    return T0_NS + np.arange(n) * PERIOD_NS, np.stack([x, y, np.full(n, 1.5)], axis=1)


def _to_sfm(map_N3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The walk in an SfM frame: another scale, rotation and origin, 1 cm of noise."""
    rot = Rotation.from_euler("xyz", [100, -20, 35], degrees=True).as_matrix()
    return 0.3 * (map_N3 + rng.normal(0, 0.01, map_N3.shape)) @ rot.T + [4.0, -2.0, 7.0]


def test_a_folded_stretch_is_found_with_its_time_range():
    rng = np.random.default_rng(0)
    stamps, truth = _walk()
    priors = truth + rng.normal(0, 0.05, truth.shape)
    folded = truth.copy()
    # frames 60-99 registered onto the twin corridor: turned 180 deg about the floor's centre
    folded[60:100, :2] = [16.0, 10.0] - folded[60:100, :2]
    found = find_disagreements(stamps, _to_sfm(folded, rng), priors)
    assert len(found.segments) == 1
    seg = found.segments[0]
    assert (seg.start_ns, seg.end_ns, seg.frames) == (stamps[60], stamps[99], 40)
    assert seg.max_residual_m > 5.0
    assert seg.describe(T0_NS).startswith("6.0-9.9 s (40 frames, up to ")
    assert not found.isolated.any()
    # the fit follows the frames that agree: their residuals are the priors' noise
    assert np.median(np.delete(found.residuals_m, range(60, 100))) < 0.15


def test_a_clean_reconstruction_with_localization_jumps_has_no_fold():
    rng = np.random.default_rng(1)
    stamps, truth = _walk()
    priors = truth + rng.normal(0, 0.05, truth.shape)
    priors[30:50] += [1.0, 0.0, 0.0]  # AMCL 1 m off for 2 s, then corrected
    priors[120] += [0.0, -1.0, 0.0]  # and a single 1 m jump
    found = find_disagreements(stamps, _to_sfm(truth, rng), priors)
    assert found.segments == []
    assert not found.isolated.any()
    assert found.map_from_sfm.scale == pytest.approx(1 / 0.3, rel=0.01)
    assert not found.fit_inliers[30:50].any() and found.fit_inliers[:30].all()


def test_a_single_frame_far_off_is_isolated_not_a_fold():
    rng = np.random.default_rng(2)
    stamps, truth = _walk()
    sfm = _to_sfm(truth, rng)
    priors = truth + rng.normal(0, 0.05, truth.shape)
    priors[77] += [4.0, 3.0, 0.0]  # one bad registration (or a prior glitch), 5 m off
    priors[140:142] += [0.0, 3.0, 0.0]  # two more in a row: still fewer than min_frames
    found = find_disagreements(stamps, sfm, priors)
    assert found.segments == []
    assert np.flatnonzero(found.isolated).tolist() == [77, 140, 141]
    # with a lower bar those two make a segment, the single frame does not
    found = find_disagreements(stamps, sfm, priors, min_frames=2)
    assert [(s.start_ns, s.frames) for s in found.segments] == [(stamps[140], 2)]
    assert np.flatnonzero(found.isolated).tolist() == [77]


def test_frames_in_any_order_give_the_same_segments():
    rng = np.random.default_rng(3)
    stamps, truth = _walk()
    folded = truth.copy()
    folded[150:190, :2] = [16.0, 10.0] - folded[150:190, :2]
    sfm, priors = _to_sfm(folded, rng), truth + rng.normal(0, 0.05, truth.shape)
    perm = rng.permutation(len(stamps))
    found = find_disagreements(stamps[perm], sfm[perm], priors[perm])
    assert [(s.start_ns, s.end_ns) for s in found.segments] == [(stamps[150], stamps[189])]


def test_too_few_frames_or_mismatched_arrays_are_refused():
    stamps, truth = _walk(10)
    with pytest.raises(AlignmentError, match="at least 3"):
        find_disagreements(stamps[:2], truth[:2], truth[:2])
    with pytest.raises(AlignmentError, match="one of each per frame"):
        find_disagreements(stamps, truth, truth[:-1])
    bad = truth.copy()
    bad[3, 0] = np.nan
    with pytest.raises(AlignmentError, match="non-finite"):
        find_disagreements(stamps, bad, truth)
