"""The Python API a notebook uses: run a study from a mapping, read results as tidy DataFrames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_config

import bidirect.api as bd
from bidirect.config import ConfigError
from bidirect.protocol import MEMORIZATION_LEVELS
from bidirect.results import ATTRIBUTES
from bidirect.rundir import RunDirError

ROOT = Path(__file__).resolve().parents[1]


def test_run_from_a_mapping_and_read_it_as_a_frame(tmp_path):
    results = bd.run(tiny_config(), tmp_path / "run", overrides=["data.augmentations=[single]", "pretrain.steps=3"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["results"] == results["results"]
    assert bd.study_config(tmp_path / "run" / "config.yaml").pretrain.steps == 3  # the override is recorded
    df = bd.results_frame(tmp_path / "run")
    assert list(df.columns) == bd.COLUMNS
    models = df[df.backbone != "majority"]
    assert set(models.backbone) == {"gpt2-rope", "gbert"} and set(models.augmentation) == {"single"}
    assert set(models.attribute) == {*ATTRIBUTES, "mean"}
    # every number is the one in results.json, with its interval and counts
    for row in models.itertuples():
        level = results["results"][row.augmentation][row.backbone][row.level]
        assert row.accuracy == level[row.attribute] and row.items == level["n"] and row.people == level["people"]
        assert [row.ci_low, row.ci_high] == level["ci95"][row.attribute]
    gbert = models[(models.backbone == "gbert") & (models.attribute == "mean")]
    assert set(gbert.level) == {*MEMORIZATION_LEVELS, "qa_train", "qa_test", "qa_train_prior",
                                "qa_test_prior", "qa_train_given", "qa_test_given"}
    majority = df[df.backbone == "majority"]
    assert set(majority.level) == {"qa_test", "qa_test_given"} and len(majority) == 2 * (len(ATTRIBUTES) + 1)
    # a finished run is never overwritten, from Python either
    with pytest.raises(RunDirError, match="holds a finished run"):
        bd.run(tiny_config(), tmp_path / "run")


def test_bad_config_from_python_gets_the_loaders_message():
    with pytest.raises(ConfigError, match=r"pretrain.steps: must be > 0, got 0"):
        bd.study_config({"pretrain": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"unknown key data.people"):
        bd.study_config(None, ["data.people=3"])
    assert bd.study_config(None).data.individuals == 300  # the embedded default


def test_sweep_frame_has_the_swept_values_as_columns():
    df = bd.sweep_frame(ROOT / "runs" / "example_sweep")
    assert list(df.columns[:3]) == ["cell", "seed", "pretrain.steps"]
    assert sorted(set(df["seed"])) == [0, 1, 2] and sorted(set(df["pretrain.steps"])) == [50, 100, 300]
    one = df[(df.cell == "seed=1,pretrain.steps=300") & (df.level == "qa_train") & (df.attribute == "mean")]
    cell = json.loads((ROOT / "runs" / "example_sweep" / "seed=1,pretrain.steps=300" / "results.json").read_text())
    assert one.accuracy.item() == cell["results"]["single"]["gpt2-rope"]["qa_train"]["mean"]


def test_sweep_from_a_mapping_returns_the_summary_it_writes(tmp_path):
    """`bd.sweep` is `bidirect sweep` without the table: it runs the cells, and returns the summary.json it
    writes; called again with a value added, it runs only the new cell and pools both."""
    from tiny import single_study

    grid = {**single_study(pretrain__steps=3), "sweep": {"seed": [0]}}
    first = bd.sweep(grid, tmp_path / "s")
    assert first == json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [row["n"] for row in first["rows"]] == [1] and (tmp_path / "s" / "seed=0" / "results.json").is_file()
    kept = (tmp_path / "s" / "seed=0" / "results.json").stat().st_mtime_ns
    second = bd.sweep({**grid, "sweep": {"seed": [0, 1]}}, tmp_path / "s")
    assert (tmp_path / "s" / "seed=0" / "results.json").stat().st_mtime_ns == kept  # finished: skipped
    [row] = second["rows"]
    assert row["n"] == 2 and row["cells"] == ["seed=0", "seed=1"]
    assert row["levels"]["qa_test"]["mean"]["ci95"] is not None  # two seeds: an interval
    assert set(bd.sweep_frame(tmp_path / "s").cell) == {"seed=0", "seed=1"}
