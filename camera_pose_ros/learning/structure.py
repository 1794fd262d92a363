"""The structure-aware direct pose network: scene coordinates + depth + weighted Kabsch.

After Blanton, Workman and Jacobs, "A Structure-Aware Method for Direct Pose Estimation":
a backbone cut at stride 8 feeds

- a scene-coordinate head (stride-1 3x3 convolutions, no upsampling): the map-frame point
  seen at each output cell, normalised by the training split's statistics;
- a depth head with a coarse (stride 16) and a fine (stride 8) output, sigmoids mapped to
  metres through the dataset's depth range (stored in the checkpoint);
- camera-frame points ``p = d K^-1 u`` at the output cells' centres (the checkpoint's
  intrinsics scaled to the input size);
- a weighting network (1x1 convolutions on the concatenated scene and camera points,
  sigmoid weights);
- a differentiable weighted Kabsch step (weighted centroids, SVD of the weighted
  cross-covariance, determinant correction): ``map_from_cam`` in one deterministic pass, no
  RANSAC, no sampling.

:func:`kabsch_covariance` turns the fit's weighted residuals into a 6x6 covariance (REP 103
order), calibrated on validation like the other models; :func:`pnp_pose` solves the pose
from the predicted scene coordinates with PnP + RANSAC instead (``--mode scr-pnp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["STRIDE", "StructureAwareNet", "weighted_kabsch", "kabsch_covariance",
           "cell_centres", "intrinsics_at", "sample_at", "pnp_pose", "PnPResult",
           "StructureLoss", "SOLVERS", "solve_poses", "rotmat_to_quat", "kabsch_numpy"]

#: output stride of the trunk: one scene coordinate per 8x8 input pixels
STRIDE = 8


def _conv(cin: int, cout: int, k: int = 3, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def intrinsics_at(intrinsics_norm: tuple[float, float, float, float] | torch.Tensor,
                  height: int, width: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels of a ``height`` x ``width`` image from intrinsics
    normalised by the image size (``fx / W``, ``fy / H``, ``(cx + 0.5) / W``,
    ``(cy + 0.5) / H``: the principal point measured from the image's corner, so that the
    scaling is exact; pixel centres at integers, as ROS)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics_norm)
    return fx * width, fy * height, cx * width - 0.5, cy * height - 0.5


def cell_centres(h: int, w: int, stride: int = STRIDE) -> torch.Tensor:
    """(h * w, 2) input-pixel coordinates (u, v) of the output cells' centres."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                          torch.arange(w, dtype=torch.float32), indexing="ij")
    half = (stride - 1) / 2.0
    return torch.stack([u * stride + half, v * stride + half], -1).reshape(-1, 2)


