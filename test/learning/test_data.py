"""Datasets and augmentation that keep the pose valid (learning/data.py)."""

from __future__ import annotations

import numpy as np
import pytest


def test_rotation_augmentation_is_pose_consistent():
    """A view rotated about the camera centre: pixels follow K dR^T K^-1, pose is R dR."""
    from camera_pose_ros.learning.data import rotate_view

    K = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[40:56, 56:72] = 255  # a bright square at the image centre
    pose = np.array([1.0, 2.0, 1.5, 1.0, 0.0, 0.0, 0.0], np.float32)
    yaw = np.radians(10.0)  # turn right: about the camera's y axis (down)
    warped, new = rotate_view(rgb, pose, K, np.array([0.0, yaw, 0.0]))
    ys, xs = np.nonzero(warped[:, :, 0] > 128)
    # the square's centre moves left by f tan(yaw) pixels when the camera turns right
    assert xs.mean() == pytest.approx(63.5 - 100.0 * np.tan(yaw), abs=1.5)
    assert ys.mean() == pytest.approx(47.5, abs=1.0)
    assert np.allclose(new[:3], pose[:3])
    angle = 2 * np.degrees(np.arccos(min(1.0, abs(float(new[3])))))
    assert angle == pytest.approx(10.0, abs=1e-3)
