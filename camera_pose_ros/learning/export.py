"""``camera-pose export``: TorchScript or ONNX of a checkpoint's network.

The exported graph takes ``images_B3HW``: float RGB in [0, 1] at the checkpoint's input size
(resize only; the ImageNet normalisation is inside the graph). A regressor's graph returns
``poses_B7``: x, y, z, qw, qx, qy, qz in the map frame. A structure-aware model's
TorchScript graph returns ``poses_B7`` (its weighted Kabsch pose), ``scene_B3hw`` (map-frame
scene coordinates at stride 8: PnP input), ``cam_B3hw`` (camera-frame points from the
depth) and ``weights_B1hw``; its ONNX graph stops before the Kabsch step (ONNX has no SVD
operator) and returns the last three, to be solved with
:func:`camera_pose_ros.learning.structure.kabsch_numpy` (or PnP). Input size, map frame,
normalisation and outputs are stored beside the graph (TorchScript extra files / ONNX
metadata).
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
from camera_pose_ros.learning.structure import StructureAwareNet, rotmat_to_quat

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


class StructureExportWrapper(ExportWrapper):
    """Normalisation + structure-aware network; with ``kabsch`` the pose as well."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], *,
                 kabsch: bool) -> None:
        super().__init__(model, mean, std)
        self.kabsch = kabsch

    def forward(self, images_B3HW: torch.Tensor):
        """(poses_B7,) scene_B3hw, cam_B3hw, weights_B1hw from RGB images in [0, 1]."""
        x = (images_B3HW - self.mean) / self.std
        net = self.model
        assert isinstance(net, StructureAwareNet)
        if not self.kabsch:
            geo = net.geometry(x)
            return geo["scene"], geo["cam"], net.weights(geo["scene"], geo["cam"])
        out = net(x)
        poses = torch.cat([out["t"], rotmat_to_quat(out["rot"])], 1)
        return poses, out["scene"], out["cam"], out["weights"]


def export_model(checkpoint: str | os.PathLike, fmt: str | ExportFormat,
                 out: str | os.PathLike) -> Path:
    """Export ``checkpoint`` as ``fmt`` to ``out`` (written atomically)."""
    fmt = ExportFormat.parse(fmt)
    loaded = load_checkpoint(checkpoint)
    inp = loaded.meta.input
    structure = isinstance(loaded.model, StructureAwareNet)
    outputs: list[str] = ["poses_B7"]
    wrapper: ExportWrapper
    if structure:
        wrapper = StructureExportWrapper(loaded.model, list(inp.mean), list(inp.std),
                                         kabsch=fmt is ExportFormat.TORCHSCRIPT).eval()
        outputs = (["poses_B7"] if fmt is ExportFormat.TORCHSCRIPT else []) + [
            "scene_B3hw", "cam_B3hw", "weights_B1hw"]
    else:
        wrapper = ExportWrapper(loaded.model, list(inp.mean), list(inp.std)).eval()
    example = torch.rand(1, 3, inp.height, inp.width)
    meta: dict[str, object] = {"input": inp.to_dict(), "map_frame": loaded.meta.map_frame,
            "output": "poses_B7: x y z qw qx qy qz (map frame)",
            "outputs": outputs,
            "model": loaded.meta.kind.value, "config_id": loaded.meta.config_id,
            "source_checkpoint_created": loaded.meta.created}
    if structure:
        meta["output"] = (
            "poses_B7: the weighted Kabsch pose, x y z qw qx qy qz (map frame); "
            if fmt is ExportFormat.TORCHSCRIPT else
            "no pose: ONNX has no SVD operator; solve weighted Kabsch on the outputs with "
            "camera_pose_ros.learning.structure.kabsch_numpy, or PnP on scene_B3hw; ") + (
            "scene_B3hw: map-frame scene coordinates, one per 8x8 input pixels (cell "
            "centres at 8j + 3.5); cam_B3hw: camera-frame points; weights_B1hw: weights")
        meta["intrinsics_normalised"] = [float(v) for v in loaded.meta.model.intrinsics]
    out = Path(out)
    with atomic_path(out, suffix=".tmp") as tmp:
        if fmt is ExportFormat.TORCHSCRIPT:
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, example)
            torch.jit.save(traced, str(tmp), _extra_files={"meta.json": json.dumps(meta)})
        else:
            torch.onnx.export(
                wrapper, (example,), str(tmp), input_names=["images_B3HW"],
                output_names=outputs, dynamic_axes={"images_B3HW": {0: "batch"},
                                                    **{o: {0: "batch"} for o in outputs}},
                opset_version=17, dynamo=False)
            import onnx

            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = "camera_pose_ros", json.dumps(meta)
            onnx.save(proto, str(tmp))
    return out
