"""results.py: the records of results.json and the phases table. Every committed results.json reads into a `Run`
and writes back byte for byte the same JSON value (nothing a reader does not know is lost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidirect.protocol import ALL_LEVELS
from bidirect.results import (
    Cell,
    Run,
    bio_phase,
    final_phase,
    interval,
    phase_mode,
    phases,
    run_or_none,
    shape_error,
    train_section,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "runs").rglob("results.json"))


def test_there_are_committed_results():
    assert len(COMMITTED) > 50


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "runs").parent))
def test_every_committed_results_json_round_trips(path):
    d = json.loads(path.read_text())
    assert shape_error(d) is None
    run = Run.from_json(d)
    assert run.to_json() == d
    assert list(run.to_json()) == list(d)  # the keys in the order the file has them
    assert all(lv in ALL_LEVELS for c in run.cells for lv in c.levels), "a level the protocol does not know"


def test_interval_reads_a_levels_ci95_and_nothing_where_there_is_none():
    scores = {"mean": 0.5, "ci95": {"mean": [0.4, 0.6], "major": None}}
    assert interval(scores) == (0.4, 0.6)
    assert interval(scores, "major") == (None, None)  # a column without items
    assert interval({"mean": 0.5}) == (None, None)  # results made before intervals


def test_the_phases_of_each_protocol():
    assert phases("pretrain_finetune") == ("pretrain", "finetune")
    assert (bio_phase("pretrain_finetune"), final_phase("pretrain_finetune")) == ("pretrain", "finetune")
    assert (bio_phase("mixed"), final_phase("mixed")) == ("mixed", "mixed")
    assert (train_section("finetune"), train_section("mixed")) == ("finetune", "pretrain")
    assert phase_mode({"mode": "lora", "lora_rank": 4}) == "lora (r=4)"
    assert phase_mode({"mode": "full"}) == "full"


def test_a_cell_is_complete_only_with_its_training_leak_check_and_parameters():
    levels = {"qa_test": {"mean": 1.0}, "bio_recall": {"mean": 1.0}}
    assert not Cell("single", "gbert", levels).complete
    cell = Cell("single", "gbert", levels, {"finetune": {"mode": "full"}}, {"leaks": 0}, {"total": 1})
    assert cell.complete and cell.finetune == {"mode": "full"}
    assert cell.shown_levels() == ["bio_recall", "qa_test"]  # the protocol's order, not the file's


def test_what_is_not_a_results_file():
    assert run_or_none([1, 2]) is None
    assert run_or_none({"results": []}) is None
    assert shape_error({"results": {"single": {"gbert": {"qa_test": 1.0}}}}) == \
        "results.single.gbert: expected a mapping of level -> scores"
    assert shape_error({"results": {}, "wall_seconds": "soon"}) == "wall_seconds: expected a number, got str"
    assert run_or_none({"results": {}}) == Run()


def _index_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("index_runs", ROOT / "scripts" / "index_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_run_folder_serves_one_finding_and_the_index_is_current():
    index = _index_script()
    named = index.listed()
    folders = sorted(p.name for p in (ROOT / "runs").iterdir() if p.is_dir())
    assert sorted(named) == folders, "runs/findings.yaml must name every folder of runs/ once"
    assert len(named) == len(set(named))
    assert (ROOT / "runs" / "INDEX.md").read_text() == index.index_text(), "run python scripts/index_runs.py"
