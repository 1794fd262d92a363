"""Message classes from type names (``sensor_msgs/msg/Image``) without rosidl_runtime_py."""

from __future__ import annotations

import importlib

from camera_pose_ros.errors import InputDataError

__all__ = ["message_class"]


def message_class(type_name: str) -> type:
    """The Python class of a ROS 2 message type name.

    Raises:
        InputDataError: the name is malformed or its package is not installed.
    """
    try:
        pkg, kind, name = type_name.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise InputDataError(f"unknown message type '{type_name}' (is its package "
                             "installed?)") from exc
