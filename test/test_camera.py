"""camera_pose_ros.camera: the pinhole model, distortion, CameraInfo and COLMAP conventions."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import CameraModelError

LENS = PinholeCamera(320, 240, 262.4, 260.0, 159.5, 119.5, (-0.25, 0.07, 0.001, -0.001, 0.01))


def test_pinhole_colmap_convention_and_scaling():
    cam = PinholeCamera(640, 480, 500.0, 500.0, 319.5, 239.5)
    assert cam.colmap_params() == [500.0, 500.0, 320.0, 240.0]
    half = cam.scaled(320, 240)
    assert (half.fx, half.cx, half.cy) == (250.0, 159.5, 119.5)


def test_distortion_agrees_with_colmap_and_inverts():
    """Our OpenCV model and pycolmap's FULL_OPENCV camera are independent implementations."""
    import pycolmap

    rng = np.random.default_rng(3)
    xy = rng.uniform(-0.6, 0.6, (500, 2))
    assert LENS.colmap_model() == "FULL_OPENCV" and len(LENS.colmap_params()) == 12
    cam = pycolmap.Camera(model=LENS.colmap_model(), width=LENS.width, height=LENS.height,
                          params=LENS.colmap_params())
    ours = (LENS.distort_normalized(xy) * [LENS.fx, LENS.fy]
            + [LENS.cx + 0.5, LENS.cy + 0.5])  # COLMAP's pixel convention
    np.testing.assert_allclose(cam.img_from_cam(np.c_[xy, np.ones(len(xy))]), ours,
                               atol=1e-9)
    np.testing.assert_allclose(LENS.undistort_normalized(LENS.distort_normalized(xy)), xy,
                               atol=1e-9)
    assert not np.allclose(LENS.distort_normalized(xy), xy)


def test_camera_spellings_and_conversions():
    plain = PinholeCamera(320, 240, 262.4, 262.4, 159.5, 119.5)
    assert PinholeCamera(320, 240, 262.4, 262.4, 159.5, 119.5, (0.0,) * 5) == plain
    opencv = PinholeCamera(320, 240, 262.4, 262.4, 159.5, 119.5, (-0.2, 0.05, 0, 0, 0, 0, 0, 0))
    assert opencv.distortion == (-0.2, 0.05, 0.0, 0.0) and opencv.colmap_model() == "OPENCV"
    for cam in (plain, opencv, LENS):
        assert PinholeCamera.from_dict(cam.to_dict()) == cam
        assert PinholeCamera.from_colmap(cam.colmap_model(), cam.width, cam.height,
                                         cam.colmap_params()) == cam
        assert cam.scaled(160, 120).distortion == cam.distortion
    radial = PinholeCamera.from_colmap("SIMPLE_RADIAL", 320, 240, [250.0, 160.0, 120.0, -0.1])
    assert radial.distortion == (-0.1, 0.0, 0.0, 0.0) and radial.cx == 159.5
    with pytest.raises(CameraModelError, match="no plumb_bob"):
        PinholeCamera.from_colmap("OPENCV_FISHEYE", 320, 240, [250] * 8)
    with pytest.raises(CameraModelError, match="4, 5 or 8"):
        PinholeCamera(320, 240, 1, 1, 1, 1, (0.1, 0.2))
    k = LENS.matrix().ravel()
    assert PinholeCamera.from_camera_info(320, 240, k, LENS.distortion, "plumb_bob") == LENS
    assert PinholeCamera.from_camera_info(320, 240, k, [], "").distortion == ()
    with pytest.raises(CameraModelError, match="equidistant"):
        PinholeCamera.from_camera_info(320, 240, k, [0.1, 0, 0, 0], "equidistant")
    with pytest.raises(CameraModelError, match="focal length"):
        PinholeCamera.from_camera_info(320, 240, [0.0] * 9, [], "plumb_bob")


def test_rectified_images_use_the_projection_matrix():
    from camera_pose_ros.io.bags import is_rectified_topic

    assert is_rectified_topic("/cam/image_rect") and is_rectified_topic("image_rect_color")
    assert is_rectified_topic("/cam/image_rect/compressed")
    assert not any(map(is_rectified_topic, ("/cam/image_raw", "/cam/image_color", "image",
                                            "/rect/image_raw", "")))
    k = LENS.matrix().ravel()
    p = [250.0, 0, 158.0, 0, 0, 249.0, 118.0, 0, 0, 0, 1, 0]
    rect = PinholeCamera.from_camera_info(320, 240, k, LENS.distortion, "plumb_bob", p, True)
    assert rect == PinholeCamera(320, 240, 250.0, 249.0, 158.0, 118.0)
    unset = PinholeCamera.from_camera_info(320, 240, k, LENS.distortion, "plumb_bob",
                                           [0.0] * 12, True)
    assert unset == PinholeCamera(320, 240, LENS.fx, LENS.fy, LENS.cx, LENS.cy)
    assert PinholeCamera.from_camera_info(320, 240, k, LENS.distortion, "plumb_bob", p) == LENS
