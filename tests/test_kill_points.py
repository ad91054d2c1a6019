"""A kill at any instant while bidirect creates a run, sweep or cell folder leaves either nothing there or a folder
that bidirect recognises as its own and continues: tested by stopping a child process (``os._exit``, as SIGKILL
does: no cleanup runs) right after each file-system step of the creation in turn, not by racing a clock.

A sweep killed between one cell's end and the next cell's config used to leave a cell folder with only the marker,
which ``--resume`` refused forever (a dead end for a user, lost device time for the GPU ladder).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from tiny import ONE_CELL, tiny_config

from bidirect import config as config_lib
from bidirect import ownership, rundir
from bidirect import sweep as sweep_lib
from bidirect.rundir import CONFIG_FILE, MARKER, RunDirError

# The child: count every file-system step (a folder made, a file opened for writing, a rename, a lock) and exit
# at once, as a kill would, right after step K of the creation.
CHILD = textwrap.dedent("""
    import fcntl, os, sys
    from pathlib import Path
    import yaml
    from bidirect import config as config_lib, ownership, rundir, sweep as sweep_lib

    what, target, config_path, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    steps = [0]

    def counted(fn, writes=lambda *a, **k: True):
        def step(*args, **kwargs):
            result = fn(*args, **kwargs)
            if writes(*args, **kwargs):
                steps[0] += 1
                if steps[0] == stop:
                    os._exit(137)
            return result
        return step

    os.mkdir = counted(os.mkdir)
    os.rename = counted(os.rename)
    os.replace = counted(os.replace)
    os.open = counted(os.open, lambda path, flags, *a, **k: bool(flags & (os.O_WRONLY | os.O_RDWR)))
    fcntl.flock = counted(fcntl.flock)
    if what == "run":
        ownership.open_run_dir(target, config_lib.load(config_path)).close()
    elif what == "cell":  # as a sweep opens each cell
        ownership.open_run_dir(target, config_lib.load(config_path), resume=True).close()
    else:
        sweep_lib.open_sweep_dir(target, sweep_lib.load(config_path), config_path).opened.close()
    print("steps", steps[0])
""")


def _kill_after(what: str, target: Path, config: Path, stop: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, what, str(target), str(config), str(stop)],
                          capture_output=True, text=True, timeout=120)


def _every_kill_point(what: str, target: Path, config: Path, check) -> int:
    """Kill the creation after step 1, 2, ... until it completes unkilled; after each kill, ``check`` the folder
    (it must be absent, or bidirect's and continuable), then clear it for the next point. Returns the steps."""
    for stop in range(1, 100):
        done = _kill_after(what, target, config, stop)
        if done.returncode == 0:
            assert f"steps {stop - 1}" in done.stdout, done.stdout
            return stop - 1
        assert done.returncode == 137, done.stderr[-2000:]
        check(stop)
        for path in (target, rundir.temporary_path(target)):
            if path.exists():
                shutil.rmtree(path)
    raise AssertionError("the creation never completed")


@pytest.fixture
def study(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**ONE_CELL)))
    return path


@pytest.mark.parametrize("what", ["run", "cell"])
def test_a_run_folder_killed_while_created_is_absent_or_resumable(tmp_path, study, what):
    run = tmp_path / "parent" / "run"
    if what == "cell":  # a cell's folder lives in its sweep folder, which exists already
        run.parent.mkdir()
    cfg = config_lib.load(study)

    def check(stop):
        found = sorted(p.name for p in run.iterdir()) if run.exists() else []
        assert found in ([], [MARKER, CONFIG_FILE]), f"step {stop}: a partial folder {found}"
        opened = ownership.open_run_dir(run, cfg, resume=True)  # what the sweep (and `run --resume`) does next
        opened.close()
        assert sorted(p.name for p in run.iterdir()) == [MARKER, CONFIG_FILE], f"step {stop}"
        assert config_lib.load(run / CONFIG_FILE, saved=True).to_dict() == cfg.to_dict()
        assert not rundir.temporary_path(run).exists()  # the killed creation's temporary is gone

    assert _every_kill_point(what, run, study, check) >= 5  # marker, lock, config and rename at least


def test_a_sweep_folder_killed_while_created_is_absent_or_continued(tmp_path):
    source = tmp_path / "grid.yaml"
    source.write_text(yaml.safe_dump({**tiny_config(**ONE_CELL), "sweep": {"seed": [0, 1]}}))
    out = tmp_path / "grid"
    sweep = sweep_lib.load(source)

    def check(stop):
        found = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert found in ([], [MARKER, "sweep.json", "sweep.yaml"]), f"step {stop}: a partial folder {found}"
        sweep_lib.open_sweep_dir(out, sweep, source).opened.close()
        assert sorted(p.name for p in out.iterdir()) == [MARKER, "sweep.json", "sweep.yaml"], f"step {stop}"
        assert ownership.foreign_entries(out, "sweep") == []

    assert _every_kill_point("sweep", out, source, check) >= 6


def test_a_leftover_creation_is_replaced_but_a_users_folder_of_that_name_is_not(tmp_path, study):
    run = tmp_path / "run"
    cfg = config_lib.load(study)
    assert _kill_after("run", run, study, 3).returncode == 137  # the marker and its lock written, then killed
    assert rundir.temporary_path(run).is_dir() and not run.exists()
    ownership.open_run_dir(run, cfg).close()
    assert (run / CONFIG_FILE).is_file() and not rundir.temporary_path(run).exists()

    other = tmp_path / "other"
    (rundir.temporary_path(other)).mkdir()
    (rundir.temporary_path(other) / "thesis.tex").write_text("mine")
    with pytest.raises(RunDirError, match=r"\.other\.tmp: holds thesis.tex, which bidirect did not write"):
        ownership.open_run_dir(other, cfg)
    assert (rundir.temporary_path(other) / "thesis.tex").read_text() == "mine" and not other.exists()


def test_a_creation_in_progress_is_not_taken_for_a_leftover(tmp_path, study):
    """Two processes creating the same folder at once: the second is refused, naming the first, and the first's
    temporary is left alone."""
    run = tmp_path / "run"
    tmp = rundir.temporary_path(run)
    tmp.mkdir()
    rundir.write_marker(tmp, "run")
    lock = ownership.Lock(tmp).acquire()
    holder = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from bidirect import config, ownership; "
         "ownership.open_run_dir(Path(sys.argv[1]), config.load(sys.argv[2]))", str(run), str(study)],
        capture_output=True, text=True, timeout=120)
    lock.release()
    assert holder.returncode != 0 and "in use by" in holder.stderr and (tmp / MARKER).is_file()
