"""Message classes from type names (``sensor_msgs/msg/Image``) without rosidl_runtime_py,
and the QoS of latched topics."""

from __future__ import annotations

import importlib

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from camera_pose_ros.errors import InputDataError

__all__ = ["message_class", "latched_qos"]


def latched_qos(qos: QoSProfile) -> QoSProfile:
    """``qos`` made reliable and transient-local: ``/tf_static`` is published once, latched."""
    return QoSProfile(depth=max(qos.depth, 10), reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


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
