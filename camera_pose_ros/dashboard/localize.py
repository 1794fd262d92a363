"""Localize one uploaded photo or dataset frame in every mode the checkpoint supports.

Uploads are checked by content, never by name: the bytes must be a PNG or JPEG stream
(magic number and header), at most ``max_bytes`` long, at most ``max_pixels`` by their
header (before anything is decoded), and must decode with OpenCV. Nothing is written to
disk: the bytes stay in memory. Inference goes through
:class:`~camera_pose_ros.runtime.localizer.Localizer`, the same path as the node.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from camera_pose_ros.dashboard.state import pose_view
from camera_pose_ros.errors import (
    CameraPoseError,
    CheckpointError,
    ImageDecodeError,
    InputDataError,
)
from camera_pose_ros.geometry import rotation_errors_deg
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.images import compressed_image_size, decode_compressed

__all__ = ["UploadError", "check_upload_name", "decode_upload", "LocalizeService",
           "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")


class UploadError(InputDataError):
    """An upload the dashboard refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_upload_name(name: str | None) -> str:
    """The upload's display name; a name with a folder part is refused.

    The name is only shown, never used as a path, but a name like ``../../x.png`` says the
    client is confused or hostile, so it gets a clear refusal rather than silent cleaning.

    Raises:
        UploadError: the name holds ``/``, ``\\``, a control character, is ``.``/``..``
            or longer than 255 characters.
    """
    if not name:
        return "upload"
    if not _NAME.match(name) or name in (".", "..") or ".." in name.split("."):
        raise UploadError(f"file name {name!r} is not a plain file name (no folders, no "
                          "'..'): rename the file", 400)
    return name


