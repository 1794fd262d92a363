"""Decode and encode camera images given as raw fields of sensor_msgs Image/CompressedImage.

Pure numpy/OpenCV: the ROS layer and the bag readers pass the message fields, so the same
checks apply to live frames and recorded ones. Output is always RGB uint8 (H, W, 3).
:func:`read_exif_focal` reads a photo's EXIF focal length (JPEG, PNG or TIFF headers).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from camera_pose_ros.errors import ImageDecodeError

__all__ = ["SUPPORTED_ENCODINGS", "decode_raw", "decode_compressed", "encode_raw",
           "compressed_image_size", "ExifFocal", "read_exif_focal"]

#: encoding -> channels
SUPPORTED_ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


def decode_raw(
    data: bytes | bytearray | memoryview | np.ndarray, *, width: int, height: int,
    encoding: str, step: int,
) -> np.ndarray:
    """RGB uint8 image from the fields of a ``sensor_msgs/Image``.

    Raises:
        ImageDecodeError: unsupported encoding, zero size, ``step`` smaller than a row, or
            ``data`` shorter than ``step * height``.
    """
    enc = encoding.lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported image encoding '{encoding}'; supported: "
            + ", ".join(SUPPORTED_ENCODINGS)
        )
    channels = SUPPORTED_ENCODINGS[enc]
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    if step < width * channels:
        raise ImageDecodeError(
            f"step {step} is smaller than a row of {width} {enc} pixels ({width * channels} bytes)"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else (
        data.reshape(-1).view(np.uint8)
    )
    if buf.size < step * height:
        raise ImageDecodeError(
            f"image data has {buf.size} bytes, expected step*height = {step * height}"
        )
    rows = buf[: step * height].reshape(height, step)[:, : width * channels]
    img = rows.reshape(height, width, channels)
    if enc == "rgb8":
        return np.ascontiguousarray(img)
    if enc == "bgr8":
        return np.ascontiguousarray(img[:, :, ::-1])
    if enc == "mono8":
        return np.repeat(img, 3, axis=2)
    if enc == "rgba8":
        return np.ascontiguousarray(img[:, :, :3])
    return np.ascontiguousarray(img[:, :, 2::-1])  # bgra8


def decode_compressed(
    data: bytes | bytearray | memoryview | np.ndarray, fmt: str = ""
) -> np.ndarray:
    """RGB uint8 image from the fields of a ``sensor_msgs/CompressedImage`` (jpeg or png).

    Raises:
        ImageDecodeError: empty, truncated or corrupt data, or a format OpenCV cannot read.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size == 0:
        raise ImageDecodeError("compressed image is empty")
    f = fmt.lower()
    if f and not any(k in f for k in ("jpeg", "jpg", "png")):
        raise ImageDecodeError(f"unsupported compressed format '{fmt}'; use jpeg or png")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError(f"corrupt or truncated compressed image ({buf.size} bytes)")
    if buf.size > 2 and buf[0] == 0xFF and buf[1] == 0xD8 and not (
        buf[-2] == 0xFF and buf[-1] == 0xD9
    ):
        # libjpeg pads a truncated stream with grey and only warns: refuse it here
        raise ImageDecodeError(f"truncated jpeg ({buf.size} bytes, no end-of-image marker)")
    return np.ascontiguousarray(img[:, :, ::-1])


