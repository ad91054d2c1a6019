"""ownership.py's own pieces: the folders --force never deletes, files recognised as bidirect's by their content,
and a lock shared within one process. End to end (a second process refused, --force on a user's folder, a kill
mid-creation): test_safety.py, test_user_files.py, test_kill_points.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidirect import ownership, rundir
from bidirect.ownership import FolderInUse, Lock


def test_never_the_root_home_or_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ownership.forbidden(Path("/")) == "it is the root of the file system"
    assert ownership.forbidden(tmp_path) == "it is the current folder"
    assert ownership.forbidden(tmp_path.parent) == "it holds the current folder"
    assert ownership.forbidden(tmp_path / "new") is None


def test_a_users_file_under_bidirects_name_is_theirs(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"rows": [], "pooled": {}, "group_by": [], "axes": {}}))
    (tmp_path / "notes.json").write_text(json.dumps({"rows": []}))
    assert ownership.is_summary(tmp_path / "summary.json") and not ownership.is_summary(tmp_path / "notes.json")
    (tmp_path / "probe.json").write_text(json.dumps({"phase": "pretrain", "results": {}}))
    (tmp_path / "capacity.json").write_text("my notes")
    assert ownership.is_analysis(tmp_path / "probe.json") and not ownership.is_analysis(tmp_path / "capacity.json")
    with pytest.raises(rundir.RunDirError, match="not a capacity file bidirect wrote"):
        ownership.check_analysis_target(tmp_path / "capacity.json")


def test_foreign_entries_of_a_run_folder(tmp_path):
    rundir.write_marker(tmp_path, "run")
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "anything").write_text("bidirect made the folder: all of it is its")
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "results.json").symlink_to(tmp_path / "thesis.tex")
    assert ownership.foreign_entries(tmp_path, "run") == ["results.json", "thesis.tex"]


def test_a_second_lock_in_the_same_process_shares_the_first(tmp_path):
    rundir.write_marker(tmp_path, "run")
    first = Lock(tmp_path).acquire()
    second = Lock(tmp_path).acquire()  # a library caller opening the folder twice
    first.release()
    assert ownership.holder_pid(tmp_path) is not None  # still held: the second holder has not released
    second.release()
    assert ownership.holder(tmp_path) is None
    ownership.check_unlocked(tmp_path)


def test_a_held_folder_names_its_holder(tmp_path):
    import subprocess
    import sys

    rundir.write_marker(tmp_path, "run")
    code = ("import sys, time; from pathlib import Path; from bidirect.ownership import Lock; "
            "Lock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"in use by process {holder.pid}"):
            Lock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    Lock(tmp_path).acquire().release()  # the lock ended with its process
