"""camera_pose_ros.ros.msgtypes: message classes from type names, unknown ones named errors."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy")
from sensor_msgs.msg import CameraInfo  # noqa: E402

from camera_pose_ros.errors import InputDataError  # noqa: E402
from camera_pose_ros.ros.msgtypes import message_class  # noqa: E402


def test_a_type_name_gives_its_message_class():
    assert message_class("sensor_msgs/msg/CameraInfo") is CameraInfo


@pytest.mark.parametrize("name", ["no_such_msgs/msg/Image", "sensor_msgs/msg/NoSuchType",
                                  "sensor_msgs/Image", ""])
def test_an_unknown_or_malformed_type_name_is_a_named_error(name):
    with pytest.raises(InputDataError, match="unknown message type"):
        message_class(name)
