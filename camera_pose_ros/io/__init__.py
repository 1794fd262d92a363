"""Formats: the files and messages the offline stages write and the online code reads.

Bags (``bags``, ``bagrepair``), camera images as message fields (``images``), pose tables
(``posecsv``), floor plans (``floorplan``), the refinement map (``refmap``), image
retrieval descriptors (``retrieval``) and trajectory figures (``figures``). This layer
imports neither torch nor rclpy, and nothing above it: the dataset stages, the learning
code, the runtime, the nodes and the dashboard all read and write through it.
"""
