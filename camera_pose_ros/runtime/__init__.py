"""Runtime: the online pieces without ROS.

The localizer (image -> pose estimate, batched, with floor snapping and refinement), the
batch job of ``camera-pose localize``, and the relocalization node's frame path (workers,
refinement scheduling, odometry, relocalization requests, diagnostics) that the node only
wires to topics.
"""
