"""Frame sources (bag raw/compressed, video, image folder), encodings, keyframe selection."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.frames import (
    FrameSource,
    KeyframeConfig,
    KeyframeSelector,
    extract_frames,
    iter_image_folder,
    iter_video,
    read_frames_csv,
)
from camera_pose_ros.errors import BagError, ConfigError, ImageDecodeError, InputDataError
from camera_pose_ros.io.bags import TYPESTORE, BagImageWriter, iter_bag_images
from camera_pose_ros.io.images import decode_compressed, decode_raw, encode_raw

CAM = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)


def textured(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


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


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_bag_raw_frames(tmp_path, storage, encoding):
    bag = tmp_path / "bag"
    frames = [textured(i) for i in range(3)]
    with BagImageWriter(bag, storage=storage, encoding=encoding) as w:
        for i, img in enumerate(frames):
            w.write(1_700_000_000_000_000_000 + i * 100_000_000, img, CAM)
    got = list(iter_bag_images(bag))
    assert [f.stamp for f in got] == pytest.approx([1.7e9, 1.7e9 + 0.1, 1.7e9 + 0.2])
    if encoding != "mono8":
        assert all(np.array_equal(f.image_rgb, img) for f, img in zip(got, frames, strict=False))
    src = FrameSource(bag=bag)
    assert src.camera() == CAM


def _compressed_bag(path, images, fmt="jpeg", corrupt_index=None):
    msg_t = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
    header_t = TYPESTORE.types["std_msgs/msg/Header"]
    time_t = TYPESTORE.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/camera/image_raw/compressed", msg_t.__msgtype__,
                                typestore=TYPESTORE)
        for i, img in enumerate(images):
            ok, buf = cv2.imencode(".png" if fmt == "png" else ".jpg", img[:, :, ::-1])
            data = buf.tobytes() if i != corrupt_index else b"\xff\xd8\x00\x01broken"
            msg = msg_t(header=header_t(stamp=time_t(sec=100 + i, nanosec=0), frame_id="cam"),
                        format=fmt, data=np.frombuffer(data, np.uint8))
            w.write(conn, (100 + i) * 10**9, TYPESTORE.serialize_cdr(msg, msg_t.__msgtype__))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_bag_compressed_frames_skip_corrupt(tmp_path, fmt):
    images = [textured(i) for i in range(4)]
    _compressed_bag(tmp_path / "bag", images, fmt, corrupt_index=1)
    got = list(iter_bag_images(tmp_path / "bag", "/camera/image_raw/compressed"))
    assert [f.stamp for f in got] == [100.0, 102.0, 103.0]
    with pytest.raises(ImageDecodeError):
        list(iter_bag_images(tmp_path / "bag", "/camera/image_raw/compressed", skip_bad=False))


def test_bag_without_topic_names_the_topics_it_has(tmp_path):
    _compressed_bag(tmp_path / "bag", [textured(0)])
    with pytest.raises(BagError, match="image topics in it: /camera/image_raw/compressed"):
        list(iter_bag_images(tmp_path / "bag", "/front/image_raw"))


def test_missing_or_broken_bag(tmp_path):
    with pytest.raises(BagError, match="not found"):
        list(iter_bag_images(tmp_path / "none"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.yaml").write_text("not: [a bag")
    with pytest.raises(BagError, match="cannot read bag"):
        list(iter_bag_images(tmp_path / "broken"))


def test_video_source(tmp_path):
    path = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(5):
        writer.write(textured(i)[:, :, ::-1])
    writer.release()
    frames = list(iter_video(path))
    assert len(frames) == 5
    assert [round(s, 3) for s, _ in frames] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert np.abs(frames[2][1].astype(int) - textured(2)).mean() < 20
    with pytest.raises(InputDataError):
        list(iter_video(tmp_path / "missing.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    with pytest.raises(InputDataError):
        list(iter_video(tmp_path / "junk.mp4"))


def test_image_folder_source(tmp_path):
    for i, stamp in enumerate(["10.5", "11.0", "12.25"]):
        cv2.imwrite(str(tmp_path / f"{stamp}.png"), textured(i)[:, :, ::-1])
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(iter_image_folder(tmp_path))
    assert [s for s, _ in frames] == [10.5, 11.0, 12.25]
    assert np.array_equal(frames[0][1], textured(0))
    with pytest.raises(InputDataError, match="no images"):
        list(iter_image_folder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None
                               else tmp_path))


def test_keyframes_skip_blur_duplicates_and_time_step():
    sel = KeyframeSelector(KeyframeConfig(min_time_step=0.09, min_change=1.5, blur_ratio=0.5))
    big = [cv2.resize(textured(i), (320, 240), interpolation=cv2.INTER_NEAREST)
           for i in range(8)]
    decisions = [sel.accept(0.1 * i, img) for i, img in enumerate(big[:4])]
    assert decisions == [True, True, True, True]
    assert not sel.accept(0.35, big[4])  # too soon after the last keyframe (0.3)
    assert sel.skipped["time_step"] == 1
    assert not sel.accept(0.4, big[3])  # the last keyframe's picture again: duplicate
    assert sel.skipped["duplicate"] == 1
    blurred = cv2.GaussianBlur(big[5], (0, 0), 4)
    assert not sel.accept(0.6, blurred)
    assert sel.skipped["blurred"] == 1
    assert sel.accept(0.7, big[6])


def test_keyframe_config_validation():
    with pytest.raises(ConfigError):
        KeyframeConfig(blur_ratio=1.5)


LENS = PinholeCamera(128, 96, 100, 100, 63.5, 47.5, (-0.2, 0.05, 0.001, -0.002, 0.01))


def test_rectified_topic_takes_the_projection_without_distortion(tmp_path):
    img = textured(0, 96, 128)
    for topic, expected in (("/cam/image_raw", LENS), ("/cam/image_rect", replace(
            LENS, distortion=()))):
        bag = tmp_path / topic.rsplit("/", 1)[1]
        with BagImageWriter(bag, image_topic=topic) as w:
            w.write(10**18, img, LENS)  # P is K here, D the lens's
        assert FrameSource(bag=bag, topic=topic).camera() == expected


def test_extract_frames_from_bag(tmp_path):
    bag = tmp_path / "bag"
    with BagImageWriter(bag) as w:
        for i in range(6):
            img = cv2.resize(textured(i, 48, 64), (128, 96), interpolation=cv2.INTER_NEAREST)
            w.write(10**18 + i * 10**8, img, LENS)
            w.write(10**18 + i * 10**8 + 10**6, img, LENS)  # 1 ms later: skipped
    out = tmp_path / "data"
    cfg = KeyframeConfig(max_width=64, jpeg_quality=100)
    extract_frames(FrameSource(bag=bag), out, cfg, progress=False)
    names, stamps = read_frames_csv(out / "frames.csv")
    assert names == [f"{i:06d}.png" for i in range(6)]
    assert stamps.tolist() == [10**18 + i * 10**8 for i in range(6)]  # exact nanoseconds
    assert cv2.imread(str(out / "images" / names[0])).shape == (48, 64, 3)
    cam = json.loads((out / "camera.json").read_text())
    assert cam["width"] == 64 and cam["fx"] == pytest.approx(50.0)
    # the lens's plumb_bob distortion travels with it (its coefficients do not scale)
    assert cam["distortion"] == list(LENS.distortion)
    # a second run skips the finished stage
    mtime = (out / "frames.csv").stat().st_mtime_ns
    extract_frames(FrameSource(bag=bag), out, cfg, progress=False)
    assert (out / "frames.csv").stat().st_mtime_ns == mtime


def test_frame_source_needs_exactly_one_input(tmp_path):
    with pytest.raises(ConfigError):
        FrameSource()
    with pytest.raises(ConfigError):
        FrameSource(bag=tmp_path, video=tmp_path)
