"""Stage 1: frames from a bag, a video or an image folder, with keyframe selection.

Keyframe selection keeps SfM small and sharp: a frame is skipped when it is blurred
(sharpness well below that of its recent neighbours), closer than ``min_time_step`` to the
last kept frame, or too similar to it (mean absolute change of a grey thumbnail).
Writes ``DATA/images/`` and ``DATA/frames.csv`` (``image,stamp``), plus ``DATA/camera.json``
when the intrinsics are known (CameraInfo, a calibration file, ``fx fy cx cy``) or, for a
folder of photos, when their EXIF gives the focal length (a prior the SfM refines); its
``source`` says which.
"""

from __future__ import annotations

import bisect
import collections
import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.config import check_range
from camera_pose_ros.errors import (
    BagError,
    ConfigError,
    FormatError,
    ImageDecodeError,
    InputDataError,
)
from camera_pose_ros.fileio import atomic_dir, write_json_atomic, write_text_atomic
from camera_pose_ros.io.bags import (
    camera_info_topic_for,
    is_rectified_topic,
    iter_bag_images,
    read_camera_info,
)
from camera_pose_ros.io.calibration import (
    camera_for_frames,
    camera_from_intrinsics,
    read_calibration_yaml,
)
from camera_pose_ros.io.images import ExifFocal, decode_compressed, read_exif_focal
from camera_pose_ros.io.posecsv import format_stamp, parse_stamp, read_csv_rows, seconds_to_ns

