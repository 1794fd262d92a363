"""camera_pose_ros.dataset.frames: frame sources (bag, video, image folder) and keyframes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

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
from camera_pose_ros.errors import CameraModelError, ConfigError, InputDataError
from camera_pose_ros.io.bags import BagImageWriter
from test.conftest import textured

CAM = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)
LENS = PinholeCamera(128, 96, 100, 100, 63.5, 47.5, (-0.2, 0.05, 0.001, -0.002, 0.01))


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
    assert not sel.accept(0.5, blurred)  # 0.2 s after the last keyframe
    assert sel.skipped["blurred"] == 1
    # a fast turn blurs every frame: once the last keyframe is max_blur_gap old, one is kept
    # (else the walk falls into stretches that share nothing)
    assert sel.accept(0.6, cv2.GaussianBlur(big[6], (0, 0), 4))
    assert sel.skipped["blurred"] == 1 and sel.skipped["blurred_kept_for_the_gap"] == 1
    assert sel.accept(0.7, big[7])
    never = KeyframeSelector(KeyframeConfig(max_blur_gap=0.0))
    assert all(never.accept(0.1 * i, img) for i, img in enumerate(big[:4]))
    assert not any(never.accept(0.4 + 0.1 * i, cv2.GaussianBlur(big[4 + i], (0, 0), 4))
                   for i in range(4))
    assert never.skipped["blurred"] == 4


def test_keyframe_config_validation():
    with pytest.raises(ConfigError):
        KeyframeConfig(blur_ratio=1.5)


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


def test_between_keeps_one_stretch_of_the_walk_and_is_part_of_the_source(tmp_path):
    """``between`` keeps the frames START to END s after the first (one floor of a ride);
    frames made without it are not reused for a window, and a bad window is refused."""
    for i in range(10):  # 0.5 s apart
        cv2.imwrite(str(tmp_path / f"{100 + 0.5 * i:.2f}.png"), textured(i)[:, :, ::-1])
    window = FrameSource(images=tmp_path, between=(1.0, 3.0))
    assert [s / 1e9 for s, _ in window.frames()] == [101.0, 101.5, 102.0, 102.5]
    cfg = KeyframeConfig(min_time_step=0.0, min_change=0.0, jpeg_quality=100)
    out = tmp_path / "data"
    extract_frames(window, out, cfg, progress=False)
    assert read_frames_csv(out / "frames.csv")[1].tolist() == [
        int(101e9), int(101.5e9), int(102e9), int(102.5e9)]
    with pytest.raises(InputDataError, match=r"another source .*between 1-3 s"):
        extract_frames(FrameSource(images=tmp_path, between=(3.0, 5.0)), out, cfg,
                       progress=False)
    for bad in ((2.0, 2.0), (-1.0, 3.0)):
        with pytest.raises(ConfigError, match="--between takes START END"):
            FrameSource(images=tmp_path, between=bad)


def test_frame_source_needs_exactly_one_input(tmp_path):
    with pytest.raises(ConfigError):
        FrameSource()
    with pytest.raises(ConfigError):
        FrameSource(bag=tmp_path, video=tmp_path)


def test_a_control_point_keeps_its_frame_where_the_walk_paused(tmp_path):
    bag = tmp_path / "bag"
    pictures = [cv2.resize(textured(i, 48, 64), (128, 96), interpolation=cv2.INTER_NEAREST)
                for i in range(4)]
    stamps = [10**18 + i * 10**8 for i in range(30)]  # 10 Hz for 3 s
    with BagImageWriter(bag) as w:
        for i, stamp in enumerate(stamps):
            # the camera stands still from 0.5 s to 2.4 s: the same picture, duplicates
            w.write(stamp, pictures[0 if i < 5 else 1 if i < 25 else 2 + i % 2], LENS)
    cfg = KeyframeConfig(max_width=64, jpeg_quality=100)
    paused = stamps[15]  # a control point taken in the middle of the pause

    def kept(keep: list[int], out: str) -> np.ndarray:
        extract_frames(FrameSource(bag=bag), tmp_path / out, cfg, progress=False,
                       keep_stamps_ns=keep, keep_window_s=0.25)
        return read_frames_csv(tmp_path / out / "frames.csv")[1]

    plain = kept([], "plain")
    assert np.min(np.abs(plain - paused)) > 0.25e9  # keyframing alone leaves a 1.9 s gap
    with_cp = kept([paused, stamps[0], stamps[29] + 10**9], "with_cp")
    assert paused in with_cp.tolist()  # the control point's own frame, added once
    assert len(with_cp) == len(plain) + 1 and np.all(np.diff(with_cp) > 0)
    assert set(plain.tolist()) < set(with_cp.tolist())


def test_a_video_gets_its_intrinsics_from_a_calibration_file_or_fx_fy_cx_cy(tmp_path):
    path = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for i in range(4):
        writer.write(cv2.resize(textured(i), (128, 96), interpolation=cv2.INTER_NEAREST)[
            :, :, ::-1])
    writer.release()
    calib = tmp_path / "ost.yaml"  # calibrated at twice the video's size
    calib.write_text(
        "image_width: 256\nimage_height: 192\n"
        "camera_matrix: {rows: 3, cols: 3, data: [200, 0, 127.5, 0, 202, 95.5, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [-0.1, 0.01, 0, 0, 0]}\n")
    cfg = KeyframeConfig(max_width=64, min_change=0.0, jpeg_quality=100)
    plain = tmp_path / "plain"
    extract_frames(FrameSource(video=path), plain, cfg, progress=False)
    assert not (plain / "camera.json").exists()  # COLMAP would have to guess
    out = tmp_path / "calibrated"
    extract_frames(FrameSource(video=path, calibration=calib), out, cfg, progress=False)
    cam = json.loads((out / "camera.json").read_text())  # 256 -> 128 (video) -> 64 (frames)
    assert (cam["width"], cam["fx"], cam["fy"]) == (64, 50.0, 50.5)
    assert cam["cx"] == pytest.approx(31.5) and cam["distortion"] == [-0.1, 0.01, 0.0, 0.0]
    out = tmp_path / "fxfycxcy"
    extract_frames(FrameSource(video=path, intrinsics=(100.0, 100.0, 63.5, 47.5)), out, cfg,
                   progress=False)
    cam = json.loads((out / "camera.json").read_text())
    assert (cam["width"], cam["fx"], cam["cx"]) == (64, 50.0, 31.5)
    calib.write_text(calib.read_text().replace("image_height: 192", "image_height: 144"))
    with pytest.raises(CameraModelError, match="aspect ratio"):
        extract_frames(FrameSource(video=path, calibration=calib), tmp_path / "bad", cfg,
                       progress=False)


def _photos(folder, n: int, focal_35mm: int | None, size=(160, 120), first: int = 0) -> None:
    """``n`` JPEG photos as a phone writes them: EXIF with the 35 mm equivalent focal."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        exif = Image.Exif()
        if focal_35mm is not None:
            exif.get_ifd(0x8769)[0xA405] = focal_35mm
        rgb = cv2.resize(textured(i, 48, 64), size, interpolation=cv2.INTER_NEAREST)
        Image.fromarray(rgb).save(folder / f"IMG_{i:04d}.jpg", quality=95,
                                  exif=exif.tobytes())


