"""The relocalization node's parameters, declared once: name, default, description, range.

``config/relocalization.yaml`` holds the same defaults (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rclpy.node import Node

__all__ = ["ParamSpec", "RELOCALIZATION_PARAMS", "declare_parameters"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default value (its type is the parameter's type) and documentation."""

    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None


RELOCALIZATION_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "checkpoint (model.pt) written by `camera-pose train`"),
    ParamSpec("device", "auto", "where inference runs", ("auto", "cpu", "cuda")),
    ParamSpec("half_precision", False, "float16 inference (GPU only; ignored on CPU)"),
    ParamSpec("mc_samples", 20, "dropout samples for the covariance (0: model's default)",
              min_value=0, max_value=200),
    ParamSpec("map_frame", "map", "frame of every output"),
    ParamSpec("child_frame", "camera_estimate", "TF child frame of the estimated camera"),
    ParamSpec("image_transport", "raw", "subscribe to `image` (raw) or `image/compressed`",
              ("raw", "compressed")),
    ParamSpec("max_image_age", 0.5, "seconds; older frames are dropped and counted",
              min_value=0.0, max_value=3600.0),
    ParamSpec("max_future_stamp", 2.0, "seconds; frames stamped further ahead of the node's "
              "clock are dropped and counted (0: no check)", min_value=0.0, max_value=3600.0),
    ParamSpec("max_image_pixels", 4096 * 4096, "larger images are refused before decoding "
              "(a compressed one by its header)", min_value=1, max_value=1 << 30),
    ParamSpec("publish_tf", True, "publish TF map_frame -> child_frame"),
    ParamSpec("publish_map_to_odom", False,
              "publish map -> odom from odometry instead (only one node may own that edge)"),
    ParamSpec("odom_frame", "odom", "odometry frame for map -> odom"),
    ParamSpec("base_to_camera", [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5],
              "static extrinsic x y z qx qy qz qw of the camera optical frame in the base "
              "frame (default: camera at the base origin looking along base x)"),
    ParamSpec("max_odom_age", 0.2, "seconds between an image and the odometry used with it",
              min_value=0.0, max_value=10.0),
    ParamSpec("floorplan_yaml", "", "map_server YAML of the walkable area (\"\" = none)"),
    ParamSpec("snap_to_floorplan", True, "move estimates off non-walkable cells"),
    ParamSpec("jump_gate", False, "reject estimates whose motion disagrees with odometry"),
    ParamSpec("max_jump", 1.0, "metres of disagreement the jump gate allows",
              min_value=0.0, max_value=100.0),
    ParamSpec("path_length", 500, "poses kept in ~/path", min_value=1, max_value=100000),
    ParamSpec("path_period", 1.0, "seconds between ~/path messages (a long path is costly to "
              "send with every frame)", min_value=0.0, max_value=60.0),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages",
              min_value=0.1, max_value=60.0),
    ParamSpec("mode", "regress", "regress: the network alone, every frame; refine: also refine "
              "poses against the SfM map on a second thread (every refine_every_n-th frame "
              "or on relocalization requests) and publish them too; scr-pnp: a structure-"
              "aware model's scene coordinates solved by PnP + RANSAC, every frame, no map",
              ("regress", "refine", "scr-pnp")),
    ParamSpec("refinement_map", "", "refinement_map.npz or dataset folder (\"\" = beside the "
              "checkpoint, else the dataset it was trained on)"),
    ParamSpec("refine_config", "", "YAML of refinement settings (\"\" = defaults; see "
              "config/refine.yaml)"),
    ParamSpec("refine_every_n", 5, "refine one frame in N (when the refiner is free)",
              min_value=1, max_value=10000),
    ParamSpec("refine_prior", "network", "refine mode: network: refinement starts from the "
              "regressed pose (map frames near it, gated by its covariance); none: from image "
              "retrieval alone, every map frame a candidate (slower: for a regressor that has "
              "not learned the building, or no trained regressor)", ("network", "none")),
    ParamSpec("refine_on_request_only", False,
              "refine only while a relocalization request (~/relocalize, tracking_lost) is "
              "open"),
    ParamSpec("relocalize_timeout", 5.0, "seconds a relocalization request (~/relocalize, "
              "tracking_lost) tries frames for a verified estimate before it fails",
              min_value=0.1, max_value=600.0),
    ParamSpec("verify_max_position_sigma", 0.25, "metres; a regressed pose is verified (for "
              "/initialpose and ~/pose_verified) when its largest position standard deviation "
              "is at most this (refine mode: only refined poses are)",
              min_value=0.0, max_value=1000.0),
    ParamSpec("verify_max_rotation_sigma_deg", 5.0, "degrees; and its largest rotation "
              "standard deviation at most this", min_value=0.0, max_value=180.0),
    ParamSpec("rectified_images", "auto", "whether the images are rectified (camera = "
              "camera_info's P, no distortion) or raw (K and D); auto: rectified when the image "
              "topic is image_rect*", ("auto", "true", "false")),
    ParamSpec("floors_file", "", "several floors: YAML listing each floor's id, elevation, "
              "frame and model (see camera_pose_ros/io/floors.py; \"\" = one map, model_path)"),
    ParamSpec("floor", "", "with floors_file: the floor to start on (\"\" = recognise it from "
              "the images; refine mode); ~/set_floor changes it at run time"),
    ParamSpec("floor_recheck_after", 5, "with floors_file: recognise the floor again after this "
              "many failed refinements in a row (a lift or stairs; 0 = never)",
              min_value=0, max_value=10000),
    ParamSpec("autostart", True, "configure and activate without a lifecycle manager"),
)


def declare_parameters(node: Node, specs: tuple[ParamSpec, ...]) -> None:
    """Declare ``specs`` on an rclpy node, with descriptions, choices and ranges."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    for spec in specs:
        desc = ParameterDescriptor(description=spec.description + (
            f" ({'|'.join(spec.choices)})" if spec.choices else ""))
        if spec.min_value is None or spec.max_value is None:
            pass  # no range
        elif isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(spec.min_value), to_value=float(spec.max_value))]
        elif isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(spec.min_value),
                                               to_value=int(spec.max_value), step=1)]
        node.declare_parameter(spec.name, spec.default, desc)