__all__ = [
    "KeyframeConfig",
    "FrameSource",
    "KeyframeSelector",
    "sharpness",
    "iter_video",
    "iter_image_folder",
    "extract_frames",
    "read_frames_csv",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SOURCE_JSON = "source.json"
#: ``source`` of ``camera.json``: intrinsics from EXIF are a prior (SfM refines them); the
#: others are known (SfM keeps them)
EXIF_SOURCE = "exif"
#: EXIF tags live in a file's first segments (a JPEG's APP1 holds at most 64 KiB)
_EXIF_BYTES = 1 << 16


@dataclass(frozen=True)
class KeyframeConfig:
    """Keyframe selection settings.

    Attributes:
        min_time_step: seconds between kept frames at least (0 keeps every rate).
        min_change: mean absolute grey-level change (0-255) of a 80x60 thumbnail against the
            last kept frame below which a frame is a near-duplicate.
        blur_ratio: a frame whose sharpness (variance of the Laplacian) is below this share
            of the median of the last ``blur_window`` frames is blurred.
        blur_window: frames in that running median.
        max_blur_gap: seconds; a blurred frame is kept all the same when the last kept frame
            is this old (0: never): a fast turn blurs every frame of it, and dropping them
            all leaves two stretches of the walk that share nothing for SfM to join.
        max_frames: stop after this many kept frames (0: no limit).
        max_width: downscale wider frames to this width (0: keep the size).
        jpeg_quality: frames are stored as JPEG of this quality (100: PNG, lossless).
    """

    min_time_step: float = 0.09
    min_change: float = 1.5
    blur_ratio: float = 0.5
    blur_window: int = 15
    max_blur_gap: float = 0.25
    max_frames: int = 0
    max_width: int = 0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if (self.min_time_step < 0 or self.min_change < 0 or not 0 <= self.blur_ratio < 1
                or not self.max_blur_gap >= 0):
            raise ConfigError("keyframe settings must be >= 0 (blur_ratio in [0, 1))")
        if not 50 <= self.jpeg_quality <= 100:
            raise ConfigError("jpeg_quality must be in [50, 100]")
        check_range("blur_window", self.blur_window, low=1, high=10_000)
        check_range("max_frames", self.max_frames, low=0)
        check_range("max_width", self.max_width, low=0, high=100_000)
        if 0 < self.max_width < 16:
            raise ConfigError(f"max_width must be 0 (keep the size) or >= 16, got "
                              f"{self.max_width}")


@dataclass(frozen=True)
class FrameSource:
    """Where frames come from: exactly one of ``bag``, ``video``, ``images``.

    The intrinsics come from the bag's CameraInfo, or (any source, and they win) from a
    ``calibration`` file (camera_calibration's YAML) or ``intrinsics`` ``fx fy cx cy`` in
    the frames' pixels; without any, a folder of photos gives its EXIF focal length as a
    prior, else COLMAP estimates them. ``between`` (start, end) keeps only the frames that
    many seconds after the source's first frame (start included, end not): one floor of a
    walk that rides a lift, say.
    """

    bag: Path | None = None
    topic: str = "/camera/image_raw"
    video: Path | None = None
    images: Path | None = None
    camera_info_topic: str | None = None
    calibration: Path | None = None
    intrinsics: tuple[float, ...] | None = None
    between: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.bag, self.video, self.images)) != 1:
            raise ConfigError("give exactly one frame source: a bag, a video or an image folder")
        if self.between is not None and not (
                len(self.between) == 2 and 0.0 <= self.between[0] < self.between[1]):
            raise ConfigError(f"--between takes START END seconds with 0 <= START < END, got "
                              f"{' '.join(f'{v:g}' for v in self.between)}")
        if self.calibration is not None and self.intrinsics is not None:
            raise ConfigError("give the intrinsics once: a calibration file or fx fy cx cy")

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(stamp_ns, rgb)`` pairs in source order (within ``between``)."""
        frames = self._all_frames()
        if self.between is None:
            return frames
        start, end = (seconds_to_ns(v) for v in self.between)

        def window() -> Iterator[tuple[int, np.ndarray]]:
            first = None
            for stamp_ns, rgb in frames:
                first = stamp_ns if first is None else first
                if stamp_ns - first >= end:
                    return
                if stamp_ns - first >= start:
                    yield stamp_ns, rgb

        return window()

    def _all_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.bag is not None:
            return ((f.stamp_ns, f.image_rgb) for f in iter_bag_images(self.bag, self.topic))
        if self.video is not None:
            return ((seconds_to_ns(s), rgb) for s, rgb in iter_video(self.video))
        assert self.images is not None  # exactly one source (__post_init__)
        return ((seconds_to_ns(s), rgb) for s, rgb in iter_image_folder(self.images))

    def check(self) -> None:
        """Raise the reader's error now when the bag, video or folder does not exist."""
        if self.bag is not None and not Path(self.bag).exists():
            raise BagError(f"bag not found: {self.bag}")
        if self.video is not None and not Path(self.video).is_file():
            raise InputDataError(f"video not found: {self.video}")
        if self.images is not None and not Path(self.images).is_dir():
            raise InputDataError(f"image folder not found: {self.images}")
        if self.calibration is not None:
            self.camera()
        if self.intrinsics is not None:
            camera_from_intrinsics(self.intrinsics, 1, 1)

    def record(self) -> dict[str, str]:
        """What the frames come from, as ``DATA/source.json`` keeps it."""
        window = {} if self.between is None else {"between": f"{self.between[0]:g}-"
                                                               f"{self.between[1]:g} s"}
        if self.bag is not None:
            return {"bag": str(Path(self.bag).resolve()), "topic": self.topic, **window}
        if self.video is not None:
            return {"video": str(Path(self.video).resolve()), **window}
        assert self.images is not None  # exactly one source (__post_init__)
        return {"images": str(Path(self.images).resolve()), **window}

    def camera(self) -> PinholeCamera | None:
        """Intrinsics of the calibration file, else those the source carries (CameraInfo in
        a bag), else None (``intrinsics`` need the frame size: see :meth:`frame_camera`).

        An ``image_rect*`` topic is already undistorted: its camera is CameraInfo's P.
        """
        rectified = self.bag is not None and is_rectified_topic(self.topic)
        if self.calibration is not None:
            return read_calibration_yaml(self.calibration, rectified=rectified)
        if self.bag is None:
            return None
        return read_camera_info(self.bag, self.camera_info_topic or
                                camera_info_topic_for(self.topic), rectified=rectified)

    def frame_camera(self, camera: PinholeCamera | None, width: int, height: int,
                     exif: ExifFocal | None = None) -> PinholeCamera | None:
        """The camera of frames of ``width`` x ``height`` as read (before any resizing):
        ``intrinsics`` at that size, or ``camera`` (from :meth:`camera`) scaled to it, or
        the ``exif`` focal length (from :meth:`exif_focal`) with the principal point at the
        centre.

        Raises:
            CameraModelError: unusable intrinsics, or a calibration of another aspect ratio.
        """
        if self.intrinsics is not None:
            return camera_from_intrinsics(self.intrinsics, width, height)
        if camera is not None:
            return camera_for_frames(camera, width, height)
        f = None if exif is None else exif.focal_px(width, height)
        if f is None:
            return None
        if not 0.2 * max(width, height) <= f <= 10 * max(width, height):
            log.warning("frames: the EXIF focal length (%s) gives %.0f px for %dx%d photos: "
                        "implausible, ignored (COLMAP estimates it)", exif.describe() if exif
                        else "", f, width, height)
            return None
        return PinholeCamera(width, height, f, f, (width - 1) / 2, (height - 1) / 2)

    def intrinsics_source(self, camera: PinholeCamera | None) -> str | None:
        """What gives the intrinsics, as ``camera.json`` records it: ``intrinsics_option``,
        ``calibration_file``, ``camera_info`` (a bag's), or None (EXIF or COLMAP), given
        ``camera`` from :meth:`camera`."""
        if self.intrinsics is not None:
            return "intrinsics_option"
        if self.calibration is not None:
            return "calibration_file"
        return "camera_info" if camera is not None else None

    def exif_focal(self) -> ExifFocal | None:
        """The EXIF focal length of an image folder's photos (the most common one when they
        differ: one camera model is fitted to all), or None (no folder, no usable tags)."""
        if self.images is None or not Path(self.images).is_dir():
            return None
        found: collections.Counter[ExifFocal] = collections.Counter()
        for path in _image_files(Path(self.images)):
            try:
                with path.open("rb") as f:
                    focal = read_exif_focal(f.read(_EXIF_BYTES))
            except OSError:
                continue
            if focal is not None:  # portrait and landscape photos of one camera are alike
                size = None if focal.pixel_size is None else (
                    max(focal.pixel_size), min(focal.pixel_size))
                found[ExifFocal(focal.focal_mm, focal.focal_35mm, focal.plane_px_per_mm,
                                size)] += 1
        if not found:
            return None
        (focal, n), *others = found.most_common()
        if others:
            log.warning("frames: the photos' EXIF gives %d focal lengths (zoom?); using the "
                        "most common (%s, %d photos): SfM fits one camera to all",
                        len(found), focal.describe(), n)
        return focal


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian: high for sharp images, low for blurred ones."""
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def iter_video(path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
    """``(stamp, rgb)`` of a video file; stamps are the video's own time in seconds."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputDataError(f"cannot open video {path} (unknown container or codec)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            msec = cap.get(cv2.CAP_PROP_POS_MSEC)
            stamp = msec / 1000.0 if msec > 0 or index == 0 else index / fps
            yield stamp, np.ascontiguousarray(bgr[:, :, ::-1])
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise InputDataError(f"video {path} has no readable frames")


