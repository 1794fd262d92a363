"""camera_pose_ros.io.refmap: the compact refinement map round-trips memory-mapped, keeps one
faithful descriptor per point, reads format-1 maps and refuses other formats."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from camera_pose_ros.errors import RefinementError
from camera_pose_ros.io.refmap import (
    REFINEMENT_MAP,
    RefinementMap,
    compact_descriptors,
    load_refinement_map,
    load_refinement_map_frames,
    save_refinement_map,
)
from test.conftest import small_refinement_map

_ARRAYS = ("map_from_cam", "points", "offsets", "frame_points", "desc_codes", "desc_mean",
           "desc_basis", "desc_scale", "global_desc")


def _map() -> RefinementMap:
    return small_refinement_map(distortion=(0.1, -0.02, 0.0, 0.001), alignment_rms_m=0.012)


def test_a_saved_map_loads_back_equal_and_memory_mapped(tmp_path):
    m = _map()
    save_refinement_map(tmp_path / REFINEMENT_MAP, m)
    back = load_refinement_map(tmp_path)  # a directory means DIR/refinement_map.npz
    assert back.camera == m.camera and back.alignment_rms_m == pytest.approx(0.012)
    assert list(back.names) == list(m.names)
    for name in _ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    assert isinstance(back.desc_codes, np.memmap) and isinstance(back.frame_points, np.memmap)
    assert not isinstance(load_refinement_map(tmp_path, mmap=False).desc_codes, np.memmap)
    pts, desc = back.observations(np.array([2, 1]))  # the union of the frames' points
    np.testing.assert_array_equal(pts, [2, 3, 4])
    np.testing.assert_allclose(desc, m.descriptors(np.array([2, 3, 4])), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    names, poses = load_refinement_map_frames(tmp_path / REFINEMENT_MAP)
    assert list(names) == list(m.names) and np.array_equal(poses, m.map_from_cam)


def _tracks(rng: np.random.Generator, n_points: int, per_point: int, noise: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SIFT-like uint8 descriptors: each point's observations are noisy copies of its own."""
    true = rng.gamma(0.6, 30.0, (n_points, 128))
    true *= 512 / np.linalg.norm(true, axis=1, keepdims=True)
    obs_point = np.repeat(np.arange(n_points), per_point)
    obs = true[obs_point] + rng.normal(0, noise, (len(obs_point), 128))
    return obs_point, np.clip(np.round(obs), 0, 255).astype(np.uint8), true


def test_one_compressed_descriptor_per_point_still_finds_its_point():
    rng = np.random.default_rng(0)
    obs_point, obs_desc, true = _tracks(rng, 400, 5, noise=6.0)
    codes, mean, basis, scale = compact_descriptors(obs_point, obs_desc, 400, dims=64)
    assert codes.shape == (400, 64) and codes.dtype == np.int8 and basis.shape == (128, 64)
    m = small_refinement_map()
    m.desc_codes, m.desc_mean, m.desc_basis, m.desc_scale = codes, mean, basis, scale
    decoded = m.descriptors(np.arange(400))
    unit = true / np.linalg.norm(true, axis=1, keepdims=True)
    cos = np.sum(decoded * unit, axis=1)
    assert np.median(cos) > 0.9
    query = true + rng.normal(0, 6.0, true.shape)  # a new observation of every point
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    assert np.mean(np.argmax(query @ decoded.T, axis=1) == np.arange(400)) > 0.98
    # a point's descriptor is one of its observations (the medoid), never its outlier
    track = np.vstack([obs_desc[:5], np.full((1, 128), 255, np.uint8)])  # point 0 + outlier
    pair = np.vstack([track, obs_desc[5:10]])  # a second point: PCA needs some spread
    c2, mean2, basis2, scale2 = compact_descriptors(np.repeat([0, 1], [6, 5]), pair, 2,
                                                    dims=128)
    back = (c2[0] * scale2) @ basis2.T + mean2
    back /= np.linalg.norm(back)
    unit_track = track / np.linalg.norm(track.astype(float), axis=1, keepdims=True)
    dist = np.linalg.norm(unit_track - back, axis=1)
    assert np.argmin(dist) < 5 and dist.min() < 0.01 and dist[5] > 0.1
    with pytest.raises(RefinementError, match="1 to 128"):
        compact_descriptors(obs_point, obs_desc, 400, dims=0)


def test_a_format_1_map_is_compacted_on_load_with_a_warning(tmp_path, caplog):
    m = _map()
    rng = np.random.default_rng(1)
    obs_point, obs_desc, _ = _tracks(rng, 5, 2, noise=3.0)
    arrays = dict(format=np.array(1), names=m.names, map_from_cam=m.map_from_cam,
                  camera=np.array([320, 240, 260.0, 261.0, 159.5, 119.5]),
                  camera_distortion=np.array(m.camera.distortion), points=m.points.astype(float),
                  offsets=np.array([0, 4, 6, 10]), obs_point=obs_point, obs_desc=obs_desc,
                  vocabulary=m.vocabulary, idf=m.idf, global_desc=m.global_desc,
                  alignment_rms_m=np.array(0.012))
    np.savez(tmp_path / "old.npz", **arrays)
    with caplog.at_level(logging.WARNING):
        old = load_refinement_map(tmp_path / "old.npz")
    assert "format-1" in caplog.text and "rebuild" in caplog.text
    assert old.desc_codes.shape[0] == 5 and list(old.frame_points) == list(obs_point)
    pts, desc = old.observations(np.array([0]))
    np.testing.assert_array_equal(pts, [0, 1])
    unit = obs_desc[[0, 2]] / np.linalg.norm(obs_desc[[0, 2]], axis=1, keepdims=True)
    assert np.all(np.sum(desc * unit, axis=1) > 0.95)


def test_missing_unreadable_incomplete_and_other_format_maps_are_refused(tmp_path):
    with pytest.raises(RefinementError, match="refinement-map"):
        load_refinement_map(tmp_path)
    (tmp_path / REFINEMENT_MAP).write_bytes(b"garbage")
    with pytest.raises(RefinementError, match="cannot read"):
        load_refinement_map(tmp_path)
    save_refinement_map(tmp_path / REFINEMENT_MAP, _map())
    with np.load(tmp_path / REFINEMENT_MAP) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "other.npz", **{**arrays, "format": np.array(99)})
    with pytest.raises(RefinementError, match="format 99"):
        load_refinement_map(tmp_path / "other.npz")
    del arrays["desc_codes"]
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(RefinementError, match="lacks desc_codes"):
        load_refinement_map(tmp_path / "partial.npz")
    np.savez_compressed(tmp_path / "packed.npz", **{**arrays, "desc_codes": _map().desc_codes})
    assert not isinstance(load_refinement_map(tmp_path / "packed.npz").desc_codes, np.memmap)
    (tmp_path / "cut.npz").write_bytes((tmp_path / REFINEMENT_MAP).read_bytes()[:3000])
    with pytest.raises(RefinementError, match="cannot read"):
        load_refinement_map(tmp_path / "cut.npz")
