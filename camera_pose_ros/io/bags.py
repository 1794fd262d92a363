"""ROS 2 bags (MCAP or sqlite3) through rosbags: no ROS installation needed.

Readers decode image messages with :mod:`camera_pose_ros.io.images`; writers take
numpy images and write ``sensor_msgs/Image`` and ``CameraInfo``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_typestore

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import BagError, CameraModelError, ImageDecodeError
from camera_pose_ros.io.images import decode_compressed, decode_raw, encode_raw

__all__ = [
    "TYPESTORE",
    "IMAGE_TYPES",
    "BagFrame",
    "BagImageWriter",
    "camera_info_topic_for",
    "open_bag",
    "read_messages",
    "storage_files",
    "unfinished_reason",
    "repair_hint",
    "list_topics",
    "iter_bag_images",
    "iter_bag_depth",
    "depth_image_message",
    "DEPTH_TOPICS",
    "read_camera_info",
    "image_frame_id",
    "ros_header",
]

log = logging.getLogger(__name__)

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
_Image = TYPESTORE.types["sensor_msgs/msg/Image"]
_CameraInfo = TYPESTORE.types["sensor_msgs/msg/CameraInfo"]
_Header = TYPESTORE.types["std_msgs/msg/Header"]
_Time = TYPESTORE.types["builtin_interfaces/msg/Time"]
_RegionOfInterest = TYPESTORE.types["sensor_msgs/msg/RegionOfInterest"]
#: depth topics registered to the colour image, looked for when none is named: the synthetic
#: building's, and a RealSense's depth aligned to colour (``align_depth.enable``)
DEPTH_TOPICS = ("/camera/depth/image_raw", "/camera/aligned_depth_to_color/image_raw",
                "/camera/camera/aligned_depth_to_color/image_raw")


@dataclass
class BagFrame:
    """One decoded image from a bag. ``stamp_ns`` is the header stamp (bag time if zero)."""

    stamp_ns: int
    image_rgb: np.ndarray

    @property
    def stamp(self) -> float:
        """Float seconds."""
        return self.stamp_ns / 1e9


def camera_info_topic_for(image_topic: str) -> str:
    """The camera_info topic beside an image topic (``/cam/image_raw`` -> ``/cam/camera_info``)."""
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        base = base[: -len("/compressed")]
    return base.rsplit("/", 1)[0] + "/camera_info"


REPAIR_MAGIC = b"\x89MCAP0\r\n"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def storage_files(bag: Path) -> list[Path]:
    """The storage files (``*.mcap``, ``*.db3``) of a bag folder, or the bag file itself."""
    if bag.is_file():
        return [bag]
    try:
        return sorted(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3") and p.is_file())
    except OSError:
        return []


def unfinished_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` looks like a recording that was cut off (recorder killed), or None.

    A bag folder with storage files but no ``metadata.yaml``, or an MCAP file that does not
    end with the MCAP magic (no summary and footer: the writer never closed it).
    """
    bag = Path(path)
    files = storage_files(bag)
    if bag.is_dir() and files and not (bag / "metadata.yaml").exists():
        return "it has no metadata.yaml (the recorder did not close it)"
    for f in files:
        if f.suffix != ".mcap":
            continue
        try:
            with f.open("rb") as fh:
                head = fh.read(8)
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - 8))
                tail = fh.read(8)
        except OSError:
            continue
        if head == REPAIR_MAGIC and tail != REPAIR_MAGIC:
            return f"{f.name} ends without the MCAP footer (cut off while recording)"
    return None


def repair_hint(path: str | os.PathLike) -> str:
    """The command that recovers what an unfinished bag holds."""
    return f"recover its messages with `camera-pose bag-repair {path}`"


def open_bag(path: str | os.PathLike) -> AnyReader:
    """An open :class:`AnyReader` on bag ``path`` (close it when done).

    Raises:
        BagError: the bag is missing, unfinished (recorder killed: the message names
            ``camera-pose bag-repair``) or unreadable; always a one-line message.
    """
    bag = Path(path)
    if not bag.exists():
        raise BagError(f"bag not found: {bag}")
    reason = unfinished_reason(bag)
    if reason is not None:
        raise BagError(f"bag {bag} is unfinished: {reason}; {repair_hint(bag)}")
    try:
        reader = AnyReader([bag], default_typestore=TYPESTORE)
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for unreadable bags
        raise BagError(f"cannot read bag {bag}: {_one_line(exc)}") from exc
    return reader


