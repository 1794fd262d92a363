"""Recordings cut off by SIGKILL, recorder checks at start, bag readers on damaged bags.

What a careless or hostile user does: kill the recorder with SIGKILL, point it at an
existing or impossible output, feed the tools bags with a corrupt message, a corrupt chunk,
a cut-off file, garbage or a broken metadata.yaml.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import BagError, CameraPoseError, ConfigError
from camera_pose_ros.io.bags import (
    TYPESTORE,
    BagImageWriter,
    iter_bag_images,
    list_topics,
    read_camera_info,
)
from test.conftest import wait_for

CAM = PinholeCamera(64, 48, 60.0, 60.0, 31.5, 23.5)
_Image = TYPESTORE.types["sensor_msgs/msg/Image"]
_Header = TYPESTORE.types["std_msgs/msg/Header"]
_Time = TYPESTORE.types["builtin_interfaces/msg/Time"]
RECORDER = (
    "import sys; from camera_pose_ros.ros.recorder_node import main; "
    "sys.exit(main(sys.argv))"
)


def noise(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A textured frame, different for every ``i`` (keyframe selection keeps it)."""
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _image_cdr(i: int) -> bytes:
    img = noise(i)
    msg = _Image(header=_Header(stamp=_Time(sec=100 + i, nanosec=0), frame_id="cam"),
                 height=48, width=64, encoding="rgb8", is_bigendian=0, step=192,
                 data=img.reshape(-1))
    return bytes(TYPESTORE.serialize_cdr(msg, _Image.__msgtype__))


