"""camera_pose_ros.config: typed dataclass configs from YAML, with every mistake named."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from camera_pose_ros.config import check_range, from_dict, load_yaml, to_dict
from camera_pose_ros.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    steps: int = 3
    out: Path | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        check_range("steps", self.steps, low=1)


def test_values_are_coerced_to_their_declared_types():
    cfg = from_dict(Outer, {"steps": 5, "out": "a/b", "inner": {"rate": "1e-3",
                                                                  "names": ["x", "y"]}})
    assert cfg == Outer(5, Path("a/b"), False, Inner(1e-3, ("x", "y")))
    assert from_dict(Outer, None) == Outer()
    assert from_dict(Inner, {"rate": 2}).rate == 2.0 and isinstance(
        from_dict(Inner, {"rate": 2}).rate, float)


@pytest.mark.parametrize(("data", "words"), [
    ({"stepz": 1}, "unknown key(s) stepz"),
    ({"inner": {"rat": 1}}, "inner: unknown key(s) rat"),
    ({"steps": 2.5}, "steps: expected an integer"),
    ({"steps": True}, "steps: expected an integer"),
    ({"flag": "yes"}, "flag: expected true/false"),
    ({"inner": {"rate": float("nan")}}, "inner.rate: expected a finite number"),
    ({"inner": {"rate": "fast"}}, "inner.rate: expected a number"),
    ({"inner": {"names": "x"}}, "inner.names: expected a list"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"inner": 3}, "inner: expected a mapping"),
])
def test_every_mistake_is_a_config_error_naming_the_key(data, words):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert words in str(info.value)


@pytest.mark.parametrize(("kwargs", "value", "want"), [
    ({"low": 0.0, "low_open": True}, 0.0, "> 0"),
    ({"low": 0.0, "high": 1.0}, 1.5, "in [0, 1]"),
    ({"high": 1.0, "high_open": True}, 1.0, "< 1"),
    ({}, float("inf"), "a finite number"),
    ({}, True, "a finite number"),
])
def test_check_range_says_what_it_wanted(kwargs, value, want):
    with pytest.raises(ConfigError, match=want.replace("[", r"\[").replace("]", r"\]")):
        check_range("k", value, **kwargs)
    check_range("k", 0.5, low=0.0, high=1.0)  # inside: silent


def test_load_yaml_reads_mappings_and_names_bad_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("steps: 4\ninner:\n  rate: 1e-2\n")
    assert from_dict(Outer, load_yaml(good)) == Outer(4, inner=Inner(0.01))
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    cases = {"list.yaml": ("- 1\n- 2\n", "mapping at the top level"),
             "broken.yaml": ("a: [1, 2\n", "invalid YAML"),
             "binary.yaml": (b"\xff\xfe\x00a", "not a UTF-8 text file")}
    for name, (content, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ConfigError, match=words):
            load_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_to_dict_round_trips_through_from_dict():
    cfg = Outer(7, Path("x/y"), True, Inner(0.5, ("a",)))
    plain = to_dict(cfg)
    assert plain["out"] == "x/y" and plain["inner"]["names"] == ["a"]
    assert from_dict(Outer, plain) == cfg


def test_the_shipped_refinement_settings_are_the_defaults():
    from camera_pose_ros.runtime.refine import RefineConfig

    shipped = Path(__file__).resolve().parents[1] / "config" / "refine.yaml"
    assert RefineConfig.from_dict(load_yaml(shipped)) == RefineConfig()
