"""camera_pose_ros.io.calibration: camera_calibration's YAML, plain intrinsics, resizing."""

from __future__ import annotations

import pytest

from camera_pose_ros.errors import CameraModelError, InputDataError
from camera_pose_ros.io.calibration import (
    camera_for_frames,
    camera_from_intrinsics,
    read_calibration_yaml,
)

OST = """\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [512.3, 0, 321.7, 0, 510.9, 238.2, 0, 0, 1]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.21, 0.045, 0.0011, -0.0007, 0.0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [480.5, 0, 322.0, 0, 0, 495.1, 239.0, 0, 0, 0, 1, 0]
"""


def test_camera_calibration_yaml_gives_k_and_d_or_p_when_rectified(tmp_path):
    path = tmp_path / "ost.yaml"
    path.write_text(OST)
    cam = read_calibration_yaml(path)
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (
        640, 480, 512.3, 510.9, 321.7, 238.2)
    assert cam.distortion == (-0.21, 0.045, 0.0011, -0.0007)  # a zero k3 is dropped
    rect = read_calibration_yaml(path, rectified=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy, rect.distortion) == (
        480.5, 495.1, 322.0, 239.0, ())


@pytest.mark.parametrize(("change", "words"), [
    (("image_width: 640", "image_width: wide"), "image_width and image_height"),
    (("data: [512.3, 0, 321.7, 0, 510.9, 238.2, 0, 0, 1]", "data: [512.3, 0]"),
     "camera_matrix must hold 9"),
    (("data: [512.3, 0, 321.7, 0, 510.9, 238.2, 0, 0, 1]",
      "data: [0, 0, 321.7, 0, 0, 238.2, 0, 0, 1]"), "no focal length"),
    (("distortion_model: plumb_bob", "distortion_model: equidistant"), "not supported"),
    (("[-0.21, 0.045", "[.nan, 0.045"), "non-finite"),
])
def test_bad_calibrations_are_named_errors(tmp_path, change, words):
    path = tmp_path / "ost.yaml"
    path.write_text(OST.replace(*change))
    with pytest.raises(CameraModelError, match=words):
        read_calibration_yaml(path)


def test_missing_or_non_yaml_files_are_input_errors(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        read_calibration_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(InputDataError, match="not a calibration YAML"):
        read_calibration_yaml(tmp_path / "bad.yaml")


def test_plain_intrinsics_and_resized_frames(tmp_path):
    cam = camera_from_intrinsics([500, 500, 319.5, 239.5], 640, 480)
    assert (cam.fx, cam.cy, cam.distortion) == (500.0, 239.5, ())
    with pytest.raises(CameraModelError, match="positive focal"):
        camera_from_intrinsics([0, 500, 319.5, 239.5], 640, 480)
    with pytest.raises(CameraModelError):
        camera_from_intrinsics([500, 500, 319.5], 640, 480)
    half = camera_for_frames(cam, 320, 240)  # a stream at half the calibrated size
    assert (half.fx, half.cx, half.cy) == (250.0, 159.5, 119.5)
    assert camera_for_frames(cam, 640, 480) is cam
    with pytest.raises(CameraModelError, match="aspect ratio"):
        camera_for_frames(cam, 640, 360)