def _bag_with_corrupt_message(path, n: int = 5, bad: int = 2) -> None:
    """``n`` images; message ``bad`` has its frame_id string length set to 2**31 - 1."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/camera/image_raw", _Image.__msgtype__, typestore=TYPESTORE)
        for i in range(n):
            raw = bytearray(_image_cdr(i))
            if i == bad:  # 4 bytes encapsulation, 8 bytes stamp, then the string length
                raw[12:16] = struct.pack("<I", 2**31 - 1)
            w.write(conn, (100 + i) * 10**9, bytes(raw))


def _one_line_error(text: str) -> bool:
    return "Traceback" not in text and len(text.strip().splitlines()) == 1


# ------------------------------------------------------------------ corrupt messages


def test_undecodable_message_is_skipped_and_counted(tmp_path, caplog, venv_bin):
    bag = tmp_path / "bag"
    _bag_with_corrupt_message(bag)
    with caplog.at_level(logging.WARNING, logger="camera_pose_ros"):
        frames = list(iter_bag_images(bag))
    assert [f.stamp_ns // 10**9 for f in frames] == [100, 101, 103, 104]
    assert all(np.array_equal(f.image_rgb, noise(i)) for f, i in zip(frames, [0, 1, 3, 4],
                                                                     strict=True))
    assert "skipped 1 undecodable message(s) of 5" in caplog.text
    with pytest.raises(BagError, match="Invalid string length"):
        list(iter_bag_images(bag, skip_bad=False))
    # the CLI goes on too, and reports the count
    proc = subprocess.run([str(venv_bin / "camera-pose"), "-q", "frames", "--bag", str(bag),
                           "--out", str(tmp_path / "data"), "--min-time-step", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 undecodable message(s)" in proc.stderr
    assert (tmp_path / "data" / "frames.csv").read_text().count("\n") == 1 + 4


def test_undecodable_camera_info_is_skipped(tmp_path):
    bag = tmp_path / "bag"
    with BagImageWriter(bag) as w:
        for i in range(3):
            w.write((100 + i) * 10**9, noise(i), CAM)
    # rewrite it with the first CameraInfo's frame_id length corrupted
    fixed = tmp_path / "fixed"
    from rosbags.highlevel import AnyReader

    with AnyReader([bag], default_typestore=TYPESTORE) as r, \
            Writer(fixed, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, typestore=TYPESTORE)
                 for c in r.connections}
        first = True
        for c, t, raw in r.messages():
            raw = bytearray(raw)
            if c.topic == "/camera/camera_info" and first:
                raw[12:16], first = struct.pack("<I", 2**31 - 1), False
            w.write(conns[c.id], t, bytes(raw))
    assert read_camera_info(fixed, "/camera/camera_info") == CAM


# ------------------------------------------------------------------ damaged bags


def _truncate(path, keep: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


def test_damaged_bags_raise_one_line_bag_errors(tmp_path):
    bag = tmp_path / "bag"
    with BagImageWriter(bag) as w:
        for i in range(20):
            w.write((100 + i) * 10**9, noise(i), CAM)
    mcap = bag / "bag.mcap"
    # metadata.yaml intact, storage cut off (copied while recording, disk full...)
    cut = tmp_path / "cut"
    shutil.copytree(bag, cut)
    _truncate(cut / "bag.mcap", mcap.stat().st_size // 2)
    for call in (lambda: list_topics(cut), lambda: list(iter_bag_images(cut))):
        with pytest.raises(BagError, match="camera-pose bag-repair") as info:
            call()
        assert "\n" not in str(info.value)
    # a storage file without metadata.yaml: the recorder never closed it
    unclosed = tmp_path / "unclosed"
    shutil.copytree(bag, unclosed)
    (unclosed / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="unfinished.*camera-pose bag-repair"):
        list(iter_bag_images(unclosed))
    # a corrupt metadata.yaml: the YAML parser's multi-line message comes out as one line
    broken = tmp_path / "broken"
    shutil.copytree(bag, broken)
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [a\n  b: {\n")
    with pytest.raises(BagError, match="cannot read bag") as info:
        list_topics(broken)
    assert "\n" not in str(info.value)
    # a compressed chunk that does not decompress: a BagError, not the zstd exception
    zbag = tmp_path / "zbag"
    writer = Writer(zbag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conn = writer.add_connection("/camera/image_raw", _Image.__msgtype__,
                                     typestore=TYPESTORE)
        for i in range(3):
            writer.write(conn, (100 + i) * 10**9, _image_cdr(i))
    data = bytearray((zbag / "zbag.mcap").read_bytes())
    at = data.index(b"\x28\xb5\x2f\xfd")  # the zstd frame magic of the chunk
    data[at:at + 4] = b"JUNK"
    (zbag / "zbag.mcap").write_bytes(bytes(data))
    with pytest.raises(BagError, match="damaged"):
        list(iter_bag_images(zbag))


# ------------------------------------------------------------------ bag-repair


def test_bag_repair_salvages_a_cut_off_mcap(tmp_path, venv_bin):
    bag = tmp_path / "walk"
    with BagImageWriter(bag) as w:
        for i in range(20):
            w.write((100 + i) * 10**9, noise(i), CAM)
    (bag / "metadata.yaml").unlink()
    _truncate(bag / "walk.mcap", (bag / "walk.mcap").stat().st_size * 2 // 3)
    cli = str(venv_bin / "camera-pose")
    proc = subprocess.run([cli, "bag-repair", str(bag)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "walk_repaired"
    frames = list(iter_bag_images(out))
    # an uncompressed chunk cut off: its complete messages come back, in order
    assert 5 <= len(frames) < 20
    assert [f.stamp_ns // 10**9 for f in frames] == list(range(100, 100 + len(frames)))
    assert all(np.array_equal(f.image_rgb, noise(i)) for i, f in enumerate(frames))
    recovered = re.search(r"recovered (\d+) message", proc.stderr)
    assert recovered, proc.stderr  # each frame: an Image, then its CameraInfo
    assert 2 * len(frames) - 1 <= int(recovered[1]) <= 2 * len(frames)
    assert read_camera_info(out, "/camera/camera_info") == CAM
    # the output is never overwritten; a folder that is no bag is refused in one line
    again = subprocess.run([cli, "bag-repair", str(bag)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr
    assert _one_line_error(again.stderr)
    (tmp_path / "empty").mkdir()
    none = subprocess.run([cli, "bag-repair", str(tmp_path / "empty")], capture_output=True,
                          text=True, timeout=120)
    assert none.returncode == 2 and _one_line_error(none.stderr), none.stderr


def test_bag_repair_keeps_the_complete_compressed_chunks(tmp_path):
    from camera_pose_ros.io.bagrepair import repair_bag

    bag = tmp_path / "z"
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    n = 150  # 9 kB of noise each: rosbags closes a chunk past 1 MiB, so two chunks
    with writer:
        conn = writer.add_connection("/camera/image_raw", _Image.__msgtype__,
                                     typestore=TYPESTORE)
        for i in range(n):
            writer.write(conn, (100 + i) * 10**9, _image_cdr(i))
    data = (bag / "z.mcap").read_bytes()
    second = data.index(b"\x28\xb5\x2f\xfd", data.index(b"\x28\xb5\x2f\xfd") + 1)
    (bag / "metadata.yaml").unlink()
    _truncate(bag / "z.mcap", second + 1000)  # cut inside the second chunk
    result = repair_bag(bag, tmp_path / "fixed")
    frames = list(iter_bag_images(tmp_path / "fixed"))
    assert 0 < len(frames) < n and result.messages == len(frames)
    assert [f.stamp_ns // 10**9 for f in frames] == list(range(100, 100 + len(frames)))
    assert any("compressed chunk cut off" in note for note in result.notes)


# ------------------------------------------------------------------ ROS: recorder, player

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from camera_pose_ros.ros import bag_player  # noqa: E402
from camera_pose_ros.ros.recorder_node import RecorderNode  # noqa: E402

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def ros_img(i: int) -> Image:
    m = Image()
    m.header.stamp.sec = 100 + i
    m.height, m.width, m.encoding, m.step = 48, 64, "rgb8", 192
    m.data = noise(i).tobytes()
    return m


@pytest.mark.ros
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sigkilled_recording_is_repaired(ros_context, spinner, tmp_path, venv_bin, storage):
    out, rate, flush_period, n = tmp_path / "rec", 10.0, 0.5, 30
    proc = subprocess.Popen(
        [sys.executable, "-c", RECORDER, "--ros-args", "-p", f"output:={out}",
         "-p", f"storage:={storage}", "-p", f"flush_period:={flush_period}",
         "-p", "topics:=['/camera/image_raw']"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    helper = spinner.add(rclpy.create_node("cam_kill", context=ros_context))
    pub = helper.create_publisher(Image, "/camera/image_raw", RELIABLE)
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0, 30), "recorder not up"
        for i in range(n):
            pub.publish(ros_img(i))
            time.sleep(1 / rate)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with pytest.raises(BagError, match="camera-pose bag-repair"):
        list(iter_bag_images(out))
    cli = str(venv_bin / "camera-pose")
    rep = tmp_path / "repaired"
    fixed = subprocess.run([cli, "bag-repair", str(out), "--out", str(rep)],
                           capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    frames = list(iter_bag_images(rep))
    # lost: at most about flush_period of frames (plus a few in flight when killed)
    assert len(frames) >= n - rate * flush_period - 5, len(frames)
    assert [f.stamp_ns // 10**9 for f in frames] == list(range(100, 100 + len(frames)))
    assert f"recovered {len(frames)} message(s)" in fixed.stderr
    data = subprocess.run([cli, "-q", "frames", "--bag", str(rep), "--out",
                           str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=120)
    assert data.returncode == 0, data.stderr
    assert (tmp_path / "data" / "frames.csv").exists()


@pytest.mark.ros
def test_recorder_refuses_an_existing_output_at_start(ros_context, spinner, tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    helper = spinner.add(rclpy.create_node("cam_exists", context=ros_context))
    pub = helper.create_publisher(Image, "/camera/image_raw", RELIABLE)
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, "--ros-args", "-p",
                             f"output:={out}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # the old recorder only failed once a message came: keep offering one
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            pub.publish(ros_img(0))
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        text, _ = proc.communicate(timeout=30)
    assert proc.returncode not in (0, -signal.SIGKILL), text
    assert "exists" in text and _one_line_error(text), text
    assert "recording" not in text, text
    assert sorted(os.listdir(out)) == []


@pytest.mark.ros
def test_recorder_refuses_an_impossible_output_at_start(ros_context, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CameraPoseError, match="file"):
        RecorderNode(context=ros_context, parameter_overrides=[
            Parameter("output", value=str(tmp_path / "file" / "rec"))])
    with pytest.raises(CameraPoseError, match="flush_period"):
        RecorderNode(context=ros_context, parameter_overrides=[
            Parameter("output", value=str(tmp_path / "rec")),
            Parameter("flush_period", value=-1.0)])
    for name, value in (("chunk_size", "a megabyte"), ("min_interval", float("nan"))):
        with pytest.raises(ConfigError, match="must be finite numbers"):
            RecorderNode(context=ros_context, parameter_overrides=[
                Parameter("output", value=str(tmp_path / "rec")), Parameter(name, value=value)])
    assert not (tmp_path / "rec").exists()


def _garbage(tmp_path):
    path = tmp_path / "garbage.mcap"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _corrupt_metadata(tmp_path):
    bag = tmp_path / "meta"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("not: [a bag")
    return bag


def _unclosed(tmp_path):
    bag = tmp_path / "unclosed"
    with BagImageWriter(bag) as w:
        w.write(100 * 10**9, noise(0), CAM)
    (bag / "metadata.yaml").unlink()
    return bag


def _complete(tmp_path):
    bag = tmp_path / "ok"
    with BagImageWriter(bag) as w:
        w.write(100 * 10**9, noise(0), CAM)
    return bag


def test_bag_player_refuses_a_rate_that_is_not_positive_before_publishing(tmp_path):
    bag = _complete(tmp_path)
    for rate in (0.0, -2.0):
        with pytest.raises(ConfigError, match="rate must be > 0"):
            bag_player.play(None, bag, rate=rate)  # no node needed: nothing is published


@pytest.mark.parametrize("case, expect", [
    (lambda p: p / "missing", "not found"),
    (_corrupt_metadata, "cannot read bag"),
    (_garbage, "cannot read bag"),
    (_unclosed, "bag-repair"),
    (_complete, "none of the topics"),
])
def test_bag_player_unreadable_bags_one_line_status_2(tmp_path, capsys, case, expect):
    bag = case(tmp_path)
    status = bag_player.main(["bag_player", str(bag), "--topics", "/nope", "--wait", "0"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert expect in err and _one_line_error(err), err
