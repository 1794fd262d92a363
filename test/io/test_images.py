"""camera_pose_ros.io.images: raw and compressed image fields decode, encode, refuse bad data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import ImageDecodeError
from camera_pose_ros.io.images import decode_compressed, decode_raw, encode_raw, read_exif_focal
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


def _photo(fmt: str, tags: dict[int, object], size: tuple[int, int] = (40, 30)) -> bytes:
    """An image file written by Pillow (a camera's EXIF writer stand-in) with ``tags`` in its
    Exif IFD."""
    import io

    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(0x8769).update(tags)
    buf = io.BytesIO()
    Image.fromarray(textured(4, size[1], size[0])).save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_35mm_equivalent_focal_length_gives_pixels_by_the_diagonal():
    from PIL.TiffImagePlugin import IFDRational

    focal = read_exif_focal(_photo("JPEG", {0xA405: 26, 0x920A: IFDRational(42, 10)}))
    assert focal is not None and focal.focal_35mm == 26.0 and focal.focal_mm == 4.2
    # a phone's 4:3 12-megapixel photo: 26 mm equivalent is about 3029 px
    assert focal.focal_px(4032, 3024) == pytest.approx(26 * 5040 / np.hypot(36, 24))
    assert focal.focal_px(3024, 4032) == focal.focal_px(4032, 3024)  # portrait, same lens
    assert "35mm" in focal.describe()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_focal_length_and_focal_plane_resolution(fmt):
    from PIL.TiffImagePlugin import IFDRational

    # 4.2 mm on a sensor of 7140 px/cm (1.4 um pixels), recorded at 4032 x 3024
    tags = {0x920A: IFDRational(42, 10), 0xA20E: IFDRational(7140, 1), 0xA210: 3,
            0xA002: 4032, 0xA003: 3024}
    focal = read_exif_focal(_photo(fmt, tags))
    assert focal is not None and focal.focal_35mm is None
    assert focal.focal_px(4032, 3024) == pytest.approx(4.2 * 714.0)
    assert focal.focal_px(1008, 756) == pytest.approx(4.2 * 714.0 / 4)  # resized since


def test_exif_big_endian_tags_are_read():
    import struct

    # TIFF header (Motorola order), IFD0 -> Exif IFD -> FocalLengthIn35mmFilm 28 (SHORT)
    tiff = (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHII", 0x8769, 4, 1, 26) + struct.pack(">I", 0)
            + struct.pack(">H", 1) + struct.pack(">HHIHH", 0xA405, 3, 1, 28, 0)
            + struct.pack(">I", 0))
    app1 = b"Exif\x00\x00" + tiff
    jpeg = b"\xff\xd8\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + b"\xff\xd9"
    focal = read_exif_focal(jpeg)
    assert focal is not None and focal.focal_35mm == 28.0


def test_photos_without_a_usable_focal_length_give_none():
    ok, buf = cv2.imencode(".jpg", textured(5)[:, :, ::-1])
    assert read_exif_focal(buf.tobytes()) is None  # no EXIF at all
    assert read_exif_focal(_photo("JPEG", {0x920A: 4.2})) is None  # no sensor size
    assert read_exif_focal(_photo("JPEG", {0xA405: 0})) is None  # "unknown"
    assert read_exif_focal(b"") is None and read_exif_focal(b"GIF89a") is None


@pytest.mark.parametrize("seed", range(20))
def test_hostile_exif_never_raises(seed):
    """Random bytes where the tags should be, and offsets pointing anywhere: None or a
    focal length, never an exception (a photo's metadata is a hint)."""
    rng = np.random.default_rng(seed)
    good = _photo("JPEG", {0xA405: 26})
    start = good.index(b"Exif\x00\x00") + 6
    data = bytearray(good)
    n = int(rng.integers(1, 40))
    for at, value in zip(rng.integers(start, start + 120, n), rng.integers(0, 256, n),
                         strict=True):
        data[int(at)] = int(value)
    result = read_exif_focal(bytes(data))
    assert result is None or result.focal_px(640, 480) > 0
    # cut before the end of the 35 mm tag (the tags take 40 bytes)
    assert read_exif_focal(good[: start + int(rng.integers(0, 40))]) is None