def _read_image_file(path: Path) -> np.ndarray:
    """RGB of an image file; truncated or corrupt files raise ImageDecodeError.

    JPEG and PNG (told by their content, not their name) are checked for their end marker
    before decoding and go through the decoder of compressed bag messages: libjpeg would
    pad a truncated JPEG with grey and only warn.
    """
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in data[-16:]:
            raise ImageDecodeError(f"{path.name}: truncated PNG (no IEND chunk)")
        return decode_compressed(data)
    if data.startswith(b"\xff\xd8"):
        data = data.rstrip(b"\x00")  # zero padding after the end marker is harmless
        if not data.endswith(b"\xff\xd9"):
            raise ImageDecodeError(f"{path.name}: truncated JPEG (no end-of-image marker)")
        return decode_compressed(data)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise ImageDecodeError(f"cannot decode {path.name}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _image_files(path: Path) -> list[Path]:
    """The image files of a folder, sorted by name."""
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def iter_image_folder(path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
    """``(stamp, rgb)`` of the images in a folder, sorted by name.

    A file named after a number (``1700000000.123.png``) takes it as its stamp; otherwise
    the stamp is the image's index. Unreadable, corrupt or truncated files are skipped and
    counted (one warning at the end), as bad messages in a bag are.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputDataError(f"image folder not found: {path}")
    files = _image_files(path)
    if not files:
        raise InputDataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    skipped: list[str] = []
    for i, f in enumerate(files):
        try:
            rgb = _read_image_file(f)
        except (ImageDecodeError, OSError) as exc:
            log.debug("skipping %s: %s", f, exc)
            skipped.append(f.name)
            continue
        stem_num = re.fullmatch(r"\d+(\.\d+)?", f.stem)
        yield (float(f.stem) if stem_num else float(i)), rgb
    if skipped:
        log.warning("skipped %d unreadable, corrupt or truncated image(s) of %d in %s "
                    "(first: %s)", len(skipped), len(files), path, skipped[0])


class KeyframeSelector:
    """Stateful keyframe test applied to frames in time order."""

    def __init__(self, config: KeyframeConfig) -> None:
        self.config = config
        self._recent: collections.deque[float] = collections.deque(
            maxlen=max(1, config.blur_window))
        self._last_stamp: float | None = None
        self._last_thumb: np.ndarray | None = None
        self.skipped: collections.Counter[str] = collections.Counter()

    def accept(self, stamp: float, rgb: np.ndarray) -> bool:
        """True when the frame is a keyframe; counts the reason otherwise."""
        cfg = self.config
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        sharp = sharpness(gray)
        self._recent.append(sharp)
        if len(self._recent) >= 3 and sharp < cfg.blur_ratio * float(np.median(self._recent)):
            gap = None if self._last_stamp is None else stamp - self._last_stamp
            if not (cfg.max_blur_gap > 0 and gap is not None and gap >= cfg.max_blur_gap):
                self.skipped["blurred"] += 1
                return False
            self.skipped["blurred_kept_for_the_gap"] += 1  # counted, kept (if not a duplicate)
        if self._last_stamp is not None and stamp - self._last_stamp < cfg.min_time_step:
            self.skipped["time_step"] += 1
            return False
        thumb = cv2.resize(gray, (80, 60), interpolation=cv2.INTER_AREA).astype(np.float32)
        if self._last_thumb is not None and (
            float(np.abs(thumb - self._last_thumb).mean()) < cfg.min_change
        ):
            self.skipped["duplicate"] += 1
            return False
        self._last_stamp, self._last_thumb = stamp, thumb
        return True


class _KeptStamps:
    """Stamps that must have a frame near them (control points): the nearest frame within
    ``window_ns`` is written when keyframing kept none there."""

    def __init__(self, stamps_ns: Sequence[int], window_ns: int) -> None:
        self.pending = sorted(int(s) for s in stamps_ns)
        self.window = int(window_ns)
        self.best: dict[int, tuple[int, int, np.ndarray]] = {}  # stamp -> (|dt|, frame, rgb)
        self.forced = 0

    def offer(self, stamp_ns: int, rgb: np.ndarray) -> None:
        """Remember the frame as a candidate for every pending stamp whose window holds it."""
        for target in self.pending:
            if target - self.window > stamp_ns:
                break
            dt = abs(stamp_ns - target)
            if dt <= self.window and dt < self.best.get(target, (dt + 1,))[0]:
                self.best[target] = (dt, stamp_ns, rgb)

    def due(self, stamp_ns: int | None, kept_ns: list[int]) -> list[tuple[int, np.ndarray]]:
        """Frames to write now: for each stamp whose window ``stamp_ns`` has passed (all of
        them at the end, ``None``) and that no kept frame covers, its nearest frame."""
        out: list[tuple[int, np.ndarray]] = []
        while self.pending and (stamp_ns is None or stamp_ns > self.pending[0] + self.window):
            target = self.pending.pop(0)
            candidate = self.best.pop(target, None)
            i = bisect.bisect_left(kept_ns, target - self.window)
            covered = i < len(kept_ns) and kept_ns[i] <= target + self.window
            if candidate is not None and not covered and (not out or candidate[1] > out[-1][0]):
                out.append((candidate[1], candidate[2]))
                self.forced += 1
        return out


def extract_frames(
    source: FrameSource, out: str | os.PathLike, config: KeyframeConfig = KeyframeConfig(),
    *, overwrite: bool = False, progress: bool = True, keep_stamps_ns: Sequence[int] = (),
    keep_window_s: float = 0.25,
) -> Path:
    """Select keyframes from ``source`` into dataset folder ``out``; return ``frames.csv``.

    Skips the work when ``frames.csv`` exists, unless ``overwrite``. Each stamp of
    ``keep_stamps_ns`` (the control points') gets its nearest frame within
    ``keep_window_s`` even where keyframing would skip every frame there (the walk paused:
    duplicates), so that alignment finds a frame for every control point in the bag.
    """
    out = Path(out)
    csv_path = out / "frames.csv"
    if csv_path.exists() and not overwrite:
        _check_same_source(out, source)
        log.info("frames: %s exists, skipping (use overwrite to redo)", csv_path)
        return csv_path
    out.mkdir(parents=True, exist_ok=True)
    selector = KeyframeSelector(config)
    rows: list[tuple[str, int]] = []
    seen = 0
    camera = source.camera()
    camera_source = source.intrinsics_source(camera)
    exif = source.exif_focal() if camera_source is None else None
    size: tuple[int, int] | None = None
    ext = ".png" if config.jpeg_quality >= 100 else ".jpg"
    params = [] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
    kept = _KeptStamps(keep_stamps_ns, int(keep_window_s * 1e9))
    kept_ns: list[int] = []

    def write(stamp_ns: int, rgb: np.ndarray) -> None:
        nonlocal size, camera
        if size is None:  # the first frame: the camera at the size the source delivers
            camera = source.frame_camera(camera, rgb.shape[1], rgb.shape[0], exif)
        if config.max_width and rgb.shape[1] > config.max_width:
            h = int(round(rgb.shape[0] * config.max_width / rgb.shape[1]))
            rgb = cv2.resize(rgb, (config.max_width, h), interpolation=cv2.INTER_AREA)
        if size is None:
            size = (rgb.shape[1], rgb.shape[0])
        name = f"{len(rows):06d}{ext}"
        if not cv2.imwrite(str(tmp / name), rgb[:, :, ::-1], params):
            raise InputDataError(f"could not write frame {tmp / name}")
        rows.append((name, stamp_ns))
        kept_ns.append(stamp_ns)

    with atomic_dir(out / "images") as tmp:
        bar = tqdm(source.frames(), desc="frames", unit="frame", disable=not progress)
        for stamp_ns, rgb in bar:
            seen += 1
            if rows and stamp_ns <= rows[-1][1]:
                log.warning("frame at %s s is not after the previous one; skipped",
                            format_stamp(stamp_ns))
                continue
            for due_ns, due_rgb in kept.due(stamp_ns, kept_ns):
                write(due_ns, due_rgb)
            if config.max_frames and len(rows) >= config.max_frames:
                break
            if not selector.accept(stamp_ns / 1e9, rgb):
                kept.offer(stamp_ns, rgb)
                continue
            write(stamp_ns, rgb)
            bar.set_postfix(kept=len(rows))
            if config.max_frames and len(rows) >= config.max_frames:
                break
        else:
            for due_ns, due_rgb in kept.due(None, kept_ns):
                write(due_ns, due_rgb)
        if not rows:
            raise InputDataError(f"no usable frames in the source ({seen} read)")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "stamp"])
    w.writerows((name, format_stamp(stamp_ns)) for name, stamp_ns in rows)
    if camera is not None and size is not None:
        meta = {**camera.scaled(*size).to_dict(), "source": camera_source or EXIF_SOURCE}
        if camera_source is None and exif is not None:
            meta["exif"] = exif.describe()
        log.info("frames: intrinsics from %s%s (fx %.1f px at %dx%d)", meta["source"],
                 f" ({meta['exif']}: a prior SfM refines)" if "exif" in meta else "",
                 meta["fx"], *size)
        write_json_atomic(out / "camera.json", meta)
    else:
        (out / "camera.json").unlink(missing_ok=True)  # an earlier run's, of other frames
        log.info("frames: no intrinsics known (no CameraInfo, calibration, --intrinsics or "
                 "EXIF focal length): COLMAP estimates them")
    write_json_atomic(out / SOURCE_JSON, source.record())
    write_text_atomic(csv_path, buf.getvalue())
    log.info("frames: kept %d of %d (skipped: %s; kept for control points: %d)", len(rows),
             seen, dict(selector.skipped), kept.forced)
    if (out / "sfm").exists():
        log.warning("frames redone: %s holds the SfM of the earlier frames until it is "
                    "redone (`sfm --overwrite`; `dataset --overwrite` does it)", out / "sfm")
    return csv_path


def _check_same_source(out: Path, source: FrameSource) -> None:
    """Refuse to reuse ``out``'s frames when they came from another source."""
    path = out / SOURCE_JSON
    if not path.is_file():
        return  # made before sources were recorded
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        old = None
    if old != source.record():
        were = ", ".join(f"{k} {v}" for k, v in old.items()) if isinstance(old, dict) else (
            "an unreadable source.json")
        now = ", ".join(f"{k} {v}" for k, v in source.record().items())
        raise InputDataError(
            f"{out} holds frames of another source ({were}; now {now}): use --overwrite to "
            "redo the frames (and the stages after them), or another --out")


def read_frames_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Image names and int64 nanosecond stamps of a ``frames.csv``."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path} not found: run `camera-pose frames` first")
    header, rows = read_csv_rows(path, "frames file")
    if not {"image", "stamp"} <= set(header):
        raise InputDataError(f"{path}: expected columns image,stamp")
    try:
        stamps = np.array([parse_stamp(r["stamp"]) for r in rows], dtype=np.int64)
    except FormatError as exc:
        raise InputDataError(f"{path}: unparsable stamp ({exc})") from exc
    return [r["image"] for r in rows], stamps
