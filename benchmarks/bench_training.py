"""Training throughput: frozen backbone with cached features vs full fine-tuning.

Both on the same synthetic images, backbone and input size, in one run. Reported: images
per second of one training epoch in each mode (cached: head steps on stored features; the
one-off feature extraction is reported beside it), and their ratio.

    python -m benchmarks.bench_training [--backbone resnet18 --height 192 --width 256]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import write_results
from camera_pose_ros.learning.backbones import build_backbone
from camera_pose_ros.learning.losses import PoseLoss
from camera_pose_ros.learning.networks import PoseRegressor


def run(backbone: str = "resnet18", height: int = 192, width: int = 256, images: int = 64,
        batch: int = 16) -> dict:
    """Measure both modes on ``images`` random images; return the figures."""
    torch.manual_seed(0)
    x = torch.rand(images, 3, height, width)
    poses = torch.randn(images, 6)
    bb, info = build_backbone(backbone, "none")
    model = PoseRegressor(bb, info.feature_dim)
    loss_fn = PoseLoss("homoscedastic")

    def epoch(params, step_fn) -> float:
        opt = torch.optim.AdamW(params, 1e-4)
        t0 = time.perf_counter()
        for k in range(0, images, batch):
            loss = loss_fn(step_fn(k), poses[k:k + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    # full fine-tuning: forward and backward through the whole network
    model.train()
    epoch(list(model.parameters()), lambda k: model.head(model.features(x[k:k + batch])))
    t_full = epoch(list(model.parameters()),
                   lambda k: model.head(model.features(x[k:k + batch])))
    # cached: features once (no grad), then head-only epochs
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([model.features(x[k:k + batch]) for k in range(0, images, batch)])
    t_extract = time.perf_counter() - t0
    model.train()
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    epoch(head, lambda k: model.head(feats[k:k + batch]))
    t_cached = min(epoch(head, lambda k: model.head(feats[k:k + batch])) for _ in range(3))
    return {
        "backbone": backbone, "input": [height, width], "images": images,
        "threads": torch.get_num_threads(),
        "full_images_per_s": images / t_full,
        "cached_images_per_s": images / t_cached,
        "feature_extraction_images_per_s": images / t_extract,
        "ratio_cached_over_full": t_full / t_cached,
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=256)
    args = p.parse_args(argv)
    res = run(args.backbone, args.height, args.width)
    print(json.dumps(res, indent=2))
    print(f"written {write_results('training', res)}")
    return res


if __name__ == "__main__":
    main()
