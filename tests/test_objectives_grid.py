"""The objectives grid (configs/objectives.yaml) and its GPU twin (configs/factorization_curse.yaml), run
end to end at a tiny size: every objective trains, and every cell reports forward QA and inverse search on
P_train, P_val and P_test with the answer-length split and its compute."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from bidirect import sweep as sweep_lib
from bidirect.cli import main

ROOT = Path(__file__).resolve().parent.parent
GRIDS = ["objectives.yaml", "factorization_curse.yaml"]


def shrunk(name: str) -> dict:
    """The grid file with its people, networks and steps made tiny, every variant kept."""
    raw = yaml.safe_load((ROOT / "configs" / name).read_text())
    raw = copy.deepcopy(raw)
    raw["data"].update(individuals=30, augmentations=["multi2+permute+fullname"])
    raw["model"].update(layers=1, heads=2, width=32, mlp_width=64)
    raw["pretrain"].update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
    raw["finetune"].update(steps=2, batch_size=4, log_every=1)
    raw["eval"]["batch_size"] = 64
    for settings in raw["sweep"]["objective"].values():
        for backbone in settings.get("backbones", []):
            if isinstance(backbone, dict):
                backbone.get("pretrain", {}).update(steps=4)
                backbone.get("finetune", {}).update(steps=2)
                for phase in ("pretrain", "finetune"):
                    backbone.get(phase, {}).pop("batch_size", None)
    for key in [k for k in raw["sweep"] if k != "objective"]:
        raw["sweep"][key] = raw["sweep"][key][:1]
    return raw


@pytest.mark.parametrize("name", GRIDS)
def test_grid_files_have_the_six_objectives(name):
    sweep = sweep_lib.load(ROOT / "configs" / name)
    objectives = {c.values["objective"] for c in sweep.cells}
    six = {"gpt2-rope", "gpt2-rope+reverse", "gbert-mlm15", "gbert-attribute40", "gbert-mlm-u", "gbert-diffusion"}
    longer = {"gbert-attribute40-8k", "gbert-mlm-u-8k"} if name == "objectives.yaml" else set()
    assert objectives == six | longer
    for cell in sweep.cells:
        cfg = cell.config
        assert cfg.data.inverse and len(cfg.backbones) == 1
        assert cfg.causal.reverse == (cell.values["objective"] == "gpt2-rope+reverse")


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    raw = shrunk("factorization_curse.yaml")
    (root / "grid.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(root / "grid.yaml"), "--out", str(root / "out")]) == 0
    return root / "out"


def test_the_tiny_grid_reports_every_level_with_its_split_and_compute(tiny_grid):
    cells = json.loads((tiny_grid / "sweep.json").read_text())["cells"]
    assert len(cells) == 6
    for cell in cells:
        results = json.loads((tiny_grid / cell["name"] / "results.json").read_text())
        ((backbone, levels),) = results["results"]["multi2+permute+fullname"].items()
        inverse = ["inverse_train", "inverse_val", "inverse_test"]
        assert {"qa_train", "qa_val", "qa_test", *inverse} <= set(levels)
        for level in ("qa_train", "qa_val", "qa_test"):  # an inverse answer is a full name: several tokens always
            assert set(levels[level]["by_length"]) == {"one_token", "several_tokens"}
        assert levels["inverse_val"]["people"] == levels["inverse_val"]["n"] > 0
        for phase in results["training"]["multi2+permute+fullname"][backbone].values():
            assert phase["flops"] > 0 and phase["tokens"] > 0
    summary = json.loads((tiny_grid / "summary.json").read_text())
    assert {row["values"]["objective"] for row in summary["rows"]} == {c["values"]["objective"] for c in cells}


def test_the_grid_report_plots_held_out_accuracy_against_compute(tiny_grid, tmp_path):
    assert main(["report", str(tiny_grid), "--out", str(tmp_path / "report.md")]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "against compute" in text
    assert (tmp_path / "report" / "compute.png").is_file()
