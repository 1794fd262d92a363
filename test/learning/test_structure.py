"""The structure-aware network's geometry: weighted Kabsch, covariance, cells, PnP, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from camera_pose_ros.learning.backbones import build_trunk
from camera_pose_ros.learning.structure import (
    StructureAwareNet,
    StructureLoss,
    cell_centres,
    intrinsics_at,
    kabsch_covariance,
    kabsch_numpy,
    pnp_pose,
    rotmat_to_quat,
    sample_at,
    weighted_kabsch,
)


def _pose(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return Rotation.random(random_state=seed).as_matrix(), rng.normal(0, 3, 3)


def test_kabsch_returns_the_exact_pose_and_a_proper_rotation() -> None:
    rng = np.random.default_rng(0)
    for seed in range(5):
        rot, t = _pose(seed)
        cam = rng.normal(0, 2, (50, 3)) + [0, 0, 4]
        scene = cam @ rot.T + t
        w = rng.uniform(0.1, 1.0, 50)
        r, tt = weighted_kabsch(torch.tensor(cam)[None], torch.tensor(scene)[None],
                                torch.tensor(w)[None])
        assert np.allclose(r[0].numpy(), rot, atol=1e-6)
        assert np.allclose(tt[0].numpy(), t, atol=1e-6)
        assert np.linalg.det(r[0].numpy()) == pytest.approx(1.0, abs=1e-9)


def test_kabsch_weights_ignore_outliers_with_zero_weight() -> None:
    rng = np.random.default_rng(1)
    rot, t = _pose(3)
    cam = rng.normal(0, 2, (40, 3)) + [0, 0, 4]
    scene = cam @ rot.T + t
    scene[:10] += rng.normal(0, 5, (10, 3))  # gross outliers
    w = np.ones(40)
    w[:10] = 0.0
    r, tt = kabsch_numpy(cam, scene, w)
    assert np.allclose(r, rot, atol=1e-5) and np.allclose(tt, t, atol=1e-5)
    r_bad, _ = kabsch_numpy(cam, scene, np.ones(40))
    assert not np.allclose(r_bad, rot, atol=1e-3)  # the weights are what saved it


def test_kabsch_reflection_is_corrected() -> None:
    """Points that a reflection fits best still give a rotation (det +1)."""
    rng = np.random.default_rng(2)
    cam = rng.normal(0, 1, (30, 3))
    scene = cam * np.array([1.0, 1.0, -1.0])  # a mirror image
    r, _ = kabsch_numpy(cam, scene, np.ones(30))
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("case", ["zero_weights", "collinear", "coincident", "nan_free"])
def test_kabsch_degenerate_inputs_never_give_nan(case: str) -> None:
    rng = np.random.default_rng(3)
    cam = rng.normal(0, 1, (20, 3))
    w = np.ones(20)
    if case == "zero_weights":
        w[:] = 0.0
    elif case == "collinear":
        cam = np.outer(np.linspace(-1, 1, 20), [1.0, 2.0, 0.5])
    elif case == "coincident":
        cam = np.tile([[0.5, 0.1, 2.0]], (20, 1))
    scene = cam + 1.0
    cam_t = torch.tensor(cam, requires_grad=True)
    r, t = weighted_kabsch(cam_t[None], torch.tensor(scene)[None], torch.tensor(w)[None])
    assert torch.isfinite(r).all() and torch.isfinite(t).all()
    assert np.linalg.det(r[0].detach().numpy()) == pytest.approx(1.0, abs=1e-6)
    (r.sum() + t.sum()).backward()
    assert torch.isfinite(cam_t.grad).all()
    cov = kabsch_covariance(cam, scene, w, r[0].detach().numpy(), t[0].detach().numpy())
    assert np.all(np.isfinite(cov))


def test_gradients_flow_through_kabsch_to_every_input() -> None:
    rng = np.random.default_rng(4)
    rot, t = _pose(4)
    cam = torch.tensor(rng.normal(0, 2, (1, 30, 3)), requires_grad=True)
    scene = torch.tensor(cam.detach().numpy() @ rot.T + t + rng.normal(0, 0.05, (1, 30, 3)),
                         requires_grad=True)
    w = torch.tensor(rng.uniform(0.2, 1, (1, 30)), requires_grad=True)
    r, tt = weighted_kabsch(cam, scene, w)
    loss = (r - torch.tensor(rot)[None]).abs().sum() + (tt - torch.tensor(t)[None]).abs().sum()
    loss.backward()
    for g in (cam.grad, scene.grad, w.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # the gradient is the derivative: a finite difference of the loss agrees
    assert torch.autograd.gradcheck(
        lambda s: weighted_kabsch(cam.detach(), s, w.detach())[1], (scene.detach().clone()
                                                                     .requires_grad_(),))


def test_kabsch_covariance_grows_with_residuals_and_fits_the_spread() -> None:
    rng = np.random.default_rng(5)
    rot, t = _pose(5)
    cam = rng.normal(0, 1.5, (200, 3)) + [0, 0, 4]
    sds = []
    for noise in (0.01, 0.1):
        centres = []
        for k in range(60):
            scene = cam @ rot.T + t + np.random.default_rng(k).normal(0, noise, cam.shape)
            r, tt = kabsch_numpy(cam, scene, np.ones(len(cam)))
            centres.append(tt)
        cov = kabsch_covariance(cam, scene, np.ones(len(cam)), r, tt)
        assert cov.shape == (6, 6) and np.allclose(cov, cov.T)
        # independent noise: the predicted spread of the centre matches the observed one
        observed = np.std(np.array(centres), axis=0).mean()
        predicted = np.sqrt(np.diag(cov)[:3]).mean()
        assert 0.6 < predicted / observed < 1.6
        sds.append(predicted)
    assert sds[1] > 5 * sds[0]


def test_rotmat_to_quat_matches_scipy() -> None:
    rots = Rotation.random(200, random_state=6)
    q = rotmat_to_quat(torch.tensor(rots.as_matrix())).numpy()
    ref = rots.as_quat()[:, [3, 0, 1, 2]]
    ref *= np.where(ref[:, :1] < 0, -1, 1)
    assert np.allclose(np.abs((q * ref).sum(1)), 1.0, atol=1e-6)


def test_cells_sampling_and_intrinsics_scale_consistently() -> None:
    centres = cell_centres(2, 3)
    assert centres[0].tolist() == [3.5, 3.5] and centres[-1].tolist() == [19.5, 11.5]
    # sampling an output map at a cell centre returns that cell's value exactly
    grid = torch.arange(6, dtype=torch.float32).view(1, 1, 2, 3)
    got = sample_at(grid, centres[None], (16, 24))[0, :, 0]
    assert torch.allclose(got, torch.arange(6, dtype=torch.float32), atol=1e-5)
    # intrinsics normalised by the image size scale exactly to another size
    fx, fy, cx, cy = 500.0, 505.0, 319.5, 239.5
    norm = (fx / 640, fy / 480, (cx + 0.5) / 640, (cy + 0.5) / 480)
    assert intrinsics_at(norm, 480, 640) == pytest.approx((fx, fy, cx, cy))
    assert intrinsics_at(norm, 240, 320) == pytest.approx((fx / 2, fy / 2, 159.5, 119.5))


def test_pnp_recovers_the_pose_of_noisy_scene_coordinates() -> None:
    rng = np.random.default_rng(7)
    K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
    rot, centre = Rotation.from_euler("xyz", [100, 10, 30], degrees=True).as_matrix(), \
        np.array([2.0, 1.0, 1.5])
    px = np.stack(np.meshgrid(np.arange(4, 320, 8.0), np.arange(4, 240, 8.0)), -1).reshape(-1, 2)
    depth = rng.uniform(2, 6, len(px))
    cam = np.c_[(px - K[:2, 2]) / K[0, 0], np.ones(len(px))] * depth[:, None]
    scene = cam @ rot.T + centre + rng.normal(0, 0.01, cam.shape)
    scene[:100] += rng.normal(0, 2.0, (100, 3))  # a tenth gross outliers
    res = pnp_pose(scene, px, K)
    assert res.success and res.inliers > 0.8 * len(px)
    assert np.linalg.norm(res.centre - centre) < 0.02
    assert np.all(np.isfinite(res.covariance))
    bad = pnp_pose(np.full((20, 3), np.nan), px[:20], K)
    assert not bad.success and "finite" in bad.reason


def test_network_shapes_and_loss_fall_on_one_batch() -> None:
    torch.manual_seed(0)
    trunk, ch, _ = build_trunk("resnet18", "none")
    net = StructureAwareNet(trunk, ch, width=32, scene_mean=(4.0, 3.0, 1.5), scene_scale=2.0,
                            depth_range=(0.5, 8.0), intrinsics_norm=(0.8, 1.07, 0.5, 0.5))
    x = torch.rand(2, 3, 48, 64)
    out = net(x)
    assert out["scene"].shape == (2, 3, 6, 8) and out["depth"].shape == (2, 1, 6, 8)
    assert out["weights"].min() >= 0 and out["weights"].max() <= 1
    assert torch.allclose(torch.det(out["rot"]), torch.ones(2), atol=1e-5)
    d = out["depth"]
    assert d.min() >= 0.5 and d.max() <= 8.0
    # camera points lie on the cells' rays at the predicted depth
    assert torch.allclose(out["cam"][:, 2:3], d)
    batch = {"uv": torch.rand(2, 20, 2) * torch.tensor([63.0, 47.0]),
             "xyz": torch.rand(2, 20, 3) * 4, "depth": torch.rand(2, 20) * 3 + 1,
             "mask": torch.ones(2, 20, dtype=torch.bool),
             "rot": torch.eye(3).repeat(2, 1, 1), "t": torch.zeros(2, 3)}
    loss_fn = StructureLoss()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    first = None
    for _ in range(25):
        loss, parts = loss_fn(net(x), batch, (48, 64), with_pose=True)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        for p in net.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        opt.step()
    assert float(loss) < 0.7 * first
    assert set(parts) == {"scene_m", "depth_m", "rot_l1", "t_l1_m"}
    # the weighting network gets a gradient through the Kabsch step
    loss, _ = loss_fn(net(x), batch, (48, 64), with_pose=True)
    net.zero_grad()
    loss.backward()
    assert net.weighting[0].weight.grad.abs().sum() > 0
    # padded labels count for nothing
    batch["mask"][:, 10:] = False
    batch["xyz"][:, 10:] = 1e6
    loss_masked, _ = loss_fn(net(x), batch, (48, 64), with_pose=False)
    assert float(loss_masked) < 100


def test_kabsch_leaves_out_non_finite_points_and_fails_loudly_without_any() -> None:
    rng = np.random.default_rng(8)
    rot, t = _pose(8)
    cam = rng.normal(0, 2, (30, 3)) + [0, 0, 4]
    scene = cam @ rot.T + t
    scene[:5] = np.nan
    w = np.ones(30)
    w[5] = np.inf
    r, tt = kabsch_numpy(cam, scene, w)
    assert np.allclose(r, rot, atol=1e-6) and np.allclose(tt, t, atol=1e-6)
    r, tt = kabsch_numpy(cam, np.full_like(scene, np.nan), w)
    assert np.all(np.isnan(r)) and np.all(np.isnan(tt))


def test_a_distorted_lens_is_undone_for_camera_points_and_pnp() -> None:
    from camera_pose_ros.camera import PinholeCamera

    dist = (-0.25, 0.07, 0.001, -0.001)
    trunk, ch, _ = build_trunk("resnet18", "none")
    norm = (260.0 / 320, 261.0 / 240, 160.0 / 320, 120.0 / 240)
    net = StructureAwareNet(trunk, ch, width=16, intrinsics_norm=norm, distortion=dist)
    rays = net.rays(6, 8, (48, 64)).reshape(3, -1).T.double().numpy()
    lens = PinholeCamera(64, 48, *intrinsics_at(norm, 48, 64), dist)
    # each ray, distorted and projected, lands on its cell's centre
    px = lens.distort_normalized(rays[:, :2]) * [lens.fx, lens.fy] + [lens.cx, lens.cy]
    assert np.allclose(px, cell_centres(6, 8).numpy(), atol=1e-3)
    # PnP through the same lens recovers the pose of exact scene coordinates
    big = PinholeCamera(320, 240, 260.0, 261.0, 159.5, 119.5, dist)
    rot = Rotation.from_euler("xyz", [95, 5, 20], degrees=True).as_matrix()
    centre = np.array([1.0, 2.0, 1.4])
    grid = np.stack(np.meshgrid(np.arange(4, 320, 16.0), np.arange(4, 240, 16.0)), -1)
    grid = grid.reshape(-1, 2)
    xy = big.undistort_normalized((grid - [big.cx, big.cy]) / [big.fx, big.fy])
    depth = np.random.default_rng(9).uniform(2, 5, len(grid))
    scene = (np.c_[xy, np.ones(len(xy))] * depth[:, None]) @ rot.T + centre
    res = pnp_pose(scene, grid, big.matrix(), distortion=dist)
    assert res.success and np.linalg.norm(res.centre - centre) < 1e-3
    plain = pnp_pose(scene, grid, big.matrix())  # ignoring the lens costs accuracy
    assert not plain.success or np.linalg.norm(plain.centre - centre) > 1e-3
