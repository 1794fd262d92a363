"""Checkpoints: typed metadata written and read back, the format-1 layout of earlier
versions, and removed or unknown model kinds (learning/checkpoint.py)."""

from __future__ import annotations

import pickle

import pytest
import torch

from camera_pose_ros import CHECKPOINT_FORMAT_VERSION
from camera_pose_ros.errors import CheckpointError
from camera_pose_ros.learning.checkpoint import (
    CheckpointMeta,
    InputConfig,
    NetworkConfig,
    Provenance,
    build_regressor,
    load_checkpoint,
    save_checkpoint,
)
from camera_pose_ros.learning.export import export_model
from camera_pose_ros.learning.registry import ModelKind

NET = NetworkConfig(kind=ModelKind.MAPNET, backbone="mobilenet_v3_small", hidden=16,
                    dropout=0.2, pool_grid=(1, 1), pos_mean=(1.0, 2.0, 1.5), pos_scale=3.0)
INPUT = InputConfig(height=32, width=48)
PLAIN_NET = {"kind": "posenet", "backbone": "mobilenet_v3_small", "hidden": 32,
             "dropout": 0.2, "pool_grid": [1, 1], "pos_mean": [1.0, 2.0, 1.5],
             "pos_scale": 3.0}
PLAIN_INPUT = {"height": 48, "width": 64, "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225]}


def _old_payload(model: torch.nn.Module, kind: str | None = "posenet") -> dict:
    """A checkpoint as format 1 was written before the metadata was typed (no config_id)."""
    section = {"backbone": "mobilenet_v3_small", "hidden": 16, "pool_grid": [1, 1],
               "dropout": 0.2, "pos_mean": [1.0, 2.0, 1.5], "pos_scale": 3.0}
    if kind is not None:
        section["kind"] = kind
    return {
        "format": "camera_pose_ros.checkpoint", "format_version": 1,
        "package_version": "0.1.0", "created": "2026-11-21T10:00:00+00:00",
        "model": section,
        "input": {"height": 32, "width": 48, "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225]},
        "map_frame": "building",
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "pretrained": False, "weights_source": "",
        "provenance": {"dataset": "/data/b1", "refinement_map": "", "splits": {"train": 9},
                       "dataset_registration_rate": 0.97, "dataset_alignment_rms_m": 0.02,
                       "train_config": {"model": kind, "steps": 3, "skip": 2},
                       "best_epoch": 4, "epochs_run": 6, "train_seconds": 12.5,
                       "device": "cpu"},
        "metrics": {"validation": {"median_position_m": 0.5}},
        "calibration": {"method": "mc_dropout", "samples": 4, "k_pos": 2.0, "k_rot": 1.0},
    }


def test_typed_metadata_round_trips_through_the_file(tmp_path):
    model = build_regressor(NET).eval()
    prov = Provenance(dataset="/data/b1", splits={"train": 10, "validation": 3},
                      train_config={"model": "mapnet", "steps": 2}, best_epoch=3)
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg=NET, input_cfg=INPUT,
                           map_frame="building",
                           extra={"config_id": "mapnet-0123abcd", "pretrained": False,
                                  "provenance": prov, "calibration": {"k_pos": 2.0},
                                  "metrics": {"validation": {"median_position_m": 0.4}}})
    plain = torch.load(path, weights_only=True)  # enums are written as plain strings
    assert type(plain["model"]["kind"]) is str and plain["model"]["kind"] == "mapnet"
    loaded = load_checkpoint(path)
    meta = loaded.meta
    assert (meta.model, meta.input, meta.provenance) == (NET, INPUT, prov)
    assert meta.kind is ModelKind.MAPNET and meta.model.spec.title == "MapNet"
    assert (meta.map_frame, meta.config_id, meta.calibration) == (
        "building", "mapnet-0123abcd", {"k_pos": 2.0})
    assert meta.format_version == CHECKPOINT_FORMAT_VERSION and meta.created
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    assert CheckpointMeta.from_payload(meta.to_payload() | {"state_dict": {}}) == meta


def test_a_checkpoint_written_before_typed_metadata_still_loads(tmp_path):
    model = build_regressor(NET).eval()
    torch.save(_old_payload(model), tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.meta.config_id == "" and loaded.meta.kind is ModelKind.POSENET
    assert loaded.meta.provenance.dataset == "/data/b1"
    assert loaded.meta.provenance.train_config["steps"] == 3
    assert loaded.meta.calibration["k_pos"] == 2.0 and loaded.meta.map_frame == "building"
    assert (loaded.transform.height, loaded.transform.width) == (32, 48)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    # the earliest format-1 files have no model.kind: a PoseNet
    torch.save(_old_payload(model, kind=None), tmp_path / "nokind.pt")
    assert load_checkpoint(tmp_path / "nokind.pt").meta.kind is ModelKind.POSENET


def test_a_menet_checkpoint_is_refused_as_no_longer_supported(tmp_path):
    payload = _old_payload(build_regressor(NET), kind="menet")
    payload["pair_skip"] = 2
    torch.save(payload, tmp_path / "menet.pt")
    with pytest.raises(CheckpointError, match="MeNet checkpoints are no longer supported"):
        load_checkpoint(tmp_path / "menet.pt")
    with pytest.raises(CheckpointError, match="MeNet checkpoints are no longer supported"):
        export_model(tmp_path / "menet.pt", "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["model"].update(kind="vit"), "unknown model kind 'vit'"),
    (lambda d: d["model"].update(kind=7), "unknown model kind 7"),
    (lambda d: d.update(provenance="somewhere"), "provenance is not a mapping"),
    (lambda d: d["provenance"].update(dataset=5), "provenance.dataset"),
    (lambda d: d.update(config_id=12), "config_id is 12, not a string"),
    (lambda d: d.update(pretrained="yes"), "pretrained is 'yes'"),
])
def test_damaged_metadata_is_a_checkpoint_error(tmp_path, edit, message):
    payload = _old_payload(build_regressor(NET))
    edit(payload)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = build_regressor(NET)
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "nan.pt", model, model_cfg=NET, input_cfg=INPUT,
                        map_frame="map")
    with pytest.raises(TypeError, match="pair_skip"):
        save_checkpoint(tmp_path / "x.pt", build_regressor(NET), model_cfg=NET,
                        input_cfg=INPUT, map_frame="map", extra={"pair_skip": 2})
    assert list(tmp_path.iterdir()) == []


