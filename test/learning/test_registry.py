"""The model registry and the per-model training-config schemas (learning/registry.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from camera_pose_ros.config import from_dict, to_dict
from camera_pose_ros.errors import ConfigError
from camera_pose_ros.learning.losses import LossKind
from camera_pose_ros.learning.registry import (
    MODELS,
    MapNetConfig,
    ModelKind,
    PoseNetConfig,
    model_spec,
    train_config,
)
from camera_pose_ros.learning.train import load_train_config

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("key, value", [("steps", 3), ("skip", 2), ("relative_weight", 0.5)])
@pytest.mark.parametrize("model", [{}, {"model": "posenet"}])
def test_posenet_config_with_a_mapnet_key_is_an_error_naming_it(key, value, model):
    with pytest.raises(ConfigError, match=rf"{key} is a setting of model mapnet; model "
                                          "posenet does not take it"):
        train_config({**model, key: value}, where="c.yaml")


def test_posenet_yaml_with_a_mapnet_key_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: posenet\nepochs: 3\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: steps is a setting of model mapnet"):
        load_train_config(cfg)


def test_mapnet_config_keeps_its_keys():
    cfg = train_config({"model": "mapnet", "steps": 4, "skip": 3, "relative_weight": 0.0})
    assert isinstance(cfg, MapNetConfig) and cfg.model is ModelKind.MAPNET
    assert cfg.tuple_layout() == (4, 3)
    # relative_weight reaches the loss: the same absolute error, once shared by a tuple's
    # frames (relative poses right) and once on one frame (relative poses wrong)
    raw = torch.zeros(2, 3, 6)
    same = raw.clone()
    same[..., :3] += 0.5
    apart = raw.clone()
    apart[:, 1, :3] += 1.5
    weighted = train_config({"model": "mapnet", "relative_weight": 1.0, "loss": "l1"})
    unweighted = train_config({"model": "mapnet", "relative_weight": 0.0, "loss": "l1"})
    assert unweighted.build_loss()(apart, raw) == pytest.approx(
        unweighted.build_loss()(same, raw).item())
    assert weighted.build_loss()(apart, raw) > weighted.build_loss()(same, raw)


def test_mapnet_needs_tuples_of_two_frames_or_more():
    with pytest.raises(ConfigError, match="steps >= 2"):
        train_config({"model": "mapnet", "steps": 1})


def test_posenet_trains_on_single_frames():
    cfg = train_config({"loss": "l1"})
    assert isinstance(cfg, PoseNetConfig) and cfg.tuple_layout() is None
    pred, target = torch.zeros(4, 6), torch.ones(4, 6)
    assert cfg.build_loss()(pred, target).item() == pytest.approx(2.0)  # l1, beta 1


@pytest.mark.parametrize("preset", sorted(REPO_CONFIG.glob("train_*.yaml")),
                         ids=lambda p: p.name)
def test_every_training_preset_loads_in_its_models_schema(preset):
    cfg = load_train_config(preset)
    assert preset.stem == f"train_{cfg.model.value}"
    assert type(cfg) is MODELS[cfg.model.value].config


def test_removed_menet_config_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="MeNet configs are no longer supported: MeNet was "
                                          "removed because .*nothing useful"):
        train_config({"model": "menet", "skip": 3})


def test_unknown_model_names_the_choices():
    with pytest.raises(ConfigError, match="model must be posenet, mapnet or structure_aware, "
                                          "got 'vit'"):
        train_config({"model": "vit"})
    with pytest.raises(ConfigError, match="model must be posenet, mapnet or structure_aware"):
        model_spec(3)


def test_a_schema_must_match_its_model():
    with pytest.raises(ConfigError, match="takes the MapNetConfig schema"):
        PoseNetConfig(model=ModelKind.MAPNET)


def test_enum_settings_take_yaml_spellings_and_write_them_back():
    cfg = train_config({"model": "mapnet", "loss": "mse"})
    assert cfg.loss is LossKind.MSE
    plain = to_dict(cfg)
    assert (plain["model"], plain["loss"]) == ("mapnet", "mse")
    assert type(plain["model"]) is str and type(plain["loss"]) is str  # loads weights_only
    assert from_dict(MapNetConfig, plain) == cfg
    with pytest.raises(ConfigError, match=r"loss: 'huber' is not one of l1, smoothl1"):
        train_config({"loss": "huber"})
    # built directly with spellings, the fields still hold the members
    assert PoseNetConfig(model="posenet", loss="beta").loss is LossKind.BETA


def test_identity_follows_the_settings_that_shape_the_model():
    base = train_config({"lr": 1e-3})
    assert base.identity().startswith("posenet-") and len(base.identity()) == len("posenet-") + 8
    assert train_config({"lr": 1e-3, "device": "cpu", "num_workers": 3}).identity() == (
        base.identity())
    assert train_config({"lr": 2e-3}).identity() != base.identity()
    assert train_config({"model": "mapnet", "lr": 1e-3}).identity().startswith("mapnet-")