def read_messages(reader: AnyReader, connections: list[Connection], path: str | os.PathLike
                  ) -> Iterator[tuple[Connection, int, bytes]]:
    """``(connection, log_time_ns, raw)`` of ``connections`` in bag order.

    Raises:
        BagError: the bag cannot be read past some point (a corrupt or cut-off chunk).
    """
    it = reader.messages(connections=connections)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:  # rosbags: ReaderError, struct.error, decompression errors
            raise BagError(f"cannot read bag {path} past a damaged part: {_one_line(exc)}; "
                           f"{repair_hint(path)}") from exc
        yield item


def list_topics(path: str | os.PathLike) -> dict[str, str]:
    """Topic name -> message type of a bag."""
    reader = open_bag(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def _stamp_of(msg: Any, log_time_ns: int) -> int:
    st = msg.header.stamp
    ns = int(st.sec) * 1_000_000_000 + int(st.nanosec)
    return ns if ns > 0 else int(log_time_ns)


#: per-message warnings logged before the rest go to debug (the count comes at the end)
_WARN_FIRST = 5


def iter_bag_images(
    path: str | os.PathLike, topic: str = "/camera/image_raw", *, skip_bad: bool = True
) -> Iterator[BagFrame]:
    """Decoded RGB frames of ``topic`` in bag order.

    A message that cannot be deserialized (corrupt CDR) or decoded (bad encoding, size or
    compressed data) is skipped with a warning; how many were skipped is logged once the
    iteration ends.

    Args:
        path: bag folder (or a single .mcap/.db3 file).
        topic: an Image or CompressedImage topic.
        skip_bad: log and skip undecodable messages (True) or raise: :class:`ImageDecodeError`
            for an image that cannot be decoded, :class:`BagError` for a message that cannot
            be deserialized.

    Raises:
        BagError: missing, unfinished or unreadable bag, or no such image topic (the message
            lists the image topics the bag has).
    """
    reader = open_bag(path)
    skipped = total = 0
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            images = sorted(c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES)
            raise BagError(
                f"bag {path} has no topic '{topic}'; image topics in it: "
                + (", ".join(images) if images else "none")
            )
        if conns[0].msgtype not in IMAGE_TYPES:
            raise BagError(f"topic '{topic}' in {path} is {conns[0].msgtype}, not an image")
        for conn, log_ns, raw in read_messages(reader, conns, path):
            total += 1
            try:
                try:  # Any: rosbags builds message classes at run time
                    msg: Any = reader.deserialize(raw, conn.msgtype)
                except Exception as exc:  # rosbags: AnyReaderError, struct/index errors
                    raise BagError(f"cannot deserialize the message at {log_ns / 1e9:.3f} s "
                                   f"on {topic} in {path}: {_one_line(exc)}") from exc
                if conn.msgtype.endswith("CompressedImage"):
                    rgb = decode_compressed(msg.data, msg.format)
                else:
                    rgb = decode_raw(msg.data, width=msg.width, height=msg.height,
                                     encoding=msg.encoding, step=msg.step)
            except (ImageDecodeError, BagError) as exc:
                if not skip_bad:
                    raise
                skipped += 1
                level = logging.WARNING if skipped <= _WARN_FIRST else logging.DEBUG
                if isinstance(exc, BagError):
                    log.log(level, "skipping: %s", exc)
                else:
                    log.log(level, "skipping frame at %.3f s on %s: %s", log_ns / 1e9, topic,
                            exc)
                continue
            yield BagFrame(_stamp_of(msg, log_ns), rgb)
    finally:
        reader.close()
        if skipped:
            log.warning("skipped %d undecodable message(s) of %d read on %s in %s",
                        skipped, total, topic, path)


def _first_decoded(path: str | os.PathLike, topic: str, what: str) -> Any | None:
    """The first message on ``topic`` that deserializes (corrupt ones are skipped with a
    warning), or None when there is none."""
    reader = open_bag(path)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, log_ns, raw in read_messages(reader, conns, path):
            try:
                return reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # corrupt CDR: try the next one
                log.warning("skipping undecodable %s at %.3f s on %s: %s", what,
                            log_ns / 1e9, topic, _one_line(exc))
        return None
    finally:
        reader.close()


def depth_image_message(stamp_ns: int, frame_id: str, depth_m: np.ndarray) -> Any:
    """A ``sensor_msgs/Image`` of a depth map (metres) as REP 118's ``16UC1`` millimetres;
    0 where there is no measurement (non-finite, non-positive or beyond 65.5 m)."""
    d = np.asarray(depth_m, np.float64)
    mm = np.where(np.isfinite(d) & (d > 0) & (d < 65.535), np.round(d * 1000.0), 0.0)
    data = np.ascontiguousarray(mm.astype("<u2"))
    h, w = data.shape
    return _Image(header=_header(stamp_ns, frame_id), height=h, width=w, encoding="16UC1",
                  is_bigendian=0, step=2 * w, data=np.frombuffer(data.tobytes(), np.uint8))


def decode_depth(msg: Any) -> np.ndarray:
    """(H, W) float32 metres of a depth ``sensor_msgs/Image`` (``16UC1``/``mono16``
    millimetres or ``32FC1`` metres, REP 118); NaN where there is no measurement.

    Raises:
        ImageDecodeError: another encoding, or data that does not fit the size.
    """
    enc = str(msg.encoding).lower()
    dtype = {"16uc1": "u2", "mono16": "u2", "32fc1": "f4"}.get(enc)
    if dtype is None:
        raise ImageDecodeError(f"depth encoding {msg.encoding!r} is not 16UC1, mono16 or "
                               "32FC1")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    item = np.dtype(dtype).itemsize
    raw = np.asarray(msg.data, np.uint8)
    if h <= 0 or w <= 0 or step < w * item or raw.size < h * step:
        raise ImageDecodeError(f"depth image of {raw.size} bytes does not fit {w}x{h} "
                               f"(step {step})")
    rows = raw[:h * step].reshape(h, step)[:, :w * item]
    order = ">" if msg.is_bigendian else "<"
    d = np.ascontiguousarray(rows).view(order + dtype).reshape(h, w).astype(np.float32)
    if dtype == "u2":
        d = d / np.float32(1000.0)
    return np.where(np.isfinite(d) & (d > 0), d, np.float32(np.nan))


def iter_bag_depth(path: str | os.PathLike, topic: str) -> Iterator[tuple[int, np.ndarray]]:
    """``(stamp_ns, depth (H, W) float32 metres, NaN where unmeasured)`` of a depth image
    topic in bag order; undecodable messages are skipped with a warning.

    Raises:
        BagError: missing or unreadable bag, or no such topic.
    """
    reader = open_bag(path)
    skipped = 0
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise BagError(f"bag {path} has no depth topic '{topic}'")
        if conns[0].msgtype != "sensor_msgs/msg/Image":
            raise BagError(f"topic '{topic}' in {path} is {conns[0].msgtype}, not a "
                           "sensor_msgs/Image depth image")
        for conn, log_ns, raw in read_messages(reader, conns, path):
            try:
                msg: Any = reader.deserialize(raw, conn.msgtype)
                depth = decode_depth(msg)
            except Exception as exc:  # corrupt CDR or an undecodable image: skip it
                skipped += 1
                log.log(logging.WARNING if skipped <= _WARN_FIRST else logging.DEBUG,
                        "skipping depth image at %.3f s on %s: %s", log_ns / 1e9, topic,
                        _one_line(exc))
                continue
            yield _stamp_of(msg, log_ns), depth
    finally:
        reader.close()
        if skipped:
            log.warning("skipped %d undecodable depth image(s) on %s in %s", skipped, topic,
                        path)


def image_frame_id(path: str | os.PathLike, topic: str) -> str:
    """``header.frame_id`` of the first decodable message on image ``topic`` ('' if none)."""
    msg = _first_decoded(path, topic, "image")
    return "" if msg is None else str(msg.header.frame_id).lstrip("/")


def read_camera_info(path: str | os.PathLike, topic: str, rectified: bool = False
                     ) -> PinholeCamera | None:
    """Intrinsics from the first CameraInfo on ``topic``, or None when the bag has none.

    ``rectified``: the images it describes are rectified (``image_rect``): P, no distortion.
    A CameraInfo message that cannot be deserialized is skipped (the next one is used).
    """
    msg = _first_decoded(path, topic, "CameraInfo")
    if msg is None:
        return None
    try:
        return PinholeCamera.from_camera_info(msg.width, msg.height, msg.k, msg.d,
                                              msg.distortion_model, msg.p, rectified)
    except (CameraModelError, ValueError, AttributeError) as exc:
        log.warning("ignoring CameraInfo on %s (COLMAP will estimate the intrinsics): %s",
                    topic, exc)
        return None


#: the QoS a ``/tf_static`` broadcaster offers (reliable, transient local, keep last 1)
_LATCHED_QOS = (
    "- history: 1\n  depth: 1\n  reliability: 1\n  durability: 1\n"
    "  deadline:\n    sec: 2147483647\n    nsec: 4294967295\n"
    "  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n"
    "  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n"
    "  avoid_ros_namespace_conventions: false\n"
)


def ros_header(stamp_ns: int, frame_id: str) -> Any:
    """A ``std_msgs/Header`` (rosbags type) stamped ``stamp_ns`` in ``frame_id``."""
    return _header(stamp_ns, frame_id)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return _Header(stamp=_Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                   frame_id=frame_id)


class BagImageWriter:
    """Write RGB frames (and their CameraInfo) to a new ROS 2 bag.

    Used as a context manager; the bag's metadata is written on exit, so a bag is complete
    only once the ``with`` block ends.
    """

    def __init__(
        self, path: str | os.PathLike, *, image_topic: str = "/camera/image_raw",
        camera_info_topic: str | None = None, frame_id: str = "camera_optical_frame",
        storage: str = "mcap", encoding: str = "rgb8",
    ) -> None:
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise BagError(f"unknown bag storage '{storage}'; use mcap or sqlite3")
        self._writer = Writer(Path(path), version=9, storage_plugin=plugin)
        self._image_topic = image_topic
        self._info_topic = camera_info_topic or camera_info_topic_for(image_topic)
        self._frame_id = frame_id
        self._encoding = encoding
        self._extra: dict[str, Connection] = {}

    def __enter__(self) -> BagImageWriter:
        self._writer.open()
        self._img_conn = self._writer.add_connection(
            self._image_topic, _Image.__msgtype__, typestore=TYPESTORE)
        self._info_conn = self._writer.add_connection(
            self._info_topic, _CameraInfo.__msgtype__, typestore=TYPESTORE)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._writer.close()

    def write_message(self, topic: str, msgtype: str, stamp_ns: int, msg: Any, *,
                      latched: bool = False) -> None:
        """Write any message (built from :data:`TYPESTORE`'s types) on another topic.

        ``latched``: offer the topic as transient-local (``/tf_static``), so a replay
        delivers it to late subscribers as the original publisher did.
        """
        conn = self._extra.get(topic)
        if conn is None:
            qos = parse_qos(_LATCHED_QOS) if latched else []
            conn = self._extra[topic] = self._writer.add_connection(
                topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=qos)
        self._writer.write(conn, stamp_ns, TYPESTORE.serialize_cdr(msg, msgtype))

    def write(self, stamp_ns: int, image_rgb: np.ndarray, camera: PinholeCamera) -> None:
        """Write one frame and its CameraInfo, both stamped ``stamp_ns``."""
        data, step = encode_raw(image_rgb, self._encoding)
        h, w = image_rgb.shape[:2]
        header = _header(stamp_ns, self._frame_id)
        img = _Image(header=header, height=h, width=w, encoding=self._encoding, is_bigendian=0,
                     step=step, data=np.frombuffer(data, np.uint8))
        self._writer.write(self._img_conn, stamp_ns,
                           TYPESTORE.serialize_cdr(img, _Image.__msgtype__))
        k = camera.matrix()
        model, d = camera.camera_info_distortion()
        p = np.zeros((3, 4))
        p[:3, :3] = k
        info = _CameraInfo(
            header=header, height=h, width=w, distortion_model=model, d=np.array(d),
            k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
            binning_x=0, binning_y=0,
            roi=_RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        self._writer.write(self._info_conn, stamp_ns,
                           TYPESTORE.serialize_cdr(info, _CameraInfo.__msgtype__))


def is_rectified_topic(image_topic: str) -> bool:
    """Whether an image topic carries rectified images by image_pipeline's naming.

    ``image_rect``, ``image_rect_color`` (and their ``/compressed``) are rectified;
    ``image_raw``, ``image_color``, ``image`` are not.
    """
    parts = [p for p in image_topic.split("/") if p and p != "compressed"]
    return bool(parts) and parts[-1].startswith("image_rect")
