"""A building's floors file: one map frame, dataset, model and refinement map per floor.

A building with several floors is mapped floor by floor (one ``camera-pose dataset`` per
floor's mapping walk, one model and one refinement map each) and described by a YAML file::

    floors:
      - id: "0"                        # the floor's name (letters, digits, _ and -)
        elevation: 0.0                 # metres above the building's map frame
        frame_id: map_0                # default: <map_frame>_<id>
        model_path: floor_0/model.pt   # the node needs it (paths relative to this file)
        refinement_map: ""             # default: found from the checkpoint, as for one floor
        floorplan_yaml: floor_0/floorplan.yaml   # optional
      - id: "1"
        elevation: 3.2
        ...

``camera-pose synth --floors F`` writes this file (without models) beside the floors'
folders. numpy-free; PyYAML only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.fileio import write_text_atomic

__all__ = ["FloorSpec", "load_floors", "write_floors", "FLOORS_FILE"]

#: the file ``synth --floors`` writes beside the floors' folders
FLOORS_FILE = "floors.yaml"

_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_KEYS = {"id", "elevation", "frame_id", "model_path", "refinement_map", "floorplan_yaml"}


@dataclass(frozen=True)
class FloorSpec:
    """One floor of a building (paths absolute, or empty when not given)."""

    id: str
    elevation: float
    frame_id: str
    model_path: str = ""
    refinement_map: str = ""
    floorplan_yaml: str = ""


def load_floors(path: str | os.PathLike, map_frame: str = "map") -> list[FloorSpec]:
    """The floors a floors file lists, in its order.

    Raises:
        ConfigError: the file is missing or unreadable, or a floor is malformed (a missing
            or repeated id, an unknown key, a non-numeric elevation, a repeated frame).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read floors file {path}: {exc}") from exc
    floors = raw.get("floors") if isinstance(raw, dict) else None
    if not isinstance(floors, list) or not floors:
        raise ConfigError(f"floors file {path} must hold a non-empty list under 'floors'")
    out: list[FloorSpec] = []
    for k, entry in enumerate(floors):
        where = f"floors file {path}, floor {k + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
        unknown = sorted(set(map(str, entry)) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_KEYS))})")
        fid = str(entry.get("id", ""))
        if not _ID.match(fid):
            raise ConfigError(f"{where}: id must be 1-32 letters, digits, _ or -, got {fid!r}")
        try:
            elevation = float(entry.get("elevation", 0.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: elevation must be a number") from exc
        paths = [str(path.parent / str(entry[key])) if entry.get(key) else ""
                 for key in ("model_path", "refinement_map", "floorplan_yaml")]
        out.append(FloorSpec(fid, elevation, str(entry.get("frame_id") or f"{map_frame}_{fid}"),
                             *paths))
    for attr in ("id", "frame_id"):
        seen = [getattr(f, attr) for f in out]
        dup = sorted({v for v in seen if seen.count(v) > 1})
        if dup:
            raise ConfigError(f"floors file {path}: repeated {attr} {', '.join(dup)}")
    return out


def write_floors(path: str | os.PathLike, floors: list[FloorSpec]) -> Path:
    """Write a floors file (atomically); paths under the file's folder are made relative."""
    path = Path(path)

    def rel(p: str) -> str:
        if not p:
            return ""
        try:
            return str(Path(p).resolve().relative_to(path.parent.resolve()))
        except ValueError:
            return p

    entries = []
    for f in floors:
        entry: dict[str, object] = {"id": f.id, "elevation": f.elevation, "frame_id": f.frame_id}
        for key in ("model_path", "refinement_map", "floorplan_yaml"):
            if getattr(f, key):
                entry[key] = rel(getattr(f, key))
        entries.append(entry)
    return write_text_atomic(path, "# one dataset, model and refinement map per floor "
                                   "(camera_pose_ros.io.floors)\n"
                             + yaml.safe_dump({"floors": entries}, sort_keys=False))
