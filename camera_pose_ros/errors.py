"""Named exceptions for every error a user can cause.

The CLI prints ``str(error)`` without a traceback and exits non-zero; nodes log it and keep
running. Messages say what went wrong and what to do about it.
"""

__all__ = [
    "CameraPoseError",
    "ConfigError",
    "InputDataError",
    "BagError",
    "ImageDecodeError",
    "SfMError",
    "AlignmentError",
    "SplitError",
    "CheckpointError",
    "TrainingError",
    "RefinementError",
    "FormatError",
    "CameraModelError",
    "OutputError",
]


class CameraPoseError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(CameraPoseError):
    """A configuration file or option is invalid (unknown key, wrong type, out of range)."""


class InputDataError(CameraPoseError):
    """An input (a file, a folder, a message) is missing, empty or malformed."""


class BagError(InputDataError):
    """A ROS 2 bag cannot be read or lacks the requested topic."""


class ImageDecodeError(InputDataError):
    """An image message or file cannot be decoded (encoding, size, corrupt data)."""


class SfMError(CameraPoseError):
    """Structure-from-motion failed or registered too few frames."""


class AlignmentError(CameraPoseError):
    """Control points are too few, degenerate or cannot be matched to frames."""


class SplitError(CameraPoseError):
    """A dataset split cannot be made or read (too few frames, empty split)."""


class CheckpointError(CameraPoseError):
    """A checkpoint is missing, unsafe, corrupt or from an incompatible version."""


class TrainingError(CameraPoseError):
    """Training cannot go on (non-finite loss, empty data)."""


class RefinementError(CameraPoseError):
    """Geometric refinement cannot run: no refinement map, or one that does not fit."""


class FormatError(InputDataError):
    """A file or message of one of the project's formats is unreadable or inconsistent."""


class CameraModelError(InputDataError):
    """Camera intrinsics are unusable (non-finite, unknown distortion model, bad size)."""


class OutputError(CameraPoseError):
    """An output file or folder cannot be written (a parent is a file, not writable)."""