def decode_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """RGB uint8 image of an uploaded PNG or JPEG file, checked by content.

    Raises:
        UploadError: empty (400), too large (413), not a PNG/JPEG by content (415), more
            than ``max_pixels`` pixels by its header (413), or corrupt/truncated (400).
    """
    if not data:
        raise UploadError("the upload is empty: choose an image file", 400)
    if len(data) > max_bytes:
        raise UploadError(f"the upload has {len(data)} bytes, more than the limit of "
                          f"{max_bytes} bytes ({max_bytes / 2**20:.0f} MiB)", 413)
    if not (data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff"):
        raise UploadError("the upload is not a PNG or JPEG image (judged by its content, "
                          "not its name): upload a photo", 415)
    try:
        width, height = compressed_image_size(data)
    except ImageDecodeError as exc:
        raise UploadError(f"the image header is corrupt: {exc}", 400) from exc
    if width <= 0 or height <= 0:
        raise UploadError(f"the image header gives an empty size ({width}x{height})", 400)
    if width * height > max_pixels:
        raise UploadError(f"the image has {width}x{height} pixels, more than the limit of "
                          f"{max_pixels} pixels: downscale it first", 413)
    try:
        return decode_compressed(data)
    except ImageDecodeError as exc:
        raise UploadError(f"the image cannot be decoded: {exc}", 400) from exc


class LocalizeService:
    """The checkpoint's :class:`Localizer` (and refiner), loaded on first use, one call at a
    time.

    Args:
        checkpoint: model file, or None (every call then fails with a clear message).
        refinement_map: explicit map for the refine mode (default: found from the
            checkpoint, see ``find_refinement_map``).
        refine_config: refinement settings (``config/refine.yaml``), or None for defaults.
        device: torch device.
        mc_samples: covariance samples (default: the checkpoint's).
        floorplan: regressed poses off its walkable cells are snapped onto them, as the
            node and ``camera-pose localize --floorplan`` do.
    """

    def __init__(self, checkpoint: str | os.PathLike | None, *,
                 refinement_map: str | os.PathLike | None = None,
                 refine_config: str | os.PathLike | None = None, device: str = "cpu",
                 mc_samples: int | None = None, floorplan: FloorPlan | None = None) -> None:
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.floorplan = floorplan
        self.refinement_map = refinement_map
        self.refine_config = refine_config
        self.device = device
        self.mc_samples = mc_samples
        self._lock = threading.Lock()
        self._localizer = None
        self._error: str | None = None
        self.refine_problem: str | None = None

    def modes(self, provenance: dict | None = None) -> list[str]:
        """Modes a call will run: ``regress``, plus ``refine`` when a map is found
        (``provenance``: the checkpoint's, where it names the dataset)."""
        if self.checkpoint is None or not self.checkpoint.is_file():
            return []
        if self._localizer is not None:
            return ["regress"] + (["refine"] if self._localizer.refiner is not None else [])
        from camera_pose_ros.runtime.refine import find_refinement_map

        try:
            find_refinement_map(self.checkpoint, provenance or {}, self.refinement_map)
        except CameraPoseError:
            return ["regress"]
        return ["regress", "refine"]

    def _load(self):  # -> Localizer, under self._lock
        if self._localizer is not None:
            return self._localizer
        if self.checkpoint is None:
            raise CheckpointError("no checkpoint: start the dashboard with --checkpoint "
                                  "RUN/model.pt to localize images")
        from camera_pose_ros.runtime.localizer import Localizer

        localizer = Localizer(self.checkpoint, device=self.device, mc_samples=self.mc_samples)
        try:
            localizer.set_floorplan(self.floorplan)
        except InputDataError as exc:  # e.g. no walkable cell: localize without snapping
            log.warning("dashboard: not snapping to the floor plan: %s", exc)
        try:
            path = localizer.enable_refinement(self.refinement_map, self.refine_config)
            log.info("dashboard: refinement map %s", path)
        except CameraPoseError as exc:
            self.refine_problem = str(exc)
            log.info("dashboard: regress mode only (%s)", exc)
        self._localizer = localizer
        return localizer

    def warm_up(self) -> None:
        """Load the model now (e.g. in a background thread at start); errors are kept."""
        try:
            with self._lock:
                self._load()
        except CameraPoseError as exc:
            self._error = str(exc)
            log.warning("dashboard: %s", exc)

    def localize(self, rgb: np.ndarray, ground_truth: tuple[np.ndarray, np.ndarray] | None
                 = None) -> dict:
        """The image's pose in each mode: pose, covariance ellipse, inliers, timing.

        ``ground_truth``: ``(position, quat_wxyz)`` of a dataset frame: errors are added.

        Raises:
            CameraPoseError: no usable checkpoint (its message says why).
        """
        with self._lock:
            localizer = self._load()
            t0 = time.perf_counter()
            est = localizer.localize(rgb)
            t1 = time.perf_counter()
            modes: dict = {}
            if est is None:
                modes["regress"] = {"error": "the network's prediction is not finite"}
            else:
                modes["regress"] = pose_view(est.position, est.quat_wxyz, est.covariance,
                                             ms=1000 * (t1 - t0), snapped=est.snapped)
                if localizer.refiner is not None:
                    localizer.refine(rgb, est, None)
                    t2 = time.perf_counter()
                    modes["refine"] = pose_view(
                        est.position, est.quat_wxyz, est.covariance, refined=est.refined,
                        inliers=int(est.inliers), note=est.refine_note,
                        ms=1000 * (t2 - t1))
        out = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "modes": modes,
               "refine_available": "refine" in modes,
               "refine_problem": None if "refine" in modes else self.refine_problem}
        if ground_truth is not None:
            gp, gq = (np.asarray(v, float) for v in ground_truth)
            out["ground_truth"] = pose_view(gp, gq)
            for view in modes.values():
                if "x" in view:
                    p = np.array([view["x"], view["y"], view["z"]])
                    view["error_m"] = float(np.linalg.norm(p - gp))
                    view["error_deg"] = float(rotation_errors_deg(
                        np.asarray(view["q"])[None], gq[None])[0])
        return out


def read_frame(data: Path, name: str) -> np.ndarray:
    """RGB image of a dataset frame ``DATA/images/NAME``.

    Raises:
        InputDataError: it cannot be read.
    """
    bgr = cv2.imread(str(data / "images" / name), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputDataError(f"cannot read dataset image {name}")
    return np.ascontiguousarray(bgr[:, :, ::-1])
