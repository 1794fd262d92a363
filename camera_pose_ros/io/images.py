"""Decode and encode camera images given as raw fields of sensor_msgs Image/CompressedImage.

Pure numpy/OpenCV: the ROS layer and the bag readers pass the message fields, so the same
checks apply to live frames and recorded ones. Output is always RGB uint8 (H, W, 3).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from camera_pose_ros.errors import ImageDecodeError

__all__ = ["SUPPORTED_ENCODINGS", "decode_raw", "decode_compressed", "encode_raw",
           "compressed_image_size"]

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
