"""The pinhole camera model with OpenCV's distortion, in the ROS pixel convention.

Conversions to and from ``sensor_msgs/CameraInfo`` fields and COLMAP's camera models live
here so that every layer (formats, dataset stages, refinement, nodes) shares one model.
numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camera_pose_ros.errors import CameraModelError

__all__ = ["PinholeCamera"]


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole intrinsics in the ROS convention (pixel centres at integer coordinates).

    ``distortion`` holds CameraInfo's ``D`` for the ``plumb_bob`` / ``rational_polynomial``
    models (OpenCV's order ``k1, k2, p1, p2[, k3[, k4, k5, k6]]``); empty or all zero means
    an ideal pinhole. COLMAP puts the first pixel's centre at (0.5, 0.5): convert with
    :meth:`colmap_params`, whose model :meth:`colmap_model` names.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        d = tuple(float(v) for v in self.distortion)
        if len(d) not in (0, 4, 5, 8):
            raise CameraModelError(f"distortion needs 4, 5 or 8 coefficients (k1 k2 p1 p2 [k3 "
                             f"[k4 k5 k6]]), got {len(d)}")
        # one spelling for equal cameras: the shortest of 0, 4, 5, 8 coefficients
        while d and not any(d[{8: 5, 5: 4, 4: 0}[len(d)]:]):
            d = d[:{8: 5, 5: 4, 4: 0}[len(d)]]
        object.__setattr__(self, "distortion", d)

    def matrix(self) -> np.ndarray:
        """3x3 calibration matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def _radial_tangential(self, x: np.ndarray, y: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """OpenCV's radial factor and tangential offsets at ideal coordinates ``x, y``."""
        k1, k2, p1, p2, k3, k4, k5, k6 = (*self.distortion, 0.0, 0.0, 0.0, 0.0)[:8]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        return (radial, 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)

    def distort_normalized(self, xy_N2: np.ndarray) -> np.ndarray:
        """Ideal normalised image coordinates (x/z, y/z) to distorted ones (OpenCV model)."""
        xy = np.asarray(xy_N2, float)
        if not self.distortion:
            return xy.copy()
        radial, dx, dy = self._radial_tangential(xy[..., 0], xy[..., 1])
        return np.stack([xy[..., 0] * radial + dx, xy[..., 1] * radial + dy], axis=-1)

    def undistort_normalized(self, xy_N2: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Inverse of :meth:`distort_normalized` by fixed-point iteration (as OpenCV does)."""
        xd = np.asarray(xy_N2, float)
        if not self.distortion:
            return xd.copy()
        x, y = xd[..., 0], xd[..., 1]
        for _ in range(iterations):
            radial, dx, dy = self._radial_tangential(x, y)
            x, y = (xd[..., 0] - dx) / radial, (xd[..., 1] - dy) / radial
        return np.stack([x, y], axis=-1)

    def camera_info_distortion(self) -> tuple[str, list[float]]:
        """CameraInfo's ``distortion_model`` and ``D`` for this camera (inverse of
        :meth:`from_camera_info`): rational_polynomial with 8 coefficients, else plumb_bob
        with 5."""
        if len(self.distortion) == 8:
            return "rational_polynomial", list(self.distortion)
        return "plumb_bob", list((*self.distortion, 0.0, 0.0, 0.0, 0.0, 0.0)[:5])

    def colmap_model(self) -> str:
        """COLMAP's camera model for these intrinsics: PINHOLE, OPENCV or FULL_OPENCV."""
        if not self.distortion:
            return "PINHOLE"
        return "OPENCV" if not any(self.distortion[4:]) else "FULL_OPENCV"

    def colmap_params(self) -> list[float]:
        """The parameters of :meth:`colmap_model` (``fx, fy, cx, cy`` then distortion)."""
        params = [self.fx, self.fy, self.cx + 0.5, self.cy + 0.5]
        model = self.colmap_model()
        if model == "OPENCV":
            return params + list(self.distortion[:4])
        if model == "FULL_OPENCV":
            return params + list(self.distortion) + [0.0] * (8 - len(self.distortion))
        return params

    @classmethod
    def from_camera_info(cls, width: int, height: int, k: Sequence[float], d: Sequence[float],
                         distortion_model: str, p: Sequence[float] = (),
                         rectified: bool = False) -> PinholeCamera:
        """Intrinsics from ``sensor_msgs/CameraInfo`` fields (K and P row-major, D, its model).

        ``rectified``: the images are ``image_rect`` (undistorted by image_proc), so their
        camera is P's left 3x3 without distortion (K when P is unset); else K with D.

        Raises:
            CameraModelError: no focal length, or a distortion model other than ``plumb_bob`` /
                ``rational_polynomial`` (an ``equidistant`` fisheye camera) with non-zero D.
        """
        if rectified:
            p = [float(v) for v in p]
            if len(p) == 12 and p[0] > 0 and p[5] > 0:
                return cls(int(width), int(height), p[0], p[5], p[2], p[6])
            d, distortion_model = (), ""
        k = [float(v) for v in k]
        if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
            raise CameraModelError("CameraInfo has no focal length (K is unset)")
        d = tuple(float(v) for v in d)
        if any(d) and distortion_model not in ("plumb_bob", "rational_polynomial"):
            raise CameraModelError(f"CameraInfo distortion model '{distortion_model}' is not "
                             "supported (plumb_bob or rational_polynomial); rectify the images")
        if len(d) > 8 or len(d) in (1, 2, 3, 6, 7):
            raise CameraModelError(f"CameraInfo has {len(d)} distortion coefficients; "
                             "plumb_bob has 5, rational_polynomial 8")
        return cls(int(width), int(height), k[0], k[4], k[2], k[5], d)

    @classmethod
    def from_colmap(cls, model: str, width: int, height: int,
                    params: Sequence[float] | np.ndarray) -> PinholeCamera:
        """Intrinsics from a COLMAP camera (radial models become plumb_bob coefficients).

        Raises:
            CameraModelError: a COLMAP model without an OpenCV equivalent (fisheye models).
        """
        p = [float(v) for v in params]
        if model == "SIMPLE_PINHOLE":
            f, cx, cy, dist = p[0], p[1], p[2], []
            fx = fy = f
        elif model in ("SIMPLE_RADIAL", "RADIAL"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
            dist = [p[3], p[4] if model == "RADIAL" else 0.0, 0.0, 0.0]
        elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):
            fx, fy, cx, cy = p[:4]
            dist = p[4:]
        else:
            raise CameraModelError(f"COLMAP camera model {model} has no plumb_bob equivalent")
        return cls(int(width), int(height), fx, fy, cx - 0.5, cy - 0.5, tuple(dist))

    def scaled(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image resized to ``width`` x ``height``.

        Distortion acts on normalised coordinates, so its coefficients carry over.
        """
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(
            width, height, self.fx * sx, self.fy * sy,
            (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, self.distortion,
        )

    def to_dict(self) -> dict:
        """Plain-JSON form (``distortion`` only when the camera has some)."""
        out = {k: getattr(self, k) for k in ("width", "height", "fx", "fy", "cx", "cy")}
        if self.distortion:
            out["distortion"] = list(self.distortion)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PinholeCamera:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["width"]), int(data["height"]), float(data["fx"]),
                   float(data["fy"]), float(data["cx"]), float(data["cy"]),
                   tuple(float(v) for v in data.get("distortion", ())))
