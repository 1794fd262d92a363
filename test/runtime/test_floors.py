"""Several floors: ``synth --floors``, and the floor recognised by each floor's own map.

Uses the session's two-floor building (conftest ``floors_building``: real SfM per floor);
the query walks are never part of a map.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.io.bags import iter_bag_images
from camera_pose_ros.io.floors import FLOORS_FILE, FloorSpec, load_floors
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.io.refmap import REFINEMENT_MAP, load_refinement_map
from camera_pose_ros.runtime.floors import FloorSet, recognise_floor
from camera_pose_ros.runtime.refine import Refiner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def refiners(floors_building) -> dict[str, Refiner]:
    _, datas = floors_building
    return {str(f): Refiner(load_refinement_map(d / REFINEMENT_MAP)) for f, d in enumerate(datas)}


def test_synth_floors_writes_each_floor_and_the_floors_file(floors_building, sfm_building):
    root, _ = floors_building
    synth0, _ = sfm_building
    floors = load_floors(root / FLOORS_FILE)
    assert [(f.id, f.elevation, f.frame_id) for f in floors] == [
        ("0", 0.0, "map_0"), ("1", 3.2, "map_1")]
    assert all(f.floorplan_yaml and f.model_path == "" for f in floors)
    # floor 0 is the single-floor building of the same options; floor 1 is another floor
    assert (root / "floor_0" / "gt_mapping.csv").read_text() == (
        synth0 / "gt_mapping.csv").read_text()
    first = next(iter_bag_images(root / "floor_0" / "mapping")).image_rgb
    other = next(iter_bag_images(root / "floor_1" / "mapping")).image_rgb
    assert np.abs(first.astype(int) - other).mean() > 20
    # one floor's walks after the other's
    q0 = read_poses(root / "floor_0" / "gt_query.csv").stamps_ns
    m1 = read_poses(root / "floor_1" / "gt_mapping.csv").stamps_ns
    assert m1[0] > q0[-1]


def test_each_floors_query_walk_is_recognised_on_its_floor(floors_building, refiners):
    root, _ = floors_building
    for fid in refiners:
        gt = read_poses(root / f"floor_{fid}" / "gt_query.csv")
        frames = list(iter_bag_images(root / f"floor_{fid}" / "query"))
        verdicts = [recognise_floor(refiners, f.image_rgb) for f in frames]
        floors = [v.floor for v in verdicts]
        assert floors.count(fid) >= 0.75 * len(frames), (fid, floors)
        assert set(floors) <= {fid, None}, (fid, floors)  # never the other floor
        for v, i in zip(verdicts, range(len(frames)), strict=True):
            if v.floor == fid:
                assert v.estimate is not None and v.estimate.floor == fid and v.estimate.refined
                assert np.linalg.norm(v.estimate.position - gt.positions_N3[i]) < 0.1
                assert v.inliers[fid] > 3 * max(n for f, n in v.inliers.items() if f != fid)


def test_two_floors_that_fit_alike_give_no_floor(floors_building, refiners):
    root, _ = floors_building
    twins = {"a": refiners["0"], "b": refiners["0"]}
    frame = next(iter_bag_images(root / "floor_0" / "query")).image_rgb
    v = recognise_floor(twins, frame)
    assert v.floor is None and v.estimate is None
    assert "both fit" in v.reason and v.inliers["a"] == v.inliers["b"] > 0
    # an image of no floor: every floor's reason is given
    v = recognise_floor(refiners, np.full((240, 320, 3), 128, np.uint8))
    assert v.floor is None and "0:" in v.reason and "1:" in v.reason


def test_floor_set_keeps_the_floor_until_refinement_keeps_failing(refiners):
    specs = [FloorSpec(fid, 3.2 * k, f"map_{fid}") for k, fid in enumerate(refiners)]
    floors = FloorSet([(s, SimpleNamespace(refiner=refiners[s.id])) for s in specs],  # type: ignore[misc]
                      current=None, recheck_after=2)
    assert floors.current is None and floors.lost and floors.frame_id(None) == ""
    with pytest.raises(ConfigError, match="unknown floor 'x'; known: 0, 1"):
        floors.select("x")
    assert floors.select("1") and not floors.select("1")
    assert floors.frame_id(None) == "map_1" and floors.frame_id("0") == "map_0"
    floors.refined(False)
    assert not floors.lost
    floors.refined(True)
    floors.refined(False)
    assert not floors.lost
    floors.refined(False)
    assert floors.lost and floors.current == "1"  # lost: recognise again, the floor stays
    with pytest.raises(ConfigError, match="at least one floor"):
        FloorSet([])