def test_photos_get_their_focal_length_from_exif_and_options_win(tmp_path):
    photos = tmp_path / "photos"
    _photos(photos, 4, 26)
    cfg = KeyframeConfig(min_time_step=0, blur_ratio=0.0, min_change=0.0, max_width=80)
    out = tmp_path / "exif"
    extract_frames(FrameSource(images=photos), out, cfg, progress=False)
    cam = json.loads((out / "camera.json").read_text())
    # 26 mm equivalent: the diagonal of 160x120 (200 px) is 43.27 mm; frames are 80x60
    assert cam["source"] == "exif" and "FocalLengthIn35mmFilm 26" in cam["exif"]
    assert (cam["width"], cam["height"]) == (80, 60)
    assert cam["fx"] == cam["fy"] == pytest.approx(26 * 200 / np.hypot(36, 24) / 2)
    assert (cam["cx"], cam["cy"]) == (pytest.approx(39.5), pytest.approx(29.5))
    # explicit intrinsics win over EXIF
    out = tmp_path / "option"
    extract_frames(FrameSource(images=photos, intrinsics=(150.0, 150.0, 79.5, 59.5)), out,
                   cfg, progress=False)
    cam = json.loads((out / "camera.json").read_text())
    assert (cam["source"], cam["fx"]) == ("intrinsics_option", 75.0)
    assert "exif" not in cam


def test_photos_without_exif_leave_the_intrinsics_to_colmap(tmp_path):
    photos = tmp_path / "photos"
    _photos(photos, 3, None)
    out = tmp_path / "data"
    cfg = KeyframeConfig(min_time_step=0, blur_ratio=0.0, min_change=0.0)
    extract_frames(FrameSource(images=photos), out, cfg, progress=False)
    assert len(read_frames_csv(out / "frames.csv")[0]) == 3
    assert not (out / "camera.json").exists()
    # redone from photos with EXIF, the frames get it; redone without, the stale file goes
    _photos(photos, 3, 35)
    extract_frames(FrameSource(images=photos), out, cfg, overwrite=True, progress=False)
    assert json.loads((out / "camera.json").read_text())["source"] == "exif"
    _photos(photos, 3, None)
    extract_frames(FrameSource(images=photos), out, cfg, overwrite=True, progress=False)
    assert not (out / "camera.json").exists()


def test_photos_of_several_focal_lengths_use_the_most_common(tmp_path, caplog):
    photos = tmp_path / "photos"
    _photos(photos, 3, 26)
    _photos(photos, 1, 52, first=3)  # one zoomed photo
    with caplog.at_level("WARNING"):
        focal = FrameSource(images=photos).exif_focal()
    assert focal is not None and focal.focal_35mm == 26.0
    assert "2 focal lengths" in caplog.text
