"""benchmarks/bench_models.py: its stages, and the table from finished stage outputs."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_honesty import QUICK
from benchmarks.bench_models import commands, markdown, modes, results, run


def test_stages_cover_every_model_and_mode_in_order(tmp_path):
    cmds = commands(tmp_path, ["posenet", "structure_aware"], QUICK, "cpu")
    names = list(cmds)
    assert names[:2] == ["synth", "dataset"]
    assert names.index("train_posenet") < names.index("query_posenet_refine")
    assert "query_structure_aware_scr-pnp" in names and "query_posenet_scr-pnp" not in names
    argv = cmds["query_structure_aware_scr-pnp"][0]
    assert argv[argv.index("--mode") + 1] == "scr-pnp"
    # a quick run keeps the structure-aware stages inside its two epochs
    cfg = tmp_path / "structure_quick.yaml"
    assert "geometry_epochs: 1" in cfg.read_text()
    with pytest.raises(SystemExit, match="unknown model"):
        run(["resnet"], work=tmp_path)


def test_results_and_table_from_finished_stages(tmp_path):
    def figures(median: float) -> dict:
        return {"frames": 10, "median_position_m": median, "median_rotation_deg": 2.0,
                "within_5cm_5deg": 0.1, "within_25cm_2deg": 0.2, "within_50cm_5deg": 0.3,
                "within_100cm_10deg": 0.4, "outside_99_any": 0.02,
                "coverage_68_position": 0.7, "ms_per_frame": 12.0}

    for model, median in (("posenet", 2.0), ("structure_aware", 0.5)):
        (tmp_path / f"eval_{model}").mkdir()
        (tmp_path / f"eval_{model}" / "metrics.json").write_text(json.dumps(
            {**figures(median), "modes": {m: figures(median) for m in modes(model)}}))
        for mode in modes(model):
            f = figures(0.05 if mode == "scr-pnp" else median)
            (tmp_path / f"query_{model}_{mode}.metrics.json").write_text(json.dumps(f))
        (tmp_path / f".stage-train_{model}.json").write_text(json.dumps({"seconds": 600}))
    res = results(tmp_path, ["posenet", "structure_aware"])
    assert res["ratios"]["query_posenet_over_structure_direct"] == pytest.approx(4.0)
    assert res["ratios"]["query_posenet_over_structure_scr_pnp"] == pytest.approx(40.0)
    table = markdown({"quick": False, "size": QUICK, "device": "cpu", **res})
    assert "structure_aware (10.0 min) | scr-pnp | query walk | 0.050 m" in table
    assert "direct 4.0x, scr-pnp 40.0x" in table
