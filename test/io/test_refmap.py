"""camera_pose_ros.io.refmap: the refinement map file round-trips and refuses other formats."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.errors import RefinementError
from camera_pose_ros.io.refmap import (
    REFINEMENT_MAP,
    RefinementMap,
    load_refinement_map,
    save_refinement_map,
)
from test.conftest import small_refinement_map


def _map() -> RefinementMap:
    return small_refinement_map(distortion=(0.1, -0.02, 0.0, 0.001), alignment_rms_m=0.012)


def test_a_saved_map_loads_back_equal(tmp_path):
    m = _map()
    save_refinement_map(tmp_path / REFINEMENT_MAP, m)
    back = load_refinement_map(tmp_path)  # a directory means DIR/refinement_map.npz
    assert back.camera == m.camera and back.alignment_rms_m == pytest.approx(0.012)
    assert list(back.names) == list(m.names)
    for name in ("map_from_cam", "points", "offsets", "obs_point", "obs_desc", "global_desc"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    pts, desc = back.observations(np.array([2]))
    np.testing.assert_array_equal(pts, [3, 4])
    np.testing.assert_array_equal(desc, m.obs_desc[3:5])


def test_missing_unreadable_and_other_format_maps_are_refused(tmp_path):
    with pytest.raises(RefinementError, match="refinement-map"):
        load_refinement_map(tmp_path)
    (tmp_path / REFINEMENT_MAP).write_bytes(b"garbage")
    with pytest.raises(RefinementError, match="cannot read"):
        load_refinement_map(tmp_path)
    save_refinement_map(tmp_path / REFINEMENT_MAP, _map())
    with np.load(tmp_path / REFINEMENT_MAP) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["format"] = np.array(99)
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(RefinementError, match="format 99"):
        load_refinement_map(tmp_path / "old.npz")
