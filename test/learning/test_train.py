"""Pure parts of training (learning/train.py): the resume check against ``last.pt``."""

from __future__ import annotations

import pytest
import torch

from camera_pose_ros.config import to_dict
from camera_pose_ros.errors import ConfigError
from camera_pose_ros.learning.registry import train_config
from camera_pose_ros.learning.train import _resume_state


def _last_pt(tmp_path, config: dict):
    """A minimal resume state (no weights) whose config is ``config``."""
    state = {"epoch": 1, "step": 4, "best": {"score": 1.0, "epoch": 0}, "model": {},
             "loss": {}, "optimizer": {}, "scheduler": {}, "config": config}
    torch.save(state, tmp_path / "last.pt")
    return tmp_path / "last.pt"


def test_resume_accepts_a_last_pt_that_holds_every_models_keys(tmp_path):
    """Before each model had its own schema, a PoseNet's last.pt held MapNet's keys too."""
    cfg = train_config({"epochs": 5})
    old = to_dict(cfg) | {"steps": 3, "skip": 2, "relative_weight": 1.0}
    assert _resume_state(_last_pt(tmp_path, old), cfg)["epoch"] == 1


def test_resume_names_the_settings_that_changed(tmp_path):
    cfg = train_config({"model": "mapnet", "steps": 2})
    path = _last_pt(tmp_path, to_dict(cfg) | {"steps": 3})
    with pytest.raises(ConfigError, match=r"another config: steps \(3 in last.pt, 2 now\)"):
        _resume_state(path, cfg)
    path = _last_pt(tmp_path, to_dict(cfg) | {"colour": "red"})
    with pytest.raises(ConfigError, match="another config: colour"):
        _resume_state(path, cfg)
    # a setting that only says where to stop may change
    more = train_config({"model": "mapnet", "steps": 2, "epochs": 500})
    assert _resume_state(_last_pt(tmp_path, to_dict(cfg)), more)["step"] == 4