def encode_raw(rgb_HW3: np.ndarray, encoding: str = "rgb8") -> tuple[bytes, int]:
    """Bytes and step of an RGB image in ``encoding`` (the inverse of :func:`decode_raw`)."""
    enc = encoding.lower()
    if enc == "rgb8":
        out = rgb_HW3
    elif enc == "bgr8":
        out = rgb_HW3[:, :, ::-1]
    elif enc == "mono8":
        out = cv2.cvtColor(np.ascontiguousarray(rgb_HW3), cv2.COLOR_RGB2GRAY)[:, :, None]
    elif enc == "rgba8":
        out = np.concatenate([rgb_HW3, np.full(rgb_HW3.shape[:2] + (1,), 255, np.uint8)], 2)
    elif enc == "bgra8":
        alpha = np.full(rgb_HW3.shape[:2] + (1,), 255, np.uint8)
        out = np.concatenate([rgb_HW3[:, :, ::-1], alpha], 2)
    else:
        raise ImageDecodeError(f"unsupported image encoding '{encoding}'")
    out = np.ascontiguousarray(out, dtype=np.uint8)
    return out.tobytes(), out.shape[1] * out.shape[2]


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def compressed_image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a PNG or JPEG stream, read from its header alone.

    Raises:
        ImageDecodeError: neither a PNG nor a JPEG, or a header that gives no size.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError("PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:2] != b"\xff\xd8":
        raise ImageDecodeError("compressed image is neither PNG nor JPEG")
    i = 2
    while i + 4 <= len(data):  # walk the JPEG segments up to the frame header (SOFn)
        if data[i] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG header (no marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return int(width), int(height)
        if length < 2:
            raise ImageDecodeError(f"corrupt JPEG header (segment length {length})")
        i += 2 + length
    raise ImageDecodeError("JPEG without a frame header (no image size)")


#: the diagonal of a 36 x 24 mm frame: a 35 mm equivalent focal length is relative to it
_FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
#: FocalPlaneResolutionUnit -> millimetres (2: inch, 3: cm; Exif 3.0 adds 4: mm, 5: um)
_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_EXIF_IFD, _FOCAL, _FOCAL_35, _PLANE_X, _PLANE_UNIT, _PIXEL_X, _PIXEL_Y = (
    0x8769, 0x920A, 0xA405, 0xA20E, 0xA210, 0xA002, 0xA003)


@dataclass(frozen=True)
class ExifFocal:
    """A photo's focal length as its EXIF tags give it (None: tag absent or unusable).

    Attributes:
        focal_mm: ``FocalLength``, millimetres on the sensor.
        focal_35mm: ``FocalLengthIn35mmFilm``, the 35 mm equivalent (by the diagonal).
        plane_px_per_mm: ``FocalPlaneXResolution`` in pixels per millimetre of the sensor.
        pixel_size: ``PixelXDimension`` and ``PixelYDimension`` (the size those refer to).
    """

    focal_mm: float | None = None
    focal_35mm: float | None = None
    plane_px_per_mm: float | None = None
    pixel_size: tuple[int, int] | None = None

    def focal_px(self, width: int, height: int) -> float | None:
        """Focal length in pixels of the image as decoded (``width`` x ``height``), or None.

        From the 35 mm equivalent (its diagonal against the image's), else from the focal
        length and the focal plane's resolution (scaled when the image was resized since).
        """
        if self.focal_35mm:
            return self.focal_35mm * math.hypot(width, height) / _FULL_FRAME_DIAGONAL_MM
        if self.focal_mm and self.plane_px_per_mm:
            scale = 1.0
            if self.pixel_size and max(self.pixel_size) > 0:
                scale = max(width, height) / max(self.pixel_size)
            return self.focal_mm * self.plane_px_per_mm * scale
        return None

    def describe(self) -> str:
        """The tags used, for the log and camera.json."""
        if self.focal_35mm:
            return f"FocalLengthIn35mmFilm {self.focal_35mm:g} mm"
        return (f"FocalLength {self.focal_mm:g} mm x FocalPlaneXResolution "
                f"{self.plane_px_per_mm or 0:g} px/mm")


def _tiff_tags(tiff: bytes) -> dict[int, float | int]:
    """The numeric tags of IFD0 and of the Exif IFD of a TIFF structure (EXIF's payload)."""
    if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return {}
    order = "<" if tiff[:2] == b"II" else ">"
    sizes = {1: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8, 11: 4, 12: 8}
    tags: dict[int, float | int] = {}

    def ifd(offset: int) -> None:
        if offset < 8 or offset + 2 > len(tiff):
            return
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for k in range(min(count, 512)):
            entry = offset + 2 + 12 * k
            if entry + 12 > len(tiff):
                return
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
            if kind not in sizes or n < 1:
                continue
            at = entry + 8 if sizes[kind] * n <= 4 else struct.unpack_from(
                order + "I", tiff, entry + 8)[0]
            if at + sizes[kind] > len(tiff):
                continue
            if kind == 3:
                tags[tag] = struct.unpack_from(order + "H", tiff, at)[0]
            elif kind in (4, 9):
                tags[tag] = struct.unpack_from(order + ("I" if kind == 4 else "i"), tiff, at)[0]
            elif kind in (5, 10):
                num, den = struct.unpack_from(order + ("II" if kind == 5 else "ii"), tiff, at)
                if den != 0:
                    tags[tag] = num / den
            elif kind in (11, 12):
                (value,) = struct.unpack_from(order + ("f" if kind == 11 else "d"), tiff, at)
                if math.isfinite(value):
                    tags[tag] = value

    ifd(struct.unpack_from(order + "I", tiff, 4)[0])
    exif = tags.pop(_EXIF_IFD, None)
    if isinstance(exif, int):
        ifd(exif)
    return tags


def _exif_payload(data: bytes) -> bytes:
    """The TIFF structure holding a JPEG's (APP1), PNG's (eXIf) or TIFF's tags ('' if none)."""
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return data
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i + 8 <= len(data):
            (length,) = struct.unpack_from(">I", data, i)
            if data[i + 4:i + 8] == b"eXIf":
                return data[i + 8:i + 8 + length]
            if data[i + 4:i + 8] in (b"IDAT", b"IEND"):
                break
            i += 12 + length
        return b""
    if data[:2] != b"\xff\xd8":
        return b""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no more headers
            break
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return data[i + 10:i + 2 + length]
        if length < 2:
            break
        i += 2 + length
    return b""


def read_exif_focal(data: bytes) -> ExifFocal | None:
    """The EXIF focal length tags of a JPEG, PNG or TIFF file's first bytes (64 KiB hold
    them), or None when it has no usable focal length. Malformed tags are ignored, never
    raised: a photo's metadata is a hint, not an input to trust.
    """
    try:
        tags = _tiff_tags(_exif_payload(bytes(data)))
    except struct.error:
        return None

    def positive(tag: int) -> float | None:
        value = tags.get(tag)
        return float(value) if value is not None and 0 < value < 1e6 else None

    plane = positive(_PLANE_X)
    unit = _PLANE_UNIT_MM.get(int(tags.get(_PLANE_UNIT, 2)))  # the standard's default: inch
    size = (int(tags[_PIXEL_X]), int(tags[_PIXEL_Y])) if (
        tags.get(_PIXEL_X, 0) > 0 and tags.get(_PIXEL_Y, 0) > 0) else None
    focal = ExifFocal(positive(_FOCAL), positive(_FOCAL_35),
                      plane / unit if plane is not None and unit else None, size)
    return focal if focal.focal_px(1, 1) is not None else None
