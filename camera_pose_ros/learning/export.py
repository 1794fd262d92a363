"""``camera-pose export``: TorchScript or ONNX of a checkpoint's regressor.

The exported graph takes ``images_B3HW``: float RGB in [0, 1] at the checkpoint's input size
(resize only; the ImageNet normalisation is inside the graph) and returns ``poses_B7``:
x, y, z, qw, qx, qy, qz in the map frame. Input size, map frame and normalisation are
stored beside the graph (TorchScript extra files / ONNX metadata).
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.fileio import atomic_path
from camera_pose_ros.learning.checkpoint import load_checkpoint

__all__ = ["ExportWrapper", "ExportFormat", "export_model", "FORMATS"]


class ExportFormat(str, Enum):
    """The ``--format`` of ``camera-pose export`` (spelling = value)."""

    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, fmt: str | ExportFormat) -> ExportFormat:
        """The member spelled ``fmt``; ConfigError names the choices otherwise."""
        try:
            return cls(fmt)
        except ValueError:
            raise ConfigError(f"unknown export format '{fmt}'; use "
                              f"{' or '.join(FORMATS)}") from None


FORMATS = tuple(f.value for f in ExportFormat)


class ExportWrapper(nn.Module):
    """Normalisation + regressor in one graph (dropout off)."""

    mean: torch.Tensor  # buffers (1, 3, 1, 1)
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Poses (B, 7) from RGB images in [0, 1]."""
        return self.model((images_B3HW - self.mean) / self.std)


def export_model(checkpoint: str | os.PathLike, fmt: str | ExportFormat,
                 out: str | os.PathLike) -> Path:
    """Export ``checkpoint`` as ``fmt`` to ``out`` (written atomically)."""
    fmt = ExportFormat.parse(fmt)
    loaded = load_checkpoint(checkpoint)
    inp = loaded.meta.input
    wrapper = ExportWrapper(loaded.model, list(inp.mean), list(inp.std)).eval()
    example = torch.rand(1, 3, inp.height, inp.width)
    meta = {"input": inp.to_dict(), "map_frame": loaded.meta.map_frame,
            "output": "poses_B7: x y z qw qx qy qz (map frame)",
            "model": loaded.meta.kind.value, "config_id": loaded.meta.config_id,
            "source_checkpoint_created": loaded.meta.created}
    out = Path(out)
    with atomic_path(out, suffix=".tmp") as tmp:
        if fmt is ExportFormat.TORCHSCRIPT:
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, example)
            torch.jit.save(traced, str(tmp), _extra_files={"meta.json": json.dumps(meta)})
        else:
            torch.onnx.export(
                wrapper, (example,), str(tmp), input_names=["images_B3HW"],
                output_names=["poses_B7"], dynamic_axes={"images_B3HW": {0: "batch"},
                                                         "poses_B7": {0: "batch"}},
                opset_version=17, dynamo=False)
            import onnx

            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = "camera_pose_ros", json.dumps(meta)
            onnx.save(proto, str(tmp))
    return out
