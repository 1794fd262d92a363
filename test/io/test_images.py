"""camera_pose_ros.io.images: raw and compressed image fields decode, encode, refuse bad data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import ImageDecodeError
from camera_pose_ros.io.images import decode_compressed, decode_raw, encode_raw
from test.conftest import textured

CAM = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "rgba8", "bgra8"])
def test_raw_encodings_round_trip(encoding):
    rgb = textured(0)
    data, step = encode_raw(rgb, encoding)
    out = decode_raw(data, width=64, height=48, encoding=encoding, step=step)
    if encoding == "mono8":
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        assert np.array_equal(out, np.repeat(gray[:, :, None], 3, 2))
    else:
        assert np.array_equal(out, rgb)


def test_raw_with_row_padding():
    rgb = textured(1)
    padded = np.zeros((48, 64 * 3 + 8), np.uint8)
    padded[:, : 64 * 3] = rgb.reshape(48, -1)
    out = decode_raw(padded.tobytes(), width=64, height=48, encoding="rgb8", step=64 * 3 + 8)
    assert np.array_equal(out, rgb)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"encoding": "16UC1"}, "unsupported image encoding"),
        ({"step": 10}, "smaller than a row"),
        ({"width": 0}, "empty image"),
        ({"data": b"\x00" * 100}, "expected step\\*height"),
        ({"data": b""}, "expected step\\*height"),
    ],
)
def test_bad_raw_images_are_refused(kwargs, match):
    fields = {"data": bytes(64 * 48 * 3), "width": 64, "height": 48, "encoding": "rgb8",
              "step": 64 * 3}
    fields.update(kwargs)
    data = fields.pop("data")
    with pytest.raises(ImageDecodeError, match=match):
        decode_raw(data, **fields)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed_round_trip(ext):
    rgb = textured(2)
    ok, buf = cv2.imencode(ext, rgb[:, :, ::-1])
    assert ok
    fmt = "rgb8; jpeg compressed bgr8" if ext == ".jpg" else "png"
    out = decode_compressed(buf.tobytes(), fmt)
    if ext == ".png":
        assert np.array_equal(out, rgb)
    else:  # lossy: the same pixels as OpenCV's own decoder, in RGB order
        assert np.array_equal(out, cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    ok, buf = cv2.imencode(ext, red[:, :, ::-1])
    got = decode_compressed(buf.tobytes(), ext[1:])
    assert got[8, 8, 0] > 240 and got[8, 8, 2] < 15


@pytest.mark.parametrize("mangle", ["empty", "truncated", "garbage"])
def test_corrupt_compressed_is_refused(mangle):
    ok, buf = cv2.imencode(".jpg", textured(3)[:, :, ::-1])
    data = {"empty": b"", "truncated": buf.tobytes()[: len(buf) // 2],
            "garbage": b"\xff\xd8" + bytes(range(256)) * 4}[mangle]
    with pytest.raises(ImageDecodeError):
        decode_compressed(data, "jpeg")
