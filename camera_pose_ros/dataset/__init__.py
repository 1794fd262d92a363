"""Dataset layer: frames, SfM (pycolmap), alignment, splits, maps, synthetic scenes.

No torch and no ROS here.
"""
