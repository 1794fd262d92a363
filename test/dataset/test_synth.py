"""The synthetic building: deterministic, exact poses, valid bags, floor plan, control points."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.synth import (
    SCENARIOS,
    Building,
    BuildingSpec,
    Renderer,
    path_trajectory,
    walk_trajectory,
    write_synthetic_building,
)
from camera_pose_ros.errors import ConfigError
from camera_pose_ros.geometry import look_at_rotation, pose_matrix
from camera_pose_ros.io.bags import (
    iter_bag_depth,
    iter_bag_images,
    list_topics,
    read_camera_info,
)
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import read_poses

pytestmark = pytest.mark.slow  # renders buildings: seconds per test


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_building(out, seed=3, frames=12, query_frames=4, width=96, height=72,
                             progress=False)
    return out


def test_layout_matches_architecture(small_synth):
    for name in ("mapping", "query", "gt_mapping.csv", "gt_query.csv", "control_points.csv",
                 "floorplan.yaml", "floorplan.pgm"):
        assert (small_synth / name).exists(), name
    camera = {"/camera/image_raw": "sensor_msgs/msg/Image",
              "/camera/camera_info": "sensor_msgs/msg/CameraInfo"}
    # the mapping walk carries the synthetic robot's own localization; the query walk not
    assert list_topics(small_synth / "mapping") == {
        **camera, "/tf": "tf2_msgs/msg/TFMessage", "/tf_static": "tf2_msgs/msg/TFMessage",
        "/amcl_pose": "geometry_msgs/msg/PoseWithCovarianceStamped"}
    assert list_topics(small_synth / "query") == camera


def test_bag_frames_match_ground_truth(small_synth):
    gt = read_poses(small_synth / "gt_mapping.csv")
    frames = list(iter_bag_images(small_synth / "mapping"))
    assert len(frames) == len(gt) == 12
    assert np.allclose([f.stamp for f in frames], gt.stamps, atol=1e-9)
    assert frames[0].image_rgb.shape == (72, 96, 3)
    assert np.all(np.diff(gt.stamps) > 0.09)
    cam = read_camera_info(small_synth / "mapping", "/camera/camera_info")
    assert cam.width == 96 and cam.fx == pytest.approx(0.82 * 96)
    # the query walk is another path: never closer than 5 cm to a mapping pose
    q = read_poses(small_synth / "gt_query.csv")
    assert q.stamps.min() > gt.stamps.max()


def test_same_seed_same_images(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        write_synthetic_building(out, seed=5, frames=10, query_frames=1, width=64, height=48,
                                 progress=False)
    fa = list(iter_bag_images(a / "mapping"))
    fb = list(iter_bag_images(b / "mapping"))
    assert all(np.array_equal(x.image_rgb, y.image_rgb) for x, y in zip(fa, fb, strict=True))
    assert (a / "control_points.csv").read_text() == (b / "control_points.csv").read_text()


def test_control_points_are_mapping_poses(small_synth):
    gt = read_poses(small_synth / "gt_mapping.csv")
    with (small_synth / "control_points.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    for r in rows:
        i = int(np.argmin(np.abs(gt.stamps - float(r["stamp"]))))
        assert abs(gt.stamps[i] - float(r["stamp"])) < 1e-6
        d = np.linalg.norm(gt.positions_N3[i] - [float(r["x"]), float(r["y"]), float(r["z"])])
        assert d < 0.06  # 1 cm noise per axis


def test_floor_plan_walls_and_walkable_path(small_synth):
    plan = FloorPlan.load(small_synth / "floorplan.yaml")
    gt = read_poses(small_synth / "gt_mapping.csv")
    assert plan.is_walkable(gt.positions_N3[:, :2]).all()
    # the central block, the outer wall and outside the building are not walkable
    assert not plan.is_walkable(np.array([[8.0, 5.0], [0.0, 5.0], [-0.5, -0.5]])).any()
    again = tmp = small_synth / "copy.yaml"
    plan.save(tmp)
    assert np.array_equal(FloorPlan.load(again).occupancy, plan.occupancy)


def test_renderer_sees_nearest_wall():
    b = Building(BuildingSpec(seed=1))
    cam = PinholeCamera(64, 48, 50, 50, 31.5, 23.5)
    r = Renderer(b, cam)
    # looking at the central block from 1 m: the pixels are wall texture, not floor/ceiling
    pose = pose_matrix(look_at_rotation([0.0, 1.0, 0.0]), [8.0, 2.5, 1.4])
    img = r.render(pose)
    assert img.shape == (48, 64, 3) and img.std() > 10
    # an identical pose renders the identical image (no hidden randomness)
    assert np.array_equal(img, r.render(pose))


def test_renderer_depth_is_the_distance_to_the_surface_along_the_optical_axis(tmp_path):
    b = Building(BuildingSpec(seed=1))
    cam = PinholeCamera(64, 48, 50, 50, 31.5, 23.5, (-0.2, 0.05, 0.0, 0.0))
    r = Renderer(b, cam)
    rot = look_at_rotation([0.6, 0.8, -0.1])
    pose = pose_matrix(rot, [3.0, 2.0, 1.5])
    img, depth = r.render_with_depth(pose)
    assert np.array_equal(img, r.render(pose)) and depth.shape == (48, 64)
    # each pixel's ray, scaled by its depth, ends on the floor, the ceiling or a wall
    u, v = np.meshgrid(np.arange(64.0), np.arange(48.0))
    xy = cam.undistort_normalized(np.stack([(u - 31.5) / 50, (v - 23.5) / 50], -1))
    p_cam = np.concatenate([xy, np.ones((48, 64, 1))], -1) * depth[..., None]
    p = p_cam.reshape(-1, 3) @ rot.T + pose[:3, 3]
    gap = np.minimum(np.abs(p[:, 2]), np.abs(p[:, 2] - b.height))
    for wall in b.walls:
        along = p[:, 1 - wall.axis]
        on = (along >= wall.lo - 1e-3) & (along <= wall.hi + 1e-3)
        gap = np.where(on, np.minimum(gap, np.abs(p[:, wall.axis] - wall.c)), gap)
    assert gap.max() < 2e-3
    # synth --depth: the mapping bag carries it as a 16UC1 image at each frame's stamp
    write_synthetic_building(tmp_path / "s", seed=5, frames=10, query_frames=1, width=64,
                             height=48, progress=False, depth_topic="/camera/depth/image_raw")
    assert list_topics(tmp_path / "s" / "mapping")["/camera/depth/image_raw"] == (
        "sensor_msgs/msg/Image")
    assert "/camera/depth/image_raw" not in list_topics(tmp_path / "s" / "query")
    frames = list(iter_bag_images(tmp_path / "s" / "mapping"))
    depths = list(iter_bag_depth(tmp_path / "s" / "mapping", "/camera/depth/image_raw"))
    assert [d[0] for d in depths] == [f.stamp_ns for f in frames]
    assert all(d.shape == (48, 64) and np.isfinite(d).all() and d.min() > 0.05
               for _, d in depths)


def test_bad_options():
    with pytest.raises(ConfigError):
        Building(BuildingSpec(scale=0.1))
    with pytest.raises(ConfigError):
        write_synthetic_building("/nonexistent/never", frames=2, progress=False)


def _travel_angles_deg(poses: list[np.ndarray]) -> np.ndarray:
    """Angle between each camera's horizontal viewing direction and its direction of travel."""
    pos = np.array([p[:3, 3] for p in poses])
    travel = np.gradient(pos[:, :2], axis=0)
    view = np.array([p[:3, 2][:2] for p in poses])
    cos = np.einsum("ni,ni->n", travel, view) / (
        np.linalg.norm(travel, axis=1) * np.linalg.norm(view, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_offpath_query_leaves_the_mapping_lanes_and_turns_away():
    """The offpath scenario's query walk is a new lane, turned away from the direction of
    travel further than the mapping walk ever looks, at other heights."""
    b = Building(BuildingSpec(seed=1))
    mapping = walk_trajectory(b, 300, loops=2.0, offsets=(0.35, -0.35))
    query = walk_trajectory(b, 120, loops=1.0, phase=0.37, start_fraction=0.05,
                            **SCENARIOS["offpath"]["query"])
    map_xy = np.array([p[:3, 3][:2] for p in mapping])
    q_xy = np.array([p[:3, 3][:2] for p in query])
    nearest = np.min(np.linalg.norm(q_xy[:, None] - map_xy[None], axis=2), axis=1)
    assert np.median(nearest) > 0.3, np.median(nearest)
    turned_map, turned_query = _travel_angles_deg(mapping), _travel_angles_deg(query)
    assert np.median(turned_query) > np.median(turned_map) + 10
    assert np.mean(turned_query > np.percentile(turned_map, 75)) > 0.6
    heights = np.array([p[2, 3] for p in query])
    assert heights.max() - heights.min() > 0.4
    # the walk stays in walkable space (never inside a wall or block)
    plan = b.floor_plan()
    assert plan.is_walkable(q_xy).all()


def test_lookalike_building_repeats_its_posters():
    """The lookalike building hangs the same poster (same pixels, up to the wall's
    brightness) in several places; the standard one never does."""
    def repeats(spec: BuildingSpec) -> int:
        b = Building(spec)
        crops = [b.atlas[v0 + 4:v1 - 4, u0 + 4:u1 - 4].astype(float)
                 for u0, v0, u1, v1, _ in b.posters]
        found = 0
        for i in range(len(crops)):
            for j in range(i + 1, len(crops)):
                a, c = crops[i], crops[j]
                if a.shape != c.shape or a.size < 300:
                    continue
                r = np.corrcoef(a.ravel(), c.ravel())[0, 1]
                found += bool(r > 0.99)
        return found

    assert repeats(BuildingSpec(seed=4, lookalike_posters=3)) >= 10
    assert repeats(BuildingSpec(seed=4)) == 0


def test_twin_corridors_look_alike_from_the_turned_place():
    """In the twin building the wall beside the near corridor, seen from there, and its
    twin seen from the place turned 180 degrees about the floor's centre are the same
    picture; in the lookalike building they are not."""
    camera = PinholeCamera(160, 120, 131.0, 131.0, 79.5, 59.5)

    def view(building: Building, x: float, y: float, yaw: float) -> np.ndarray:
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        pose = pose_matrix(look_at_rotation(forward), np.array([x, y, 1.5]))
        return Renderer(building, camera).render(pose).astype(float)

    def walls_differ(spec: BuildingSpec) -> float:
        b = Building(spec)
        near = view(b, 6.0, 1.5, 0.6)  # the central block's wall on the left
        far = view(b, 16.0 - 6.0, 10.0 - 1.5, 0.6 + np.pi)
        return float(np.abs(near - far)[40:80, :80].mean())

    twin = walls_differ(BuildingSpec(seed=4, lookalike_posters=3, twin_corridors=True))
    lookalike = walls_differ(BuildingSpec(seed=4, lookalike_posters=3))
    assert twin < 1.0 and lookalike > 30.0
    assert SCENARIOS["twin"]["building"]["twin_corridors"]


def _view(building: Building, camera: PinholeCamera, x: float, y: float, yaw: float
          ) -> np.ndarray:
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    pose = pose_matrix(look_at_rotation(forward), np.array([x, y, 1.5]))
    return Renderer(building, camera).render(pose).astype(float)


def test_rooms_layout_has_doors_walls_and_a_tour_through_every_room():
    b = Building(BuildingSpec(seed=2, rooms=3))
    assert len(b.rooms) == 3 and b.width == 12.0 and len(b.blocks) == 1  # one closed slot
    plan = b.floor_plan()
    y_south, y_north = b.corridor
    for room in b.rooms:
        y_wall = y_south if room.side < 0 else y_north
        door_x = sum(room.door) / 2
        assert plan.is_walkable(np.array([[door_x, y_wall]])).all()  # the doorway
        beside = np.array([[room.door[0] - 0.4, y_wall], [room.door[1] + 0.4, y_wall]])
        assert not plan.is_walkable(beside).any()  # the wall either side of it
    assert not plan.is_walkable(np.array([[6.0, 2.5], [9.0, 10.0]])).any()  # partition, block
    mapping = b.room_tour(inset=1.2)
    query = b.room_tour(inset=1.7, lane=0.4, reverse=True)
    for tour in (mapping, query):
        assert plan.is_walkable(tour).all()
        for room in b.rooms:  # goes round inside every room
            inside = ((tour[:, 0] > room.x0 + 1) & (tour[:, 0] < room.x1 - 1)
                      & (tour[:, 1] > room.y0 + 1) & (tour[:, 1] < room.y1 - 1))
            assert inside.sum() * 0.02 > 8.0
    # the query tour walks other lines than the mapping tour inside the rooms
    in_rooms = np.abs(query[:, 1] - sum(b.corridor) / 2) > 2.0
    gap = np.min(np.linalg.norm(query[in_rooms][::5, None] - mapping[None, ::5], axis=2), 1)
    assert np.median(gap) > 0.3
    poses = path_trajectory(mapping, 50)
    assert len(poses) == 50 and np.allclose(poses[0][:2, 3], mapping[0])
    with pytest.raises(ConfigError, match="rooms"):
        Building(BuildingSpec(rooms=1))
    with pytest.raises(ConfigError, match="rooms"):
        Building(BuildingSpec(seed=2)).room_tour()


def test_rooms_of_one_design_look_alike_inside_and_others_do_not():
    """Seen from the same place in each, two rooms of one design show the same walls (up to
    the 6 cm by which an outer wall and a partition's face differ); rooms of their own
    design do not."""
    camera = PinholeCamera(160, 120, 131.0, 131.0, 79.5, 59.5)

    def rooms_differ(designs: int) -> float:
        b = Building(BuildingSpec(seed=4, rooms=4, room_designs=designs))
        south = sorted((r for r in b.rooms if r.side < 0), key=lambda r: r.x0)
        views = [_view(b, camera, r.x0 + 3.0, 3.0, -np.pi / 2 + 0.4) for r in south]
        return float(np.abs(views[0] - views[1])[20:90].mean())  # walls, not floor/ceiling

    assert rooms_differ(1) < 8.0 and rooms_differ(0) > 30.0


def test_culling_walls_beside_the_image_changes_no_pixel():
    b = Building(BuildingSpec(seed=5, rooms=4))
    camera = PinholeCamera(96, 72, 60.0, 60.0, 47.5, 35.5, (-0.25, 0.06, 0.0, 0.0))
    rng = np.random.default_rng(0)
    tour = b.room_tour()
    poses = [pose_matrix(look_at_rotation([np.cos(a), np.sin(a), rng.uniform(-0.3, 0.3)]),
                         np.array([*tour[i], 1.5]))
             for i, a in zip(rng.integers(0, len(tour), 12), rng.uniform(0, 2 * np.pi, 12),
                             strict=True)]
    culled = Renderer(b, camera)
    every = Renderer(b, camera, cull=False)
    for pose in poses:
        assert np.array_equal(culled.render_with_depth(pose)[1], every.render_with_depth(pose)[1])


def test_floors_sharing_a_design_seed_have_the_same_rooms_behind_other_corridors():
    def patches(b: Building) -> tuple[dict, list]:
        rooms, corridor = {}, []
        h = int(np.ceil(b.height * b.spec.texels_per_metre))
        for w in b.walls:
            u, v = int(w.atlas_u0), int(w.atlas_v0)
            patch = b.atlas[v:v + h, u:u + int((w.hi - w.lo) * b.spec.texels_per_metre)]
            if w.design is not None:
                rooms[(w.design, round(w.lo, 3), round(w.hi, 3))] = patch
            elif w.hi - w.lo > 1.0:
                corridor.append(patch)
        return rooms, corridor

    first, second, own = (Building(BuildingSpec(rooms=3, seed=s, design_seed=d, scale=0.5))
                          for s, d in ((0, 7), (1, 7), (1, -1)))
    assert [r.door for r in first.rooms] == [r.door for r in second.rooms]
    assert [r.door for r in own.rooms] != [r.door for r in first.rooms]
    rooms1, corr1 = patches(first)
    rooms2, corr2 = patches(second)
    rooms3, _ = patches(own)
    assert rooms1.keys() == rooms2.keys() and len(rooms1) >= 10
    assert all(np.array_equal(rooms1[k], rooms2[k]) for k in rooms1)
    assert not any(np.array_equal(rooms1[k], rooms3[k]) for k in rooms1 if k in rooms3)
    assert corr1 and not any(np.array_equal(a, b) for a, b in zip(corr1, corr2, strict=True))


def test_a_lift_cabin_looks_the_same_on_every_floor_and_every_walk_rides_it():
    """The cabin at the corridor's west end: seen from inside it, two floors (other seeds,
    other corridors) give the same image; the walks start and end in it; the floor plan
    has its cross wall and door; rooms keep their doors clear of it."""
    camera = PinholeCamera(160, 120, 131.0, 131.0, 79.5, 59.5)
    floors = [Building(BuildingSpec(seed=s, rooms=4, lift=True)) for s in (0, 101)]
    x0, y0, x1, y1 = floors[0].lift
    assert floors[1].lift == (x0, y0, x1, y1) and x0 == 0.0 and x1 == pytest.approx(1.74)
    yc = (y0 + y1) / 2

    def differ(x: float, y: float, yaw: float) -> float:
        a, b = (_view(f, camera, x, y, yaw) for f in floors)
        return float(np.abs(a - b).mean())

    assert differ(1.2, yc, np.pi) < 1.0  # the cabin's back wall, floor and ceiling
    assert differ(0.9, yc - 0.3, np.pi / 2) < 1.0  # its side wall
    assert differ(8.0, yc, 0.0) > 30.0  # the corridors differ
    plan = floors[0].floor_plan()
    assert plan.is_walkable(np.array([[x1 / 2, yc], [x1 + 0.06, yc]])).all()  # cabin, door
    assert not plan.is_walkable(np.array([[x1 + 0.06, y0 + 0.2], [x1 + 0.06, y1 - 0.2]])).any()
    for b in floors:
        assert min(r.door[0] for r in b.rooms) > x1 + 0.3
        for tour in (b.room_tour(), b.room_tour(inset=1.7, lane=0.4, reverse=True)):
            assert b.floor_plan().is_walkable(tour).all()
            assert tour[0][0] < x1 and tour[-1][0] < x1  # starts and ends in the cabin
            cabin = (tour[:, 0] < x1) & (tour[:, 1] > y0) & (tour[:, 1] < y1)
            assert 0 < cabin.mean() < 0.05
    # without a lift, nothing changes: the same walls and doors as before the option
    plain, lifted = (Building(BuildingSpec(seed=2, rooms=3, lift=v)) for v in (False, True))
    assert plain.lift is None and len(lifted.walls) == len(plain.walls) + 8
    assert plain.room_tour()[0][0] == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="a lift needs the rooms layout"):
        write_synthetic_building("unused", lift=True, progress=False)
