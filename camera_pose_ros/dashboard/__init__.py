"""Web dashboard: the floor plan with the live pose, image localization, dataset and model.

A FastAPI application (:func:`camera_pose_ros.dashboard.server.create_app`) served by
uvicorn, started by ``camera-pose dashboard`` (offline pages and image upload) or, on a
robot, by ``dashboard_node`` (which feeds the live page from the relocalization node's
topics). Everything the pages need (HTML, JavaScript, CSS) is served from this package;
plots are drawn in the browser from JSON. No ROS here: ``ros/dashboard_node.py`` feeds
:class:`~camera_pose_ros.dashboard.state.LiveState`.
"""

from camera_pose_ros.dashboard.state import LiveState, pose_view

__all__ = ["LiveState", "pose_view"]
