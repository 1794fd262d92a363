"""camera_pose_ros.io.bags: image frames and CameraInfo read from MCAP and sqlite3 bags."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.frames import FrameSource
from camera_pose_ros.errors import BagError, ImageDecodeError
from camera_pose_ros.io.bags import (
    TYPESTORE,
    BagImageWriter,
    depth_image_message,
    iter_bag_depth,
    iter_bag_images,
)
from test.conftest import textured

CAM = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)
LENS = PinholeCamera(128, 96, 100, 100, 63.5, 47.5, (-0.2, 0.05, 0.001, -0.002, 0.01))


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


def test_rectified_topic_takes_the_projection_without_distortion(tmp_path):
    img = textured(0, 96, 128)
    for topic, expected in (("/cam/image_raw", LENS), ("/cam/image_rect", replace(
            LENS, distortion=()))):
        bag = tmp_path / topic.rsplit("/", 1)[1]
        with BagImageWriter(bag, image_topic=topic) as w:
            w.write(10**18, img, LENS)  # P is K here, D the lens's
        assert FrameSource(bag=bag, topic=topic).camera() == expected


def test_depth_images_round_trip_and_bad_ones_are_skipped(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 12.0, (24, 32)).astype(np.float32)
    depth[0, :4] = [0.0, np.nan, np.inf, 70.0]  # no measurement, or beyond 16UC1's range
    img_t = TYPESTORE.types["sensor_msgs/msg/Image"]

    def head(stamp: int):
        return depth_image_message(stamp, "cam", depth).header

    as_float = img_t(header=head(4), height=24, width=32, encoding="32FC1",
                     is_bigendian=0, step=32 * 4,
                     data=np.frombuffer(np.nan_to_num(depth, posinf=0.0).astype("<f4")
                                        .tobytes(), np.uint8))
    wrong = img_t(header=head(2), height=24, width=32, encoding="rgb8", is_bigendian=0,
                  step=96, data=np.zeros(24 * 96, np.uint8))
    short = img_t(header=head(3), height=24, width=32, encoding="16UC1", is_bigendian=0,
                  step=64, data=np.zeros(100, np.uint8))
    with BagImageWriter(tmp_path / "bag") as w:
        for stamp, msg in ((1, depth_image_message(1, "cam", depth)), (2, wrong), (3, short),
                           (4, as_float)):
            w.write_message("/camera/depth/image_raw", "sensor_msgs/msg/Image", stamp, msg)
    got = list(iter_bag_depth(tmp_path / "bag", "/camera/depth/image_raw"))
    assert [s for s, _ in got] == [1, 4]  # the rgb8 and the truncated ones are skipped
    valid = np.isfinite(depth) & (depth > 0) & (depth < 65.5)
    for _, d in got:
        assert d.shape == (24, 32) and d.dtype == np.float32
        assert np.all(np.isnan(d[0, :3]))
        np.testing.assert_allclose(d[valid], depth[valid], atol=5e-4)
    assert np.isnan(got[0][1][0, 3]) and got[1][1][0, 3] == pytest.approx(70.0)
    with pytest.raises(BagError, match="no depth topic"):
        list(iter_bag_depth(tmp_path / "bag", "/other"))
    with pytest.raises(BagError, match="not a sensor_msgs/Image"):
        list(iter_bag_depth(tmp_path / "bag", "/camera/camera_info"))
