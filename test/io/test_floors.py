"""The floors file: each floor's id, elevation, frame and files, read back as written."""

from __future__ import annotations

import pytest

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.io.floors import FloorSpec, load_floors, write_floors


def test_floors_file_round_trip_with_relative_paths(tmp_path):
    (tmp_path / "f0").mkdir()
    specs = [FloorSpec("0", 0.0, "map_0", str(tmp_path / "f0" / "model.pt"),
                       floorplan_yaml=str(tmp_path / "f0" / "floorplan.yaml")),
             FloorSpec("roof", 6.4, "map_roof", "/elsewhere/model.pt")]
    path = write_floors(tmp_path / "floors.yaml", specs)
    text = path.read_text()
    assert "f0/model.pt" in text and str(tmp_path) not in text  # relative to the file
    assert load_floors(path) == specs
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "floors.yaml").write_text(text)
    assert load_floors(moved / "floors.yaml")[0].model_path == str(moved / "f0" / "model.pt")


def test_frame_defaults_to_the_map_frame_and_the_id(tmp_path):
    path = tmp_path / "floors.yaml"
    path.write_text("floors:\n  - id: B1\n    elevation: -3\n  - id: '2'\n")
    floors = load_floors(path, map_frame="building")
    assert [(f.id, f.elevation, f.frame_id) for f in floors] == [
        ("B1", -3.0, "building_B1"), ("2", 0.0, "building_2")]
    assert floors[0].model_path == ""


@pytest.mark.parametrize("text, says", [
    ("floors: []\n", "non-empty list"),
    ("- id: 0\n", "non-empty list"),
    ("floors:\n  - elevation: 1\n", "id must be"),
    ("floors:\n  - id: 'a b'\n", "id must be"),
    ("floors:\n  - id: a\n    height: 3\n", "unknown key(s) height"),
    ("floors:\n  - id: a\n    elevation: high\n", "elevation must be a number"),
    ("floors:\n  - id: a\n  - id: a\n", "repeated id a"),
    ("floors:\n  - {id: a, frame_id: m}\n  - {id: b, frame_id: m}\n", "repeated frame_id m"),
    ("floors:\n  - 3\n", "expected a mapping"),
    ("floors: [\n", "cannot read"),
])
def test_a_malformed_floors_file_is_refused_with_the_reason(tmp_path, text, says):
    path = tmp_path / "floors.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        load_floors(path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_a_missing_floors_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read floors file"):
        load_floors(tmp_path / "none.yaml")
