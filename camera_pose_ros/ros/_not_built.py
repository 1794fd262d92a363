"""Entry point shared by executables whose implementation has not landed yet."""

from __future__ import annotations

import sys


def exit_not_built(executable: str, issue: str) -> int:
    """Say plainly that ``executable`` is not built yet and return the exit code 3."""
    sys.stderr.write(
        f"{executable}: not built yet in this version of camera_pose_ros ({issue}); "
        "nothing was started\n"
    )
    return 3