def test_plain_sections_are_accepted_as_before(tmp_path):
    """Tests and tools write checkpoints from plain dicts; they load as the typed ones."""
    model = build_regressor(NET.to_dict())
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg=NET.to_dict(),
                           input_cfg=INPUT.to_dict(), map_frame="map",
                           extra={"provenance": {"dataset": "/d"}})
    meta = load_checkpoint(path).meta
    assert meta.model == NET and meta.input == INPUT and meta.provenance.dataset == "/d"


def test_checkpoint_round_trip(tmp_path):
    model = build_regressor(PLAIN_NET).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg=PLAIN_NET, input_cfg=PLAIN_INPUT,
                           map_frame="map", extra={"calibration": {"k_pos": 2.0}})
    data = torch.load(path, weights_only=True)  # plain data: loads without unpickling code
    assert data["map_frame"] == "map" and data["calibration"]["k_pos"] == 2.0
    loaded = load_checkpoint(path)
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    assert (loaded.transform.height, loaded.transform.width) == (48, 64)


class Evil:
    """A pickled object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_refuses_pickled_objects_and_other_versions(tmp_path):
    model = build_regressor(PLAIN_NET)
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg=PLAIN_NET, input_cfg=PLAIN_INPUT,
                           map_frame="map", extra={})
    data = torch.load(path, weights_only=True)
    data["evil"] = Evil()
    torch.save(data, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not code"):
        load_checkpoint(tmp_path / "evil.pt")
    data.pop("evil")
    data["format_version"] = 999
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 999"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with open(tmp_path / "plain.pt", "wb") as fh:
        pickle.dump({"a": 1}, fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
