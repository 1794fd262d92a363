"""Learning: backbones, networks, losses, data, training, evaluation, checkpoints. No ROS."""