def sample_at(map_BCHW: torch.Tensor, uv_BM2: torch.Tensor, input_hw: tuple[int, int]
              ) -> torch.Tensor:
    """Bilinear samples (B, M, C) of an output map at input-pixel coordinates ``uv``."""
    hin, win = input_hw
    grid = torch.stack([(uv_BM2[..., 0] + 0.5) / win * 2 - 1,
                        (uv_BM2[..., 1] + 0.5) / hin * 2 - 1], -1)[:, None]  # (B, 1, M, 2)
    out = F.grid_sample(map_BCHW, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def weighted_kabsch(cam_BN3: torch.Tensor, scene_BN3: torch.Tensor, w_BN: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid ``map_from_cam`` (R (B, 3, 3), t (B, 3)) minimising sum w |scene - (R cam + t)|^2.

    Weighted centroids, SVD of the weighted cross-covariance, determinant correction (R is
    a proper rotation, det +1). Computed in float64. All-zero weights count every point
    alike; collinear or coincident points give a finite (if arbitrary about the line)
    rotation, never NaN: the cross-covariance gets a relative 1e-9 tie-breaker so that the
    SVD's gradient stays finite. Points or weights that are not finite are left out; a frame
    without a finite point gets a NaN pose (which the localizer rejects).
    """
    dtype = cam_BN3.dtype
    p, x, w = cam_BN3.double(), scene_BN3.double(), w_BN.double()
    finite = torch.isfinite(p).all(-1) & torch.isfinite(x).all(-1) & torch.isfinite(w)
    none = ~finite.any(1)
    p = torch.where(finite[..., None], p, torch.zeros_like(p))
    x = torch.where(finite[..., None], x, torch.zeros_like(x))
    w = torch.where(finite, w.clamp_min(0.0) + 1e-12, torch.zeros_like(w))
    w = w / w.sum(1, keepdim=True).clamp_min(1e-300)
    p_bar = (w[..., None] * p).sum(1)
    x_bar = (w[..., None] * x).sum(1)
    pc, xc = p - p_bar[:, None], x - x_bar[:, None]
    h = torch.einsum("bn,bni,bnj->bij", w, pc, xc)
    scale = h.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    tie = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=h.dtype, device=h.device)) * 1e-9
    h = h + scale * tie
    u, _, vt = torch.linalg.svd(h)
    v = vt.transpose(1, 2)
    d = torch.sign(torch.det(v @ u.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.stack([torch.ones_like(d), torch.ones_like(d), d], 1)
    r = v @ torch.diag_embed(diag) @ u.transpose(1, 2)
    t = x_bar - (r @ p_bar[..., None])[..., 0]
    if bool(none.any()):
        nan = torch.full_like(r, float("nan"))
        r = torch.where(none[:, None, None], nan, r)
        t = torch.where(none[:, None], nan[:, 0], t)
    return r.to(dtype), t.to(dtype)


def kabsch_covariance(cam_N3: np.ndarray, scene_N3: np.ndarray, w_N: np.ndarray,
                      rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """6x6 covariance (camera centre, rotation about the map axes) of one Kabsch fit.

    Gauss-Newton on the weighted residuals ``scene - (R cam + t)``: information
    ``n_eff / sigma^2 * sum_i a_i J_i^T J_i`` with ``a_i`` the normalised weights, ``n_eff``
    their effective count and ``sigma^2`` the weighted residual variance per axis;
    ``J_i = [I, -[R p_i]x]`` (``R = exp(d) R0``, so the rotation block is about the map axes,
    as everywhere in the package). Raw: neighbouring cells' errors are correlated, so the
    checkpoint's calibration scales it.
    """
    w = np.clip(np.asarray(w_N, np.float64), 0.0, None) + 1e-12
    a = w / w.sum()
    n_eff = 1.0 / float((a * a).sum())
    rp = np.asarray(cam_N3, np.float64) @ np.asarray(rot, np.float64).T
    resid = np.asarray(scene_N3, np.float64) - rp - np.asarray(t, np.float64)
    sigma2 = max(float((a * (resid * resid).sum(1)).sum()) / 3.0, 1e-12)
    skew = np.zeros((len(rp), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -rp[:, 2], rp[:, 1], -rp[:, 0]
    skew[:, 1, 0], skew[:, 2, 0], skew[:, 2, 1] = rp[:, 2], -rp[:, 1], rp[:, 0]
    jac = np.concatenate([np.broadcast_to(np.eye(3), skew.shape), -skew], 2)  # (N, 3, 6)
    info = np.einsum("n,nki,nkj->ij", a, jac, jac) * (n_eff / sigma2)
    info += np.eye(6) * 1e-9 * max(float(np.trace(info)), 1e-12)
    cov = np.linalg.pinv(info)
    return 0.5 * (cov + cov.T)


class StructureAwareNet(nn.Module):
    """Image -> scene coordinates, depth, camera points, weights and ``map_from_cam``."""

    scene_mean: torch.Tensor  # buffers (saved with the weights)
    scene_scale: torch.Tensor
    depth_range: torch.Tensor
    intrinsics_norm: torch.Tensor
    distortion: torch.Tensor

    def __init__(self, trunk: nn.Module, channels: int, *, width: int = 128,
                 scene_mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 scene_scale: float = 1.0, depth_range: tuple[float, float] = (0.1, 10.0),
                 intrinsics_norm: tuple[float, float, float, float] = (0.8, 1.07, 0.5, 0.5),
                 distortion: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = _conv(channels, width)
        self.scene_head = nn.Sequential(_conv(width, width), _conv(width, width),
                                        nn.Conv2d(width, 3, 1))
        half = max(width // 2, 8)
        self.depth_coarse = nn.Sequential(_conv(width, half), nn.Conv2d(half, 1, 1))
        self.depth_fine = nn.Sequential(_conv(width + 1, half), nn.Conv2d(half, 1, 1))
        self.weighting = nn.Sequential(nn.Conv2d(6, 64, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(64, 64, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(64, 1, 1))
        last = self.scene_head[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.bias)
        self.register_buffer("scene_mean", torch.tensor(scene_mean, dtype=torch.float32))
        self.register_buffer("scene_scale", torch.tensor(float(scene_scale),
                                                         dtype=torch.float32))
        self.register_buffer("depth_range", torch.tensor(depth_range, dtype=torch.float32))
        self.register_buffer("intrinsics_norm", torch.tensor(intrinsics_norm,
                                                             dtype=torch.float32))
        #: the lens's distortion (CameraInfo D, plumb_bob or rational_polynomial; empty: none)
        self.register_buffer("distortion", torch.tensor(distortion, dtype=torch.float32))
        self._rays: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def geometry_parameters(self) -> list[nn.Parameter]:
        """The trunk's and the geometry heads' parameters (not the weighting network's)."""
        return [p for n, p in self.named_parameters() if not n.startswith("weighting.")]

    def _depth(self, logit: torch.Tensor) -> torch.Tensor:
        lo, hi = self.depth_range[0], self.depth_range[1]
        return lo + (hi - lo) * torch.sigmoid(logit)

    def rays(self, h: int, w: int, input_hw: tuple[int, int]) -> torch.Tensor:
        """(3, h, w) rays ``K^-1 u`` of the output cells' centres (z = 1), through the lens's
        distortion when the checkpoint has one (computed once per size)."""
        key = (h, w, int(input_hw[0]), int(input_hw[1]))
        cached = self._rays.get(key)
        if cached is not None and cached.device == self.scene_mean.device:
            return cached
        # plain floats (numpy, not tensors): the rays are constants of a traced graph
        norm = tuple(float(v) for v in self.intrinsics_norm.detach().cpu().numpy().tolist())
        fx, fy, cx, cy = intrinsics_at(norm, key[2], key[3])  # type: ignore[arg-type]
        uv = cell_centres(h, w).double().numpy()
        xy = np.stack([(uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy], 1)
        dist = tuple(float(v) for v in self.distortion.detach().cpu().numpy().tolist())
        if dist:
            from camera_pose_ros.camera import PinholeCamera

            lens = PinholeCamera(key[3], key[2], fx, fy, cx, cy, dist)
            xy = lens.undistort_normalized(xy)
        rays = torch.from_numpy(np.c_[xy, np.ones(len(xy))].T.reshape(3, h, w).astype(
            np.float32)).to(self.scene_mean.device)
        self._rays[key] = rays
        return rays

    def geometry(self, images_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scene coordinates (B, 3, h, w, map frame, metres), fine and coarse depth
        (B, 1, h, w) and (B, 1, h/2, w/2) in metres, and camera points (B, 3, h, w)."""
        feats = self.neck(self.trunk(images_B3HW))
        scene = self.scene_head(feats) * self.scene_scale + self.scene_mean[:, None, None]
        coarse_logit = self.depth_coarse(F.avg_pool2d(feats, 2, ceil_mode=True))
        up = F.interpolate(coarse_logit, size=feats.shape[-2:], mode="bilinear",
                           align_corners=False)
        fine_logit = self.depth_fine(torch.cat([feats, up], 1))
        depth = self._depth(fine_logit)
        h, w = depth.shape[-2:]
        cam = depth * self.rays(h, w, (images_B3HW.shape[-2], images_B3HW.shape[-1]))[None]
        return {"scene": scene, "depth": depth, "depth_coarse": self._depth(coarse_logit),
                "cam": cam}

    def weights(self, scene_B3HW: torch.Tensor, cam_B3HW: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) sigmoid weights of the cells from their scene and camera points."""
        s = (scene_B3HW - self.scene_mean[:, None, None]) / self.scene_scale
        c = cam_B3HW / self.depth_range[1]
        return torch.sigmoid(self.weighting(torch.cat([s, c], 1)))

    def forward(self, images_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Geometry, weights and the Kabsch pose: ``rot`` (B, 3, 3) and ``t`` (B, 3), the
        camera's rotation and centre in the map frame."""
        out = self.geometry(images_B3HW)
        out["weights"] = self.weights(out["scene"], out["cam"])
        b = images_B3HW.shape[0]
        out["rot"], out["t"] = weighted_kabsch(
            out["cam"].reshape(b, 3, -1).transpose(1, 2),
            out["scene"].reshape(b, 3, -1).transpose(1, 2), out["weights"].reshape(b, -1))
        return out


@dataclass
class PnPResult:
    """A pose solved from predicted scene coordinates, or why there is none."""

    success: bool
    rot_map_cam: np.ndarray
    centre: np.ndarray
    covariance: np.ndarray
    inliers: int
    reason: str = ""


def pnp_pose(scene_N3: np.ndarray, pixels_N2: np.ndarray, K: np.ndarray, *,
             max_error_px: float = 6.0, min_inliers: int = 12,
             distortion: tuple[float, ...] = ()) -> PnPResult:
    """PnP + RANSAC (pycolmap's P3P with LO and a final refinement) of predicted scene
    coordinates at their pixels (ROS convention) for ``K`` and the lens's ``distortion``
    (CameraInfo D); the covariance from the inliers' reprojection residuals (Gauss-Newton,
    as the refiner's, on the undistorted pixels)."""
    import pycolmap

    from camera_pose_ros.camera import PinholeCamera

    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    ok = np.all(np.isfinite(scene_N3), 1)
    fail = PnPResult(False, np.eye(3), np.zeros(3), np.full((6, 6), np.nan), 0)
    if ok.sum() < max(min_inliers, 4):
        fail.reason = f"{int(ok.sum())} finite scene coordinates"
        return fail
    w = int(round(2 * (cx + 0.5)))
    h = int(round(2 * (cy + 0.5)))
    lens = PinholeCamera(max(w, 1), max(h, 1), fx, fy, cx, cy, tuple(distortion))
    cam = pycolmap.Camera(model=lens.colmap_model(), width=lens.width, height=lens.height,
                          params=lens.colmap_params())
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = max_error_px
    est.ransac.random_seed = 0
    est.ransac.num_threads = 1
    pts2d = np.asarray(pixels_N2, np.float64)[ok] + 0.5  # COLMAP pixels
    pts3d = np.asarray(scene_N3, np.float64)[ok]
    result = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, cam, est)
    if result is None:
        fail.reason = "PnP RANSAC found no pose"
        return fail
    mask = np.asarray(result["inlier_mask"], bool)
    if mask.sum() < min_inliers:
        fail.reason = f"{int(mask.sum())} PnP inliers (< {min_inliers})"
        fail.inliers = int(mask.sum())
        return fail
    cam_from_map = np.eye(4)
    cam_from_map[:3, :] = result["cam_from_world"].matrix()
    rot = cam_from_map[:3, :3].T
    centre = -rot @ cam_from_map[:3, 3]
    from camera_pose_ros.geometry import pose_covariance_from_reprojection

    params = np.array([fx, fy, cx + 0.5, cy + 0.5])
    inl2d = pts2d[mask]
    if distortion:  # the covariance's model is the ideal pinhole
        inl2d = np.asarray(cam.cam_from_img(inl2d)) * params[:2] + params[2:4]
    cov = pose_covariance_from_reprojection(inl2d, pts3d[mask], rot, centre, params)
    return PnPResult(True, rot, centre, cov, int(mask.sum()))


class StructureLoss(nn.Module):
    """The two-stage training loss of :class:`StructureAwareNet`.

    Geometry: the mean Euclidean error of the scene coordinates and the mean absolute error
    of the fine and coarse depths (``depth_weight``), sampled bilinearly at the labels'
    pixels (masked: padding labels count for nothing). Pose (``with_pose``): mean absolute
    error of the rotation matrix's entries and of the translation (metres), times
    ``pose_weight``. Returns the total and its parts.
    """

    def __init__(self, *, depth_weight: float = 1.0, pose_weight: float = 1.0) -> None:
        super().__init__()
        self.depth_weight = float(depth_weight)
        self.pose_weight = float(pose_weight)

    def forward(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                input_hw: tuple[int, int], with_pose: bool
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch: ``out`` of the network, ``batch`` with ``uv`` (B, M, 2),
        ``xyz`` (B, M, 3), ``depth`` (B, M), ``mask`` (B, M), ``rot`` (B, 3, 3), ``t``
        (B, 3)."""
        mask = batch["mask"].to(out["scene"].dtype)
        n = mask.sum().clamp_min(1.0)
        scene = sample_at(out["scene"], batch["uv"], input_hw)
        scene_err = ((scene - batch["xyz"]).norm(dim=-1) * mask).sum() / n
        depth_err = torch.stack([
            ((sample_at(out[k], batch["uv"], input_hw)[..., 0] - batch["depth"]).abs()
             * mask).sum() / n for k in ("depth", "depth_coarse")]).sum()
        total = scene_err + self.depth_weight * depth_err
        parts = {"scene_m": float(scene_err.detach()), "depth_m": float(depth_err.detach()) / 2}
        if with_pose:
            rot_err = (out["rot"] - batch["rot"]).abs().mean()
            t_err = (out["t"] - batch["t"]).abs().mean()
            total = total + self.pose_weight * (rot_err + t_err)
            parts.update(rot_l1=float(rot_err.detach()), t_l1_m=float(t_err.detach()))
        return total, parts


#: the ways a structure-aware model turns its output into a pose
SOLVERS = ("kabsch", "pnp")


@torch.no_grad()
def solve_poses(model: StructureAwareNet, images_B3HW: torch.Tensor,
                image_sizes: list[tuple[int, int]], *, solver: str = "kabsch"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses (B, 7: x, y, z, qw, qx, qy, qz), raw covariances (B, 6, 6) and which frames
    PnP solved (B,) for a batch of input tensors.

    ``solver`` ``kabsch``: the network's own weighted Kabsch pose, its covariance from the
    fit's residuals (:func:`kabsch_covariance`). ``pnp``: PnP + RANSAC on the predicted scene
    coordinates at the output cells' centres, scaled to each frame's original size
    ``image_sizes`` (height, width) with the checkpoint's intrinsics; a frame PnP cannot
    solve keeps its Kabsch pose and covariance (``solved`` False).
    """
    from camera_pose_ros.geometry import quat_wxyz_from_rotmat

    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    model.eval()
    out = model(images_B3HW)
    b, _, h, w = out["scene"].shape
    hin, win = images_B3HW.shape[-2:]
    scene = out["scene"].reshape(b, 3, -1).transpose(1, 2).double().cpu().numpy()
    cam = out["cam"].reshape(b, 3, -1).transpose(1, 2).double().cpu().numpy()
    weights = out["weights"].reshape(b, -1).double().cpu().numpy()
    rot, t = out["rot"].double().cpu().numpy(), out["t"].double().cpu().numpy()
    centres = cell_centres(h, w).double().numpy()
    poses = np.zeros((b, 7))
    covs = np.zeros((b, 6, 6))
    solved = np.zeros(b, bool)
    for i in range(b):
        r_i, t_i = rot[i], t[i]
        if not (np.all(np.isfinite(r_i)) and np.all(np.isfinite(t_i))):
            poses[i], covs[i] = np.nan, np.nan
            continue
        cov = kabsch_covariance(cam[i], scene[i], weights[i], r_i, t_i)
        if solver == "pnp":
            height, width = image_sizes[i]
            fx, fy, cx, cy = intrinsics_at(model.intrinsics_norm, height, width)
            K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
            px = np.stack([(centres[:, 0] + 0.5) * width / win - 0.5,
                           (centres[:, 1] + 0.5) * height / hin - 0.5], 1)
            res = pnp_pose(scene[i], px, K, max_error_px=max(3.0, 0.75 * width / w),
                           distortion=tuple(float(v) for v in model.distortion.tolist()))
            if res.success and np.all(np.isfinite(res.covariance)):
                r_i, t_i, cov, solved[i] = res.rot_map_cam, res.centre, res.covariance, True
        poses[i, :3], poses[i, 3:] = t_i, quat_wxyz_from_rotmat(r_i)
        covs[i] = cov
    return poses, covs, solved


def rotmat_to_quat(rot_B33: torch.Tensor) -> torch.Tensor:
    """(B, 4) unit quaternions (w, x, y, z), w >= 0, of rotation matrices; traceable (no
    data-dependent branches), for exported graphs."""
    r = rot_B33
    tr = 1.0 + torch.stack([r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2],
                            r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2],
                            -r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2],
                            -r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2]], 1)
    mag = 0.5 * tr.clamp_min(0.0).sqrt()
    signs = torch.stack([torch.ones_like(mag[:, 0]), r[:, 2, 1] - r[:, 1, 2],
                         r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], 1)
    q = mag * torch.where(signs >= 0, 1.0, -1.0)
    return q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)


def kabsch_numpy(cam_N3: np.ndarray, scene_N3: np.ndarray, w_N: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weighted_kabsch` of one frame in numpy (the solver beside an ONNX export, whose
    opsets have no SVD): ``map_from_cam`` rotation (3, 3) and translation (3,)."""
    r, t = weighted_kabsch(torch.as_tensor(cam_N3, dtype=torch.float64)[None],
                           torch.as_tensor(scene_N3, dtype=torch.float64)[None],
                           torch.as_tensor(w_N, dtype=torch.float64)[None])
    return r[0].numpy(), t[0].numpy()
