"""rundir.py's own pieces: where a run's things are, and how a file is written so that a reader never sees half of
it. What bidirect may replace or delete and the lock: test_ownership.py and the behaviour suites (test_safety.py,
test_user_files.py, test_received_folders.py, test_kill_points.py)."""

from __future__ import annotations

import json

import pytest

from bidirect import rundir
from bidirect.rundir import RunDirError, RunFolder


def test_results_json_is_always_valid_json(tmp_path):
    path = tmp_path / "r.json"
    rundir.write_json_atomic(path, {"loss": float("nan"), "rows": [float("inf"), 1.5]})

    def refuse(name):
        raise AssertionError(f"{name} in results.json")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"loss": None, "rows": [None, 1.5]}
    assert not list(tmp_path.glob(".*.tmp"))


def test_lists_of_numbers_take_one_line():
    text = rundir.json_text({"hits": [[1, 0], [0, 1]], "ci95": [0.25, 0.75], "name": ["a", "b"]})
    assert '"hits": [[1, 0], [0, 1]]' in text and '"ci95": [0.25, 0.75]' in text
    assert '"name": [\n' in text  # only numbers are folded
    assert json.loads(text) == {"hits": [[1, 0], [0, 1]], "ci95": [0.25, 0.75], "name": ["a", "b"]}


def test_an_atomic_write_never_replaces_a_folder_nor_writes_through_a_link(tmp_path):
    (tmp_path / "results.json").mkdir()
    with pytest.raises(RunDirError, match="a folder, not a file bidirect wrote"):
        rundir.write_text_atomic(tmp_path / "results.json", "{}")
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("mine")
    (tmp_path / "out.json").symlink_to(theirs)
    rundir.write_text_atomic(tmp_path / "out.json", "{}")
    assert theirs.read_text() == "mine" and not (tmp_path / "out.json").is_symlink()
    assert rundir.temporary_path(tmp_path / "out.json") == tmp_path / ".out.json.tmp"


def test_where_a_runs_things_are(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert run.results == tmp_path / "r" / "results.json" and run.config == tmp_path / "r" / "config.yaml"
    model = run.model("single", "gbert", "finetune")
    assert model == tmp_path / "r" / "models" / "single" / "gbert" / "finetune" / "model"
    assert rundir.run_of_model(model) is None  # no config.yaml: not a run folder
    run.config.parent.mkdir()
    run.config.write_text("name: x\n")
    assert rundir.run_of_model(model) == tmp_path / "r"
    assert rundir.run_of_model(tmp_path / "elsewhere" / "model") is None


def test_a_link_out_of_the_run_folder_is_refused(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "models").symlink_to(outside)
    rundir.check_inside(run, run / "data")  # not there yet: inside all the same
    with pytest.raises(RunDirError, match="a symbolic link out of the run folder"):
        rundir.check_inside(run, run / "models" / "single")
