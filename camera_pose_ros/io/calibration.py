"""Camera calibration files: the YAML that ROS's camera_calibration writes (``ost.yaml``).

The camera_info_manager format: ``image_width``, ``image_height``, ``camera_matrix``,
``distortion_model``, ``distortion_coefficients`` and ``projection_matrix``, each matrix as
``{rows, cols, data}``. A phone video or a folder of photos has no CameraInfo; this file (or
plain ``fx fy cx cy``) gives the dataset its intrinsics instead of COLMAP's guess.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import CameraModelError, InputDataError

__all__ = ["read_calibration_yaml", "camera_from_intrinsics", "camera_for_frames"]


def _matrix(meta: dict, key: str, size: int, path: Path) -> list[float]:
    entry = meta.get(key)
    data = entry.get("data") if isinstance(entry, dict) else entry
    if not isinstance(data, list) or (size and len(data) != size):
        raise CameraModelError(f"{path}: {key} must hold {size or 'a list of'} numbers "
                               f"(as camera_calibration writes it), got {entry!r}")
    try:
        values = [float(v) for v in data]
    except (TypeError, ValueError) as exc:
        raise CameraModelError(f"{path}: {key} holds a value that is not a number") from exc
    if not all(math.isfinite(v) for v in values):
        raise CameraModelError(f"{path}: {key} holds non-finite values")
    return values


def read_calibration_yaml(path: str | os.PathLike, *, rectified: bool = False
                          ) -> PinholeCamera:
    """The camera of a camera_calibration / camera_info_manager YAML file.

    ``rectified``: the images were undistorted with this calibration (use the projection
    matrix, no distortion), as for an ``image_rect`` topic.

    Raises:
        InputDataError: the file is missing or not YAML.
        CameraModelError: a field is missing or unusable (no focal length, an unsupported
            distortion model with non-zero coefficients).
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"camera calibration file not found: {path}")
    try:
        meta: Any = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise InputDataError(f"{path}: not a calibration YAML ({' '.join(str(exc).split())})"
                             ) from exc
    if not isinstance(meta, dict):
        raise CameraModelError(f"{path}: expected a mapping with image_width, image_height, "
                               "camera_matrix, distortion_coefficients")
    try:
        width, height = int(meta["image_width"]), int(meta["image_height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CameraModelError(f"{path}: image_width and image_height must be integers"
                               ) from exc
    if width <= 0 or height <= 0:
        raise CameraModelError(f"{path}: image size {width}x{height} is not a size")
    k = _matrix(meta, "camera_matrix", 9, path)
    d = (_matrix(meta, "distortion_coefficients", 0, path)
         if meta.get("distortion_coefficients") is not None else [])
    p = (_matrix(meta, "projection_matrix", 12, path)
         if meta.get("projection_matrix") is not None else [])
    model = str(meta.get("distortion_model") or "plumb_bob")
    try:
        return PinholeCamera.from_camera_info(width, height, k, d, model, p, rectified)
    except CameraModelError as exc:
        raise CameraModelError(f"{path}: {exc}") from exc


def camera_from_intrinsics(values: Sequence[float], width: int, height: int) -> PinholeCamera:
    """An ideal pinhole camera of ``fx fy cx cy`` (pixels, ROS convention) for frames of the
    given size.

    Raises:
        CameraModelError: not four finite numbers with positive focal lengths.
    """
    v = [float(x) for x in values]
    if len(v) != 4 or not all(math.isfinite(x) for x in v) or v[0] <= 0 or v[1] <= 0:
        raise CameraModelError(f"intrinsics must be fx fy cx cy with positive focal lengths, "
                               f"got {list(values)}")
    return PinholeCamera(int(width), int(height), v[0], v[1], v[2], v[3])


def camera_for_frames(camera: PinholeCamera, width: int, height: int) -> PinholeCamera:
    """``camera`` for frames of ``width`` x ``height``: scaled when only the resolution
    differs (a video recorded at another size than the calibration).

    Raises:
        CameraModelError: the aspect ratios differ (a cropped stream: recalibrate).
    """
    if (camera.width, camera.height) == (width, height):
        return camera
    if abs(camera.width / camera.height - width / height) > 0.01 * width / height:
        raise CameraModelError(
            f"the calibration is for {camera.width}x{camera.height} images but the frames "
            f"are {width}x{height} (another aspect ratio: cropped?); calibrate this stream")
    return camera.scaled(width, height)
