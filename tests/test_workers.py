"""Workers. A sweep's (`bidirect sweep --workers N`, or several `bidirect sweep` on one folder): each cell trained
once by one worker, results equal to one worker's, a killed worker's cell taken over, the summary written once.
A run's (`bidirect run --workers N`): its backbones trained side by side into the models one process trains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cut import cut_env
from test_faults import _drop_timing
from tiny import TINY, single_study

from bidirect import ownership, study, sweep
from bidirect.cli import main
from bidirect.ownership import Lock
from bidirect.rundir import SUMMARY_FILE

GRID = {"seed": [0, 1], "finetune.steps": [2, 3]}  # four cells
CELLS = ["finetune.steps=2,seed=0", "finetune.steps=2,seed=1", "finetune.steps=3,seed=0", "finetune.steps=3,seed=1"]

# sitecustomize.py for the workers: every rename onto a summary.json, one line each, in SUMMARY_LOG.
SUMMARY_HOOK = """
import os, sys
_log = os.environ.get("SUMMARY_LOG")
if _log:
    def _hook(event, args):
        if event == "os.rename" and os.fsdecode(args[1]).endswith("/summary.json"):
            with open(_log, "a") as f:
                f.write(f"{os.getpid()} {os.fsdecode(args[1])}\\n")
    sys.addaudithook(_hook)
"""


def _grid(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**single_study(pretrain__checkpoint_every=3, **changes), "sweep": GRID}))
    return path


def _claims(text: str) -> list[str]:
    """The cells a worker's output says it started (`sweep i/n NAME`, no state after it)."""
    return re.findall(r"^(?:\[w\d\] )?sweep \d+/\d+ (\S+)$", text, flags=re.MULTILINE)


def _results(folder: Path) -> dict[str, dict]:
    return {name: _drop_timing(json.loads((folder / name / "results.json").read_text())) for name in CELLS}


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as each of --workers trains (results.json records it)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The grid swept by one worker: the results every arrangement of workers must give."""
    root = tmp_path_factory.mktemp("one_worker")
    out = root / "out"
    subprocess.run([sys.executable, "-m", "bidirect", "sweep", str(_grid(root)), "--out", str(out)], env=ONE_THREAD,
                   check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture
def one_thread():
    """This process trains on one torch thread, as a worker does."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _summary_hook(tmp_path: Path, monkeypatch) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SUMMARY_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))
    log = tmp_path / "summaries.log"
    monkeypatch.setenv("SUMMARY_LOG", str(log))
    return log


def test_two_workers_train_each_cell_once_with_one_workers_results(tmp_path, one_worker, capsys, monkeypatch):
    log = _summary_hook(tmp_path, monkeypatch)
    out = tmp_path / "out"
    code = main(["sweep", str(_grid(tmp_path)), "--out", str(out), "--workers", "2"])
    text = capsys.readouterr().out
    assert code == 0, text[-3000:]
    assert sorted(_claims(text)) == sorted(CELLS), text[-3000:]  # every cell started once, by one worker
    assert {line[:4] for line in text.splitlines() if line.startswith("[w")} == {"[w1]", "[w2]"}
    assert _results(out) == _results(one_worker)
    assert len(log.read_text().splitlines()) == 1  # the summary written once, by the worker that finished last
    assert json.loads((out / SUMMARY_FILE).read_text())["rows"] == \
        json.loads((one_worker / SUMMARY_FILE).read_text())["rows"]
    # Another worker later finds everything finished: it prints the summary and writes nothing.
    before = (out / SUMMARY_FILE).stat()
    assert main(["sweep", str(_grid(tmp_path)), "--out", str(out)]) == 0
    assert "summary:" in capsys.readouterr().out
    after = (out / SUMMARY_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(log.read_text().splitlines()) == 1
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_killed_workers_cell_is_finished_by_another(tmp_path, one_worker, monkeypatch, capsys, one_thread):
    """Worker A is killed (SIGKILL) holding the first cell, right after its first checkpoint; worker B, already at
    work on the second cell, takes the first over once A is dead, and finishes the grid: every cell as one worker
    made it."""
    grid, out = _grid(tmp_path), tmp_path / "out"
    checkpoint = out / CELLS[0] / "models/single/gpt2-rope/pretrain/checkpoints/step_00000003"
    env = cut_env(ONE_THREAD, checkpoint, tmp_path / "hooks", sig=signal.SIGKILL)
    a = subprocess.Popen([sys.executable, "-m", "bidirect", "sweep", str(grid), "--out", str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in a.stdout:  # A holds the first cell's lock once it prints that it started it
        if line.startswith(f"sweep 1/4 {CELLS[0]}"):
            break
    real = study.run_study
    started = []

    def after_a_died(cfg, run_dir, *args, **kwargs):
        started.append(run_dir.name)
        a.wait()  # B trains its first cell only once A is dead: A's cell is then free at B's next claim
        return real(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(study, "run_study", after_a_died)
    assert main(["sweep", str(grid), "--out", str(out)]) == 0
    a.stdout.read()
    assert a.returncode == -9
    assert started == [CELLS[1], CELLS[0], CELLS[2], CELLS[3]]
    assert "trained by process" in capsys.readouterr().out  # B saw A's claim
    assert _results(out) == _results(one_worker)
    assert (out / SUMMARY_FILE).is_file()


def test_two_workers_started_at_the_same_instant_make_one_sweep(tmp_path, one_worker):
    grid, out = _grid(tmp_path), tmp_path / "new" / "out"
    argv = [sys.executable, "-m", "bidirect", "sweep", str(grid), "--out", str(out)]
    workers = [subprocess.Popen(argv, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    texts = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], texts
    assert sorted(_claims(texts[0]) + _claims(texts[1])) == sorted(CELLS), "\n=====\n".join(texts)
    assert _results(out) == _results(one_worker)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary left beside it


def test_a_worker_on_a_sweep_of_another_study_is_refused(tmp_path, one_worker, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(_grid(tmp_path)), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**single_study(pretrain__steps=5), "sweep": GRID}))
    capsys.readouterr()
    assert main(["sweep", str(other), "--out", str(out), "--workers", "2"]) == 2
    text = capsys.readouterr().out
    assert "holds a sweep of another study" in text and "[w1]" not in text  # refused before any worker started
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("argv", "message"), [(["--workers", "0"], "--workers: at least 1, got 0"),
                                               (["--workers", "2", "--force"], "--workers with --force")])
def test_workers_refused_as_asked(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["sweep", str(_grid(tmp_path)), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().out and not out.exists()


def test_summary_of_a_sweep_in_progress_names_each_cells_state(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({**single_study(), "sweep": {"seed": [0, 1, 2]}}))
    out = tmp_path / "out"
    parsed = sweep.load(grid)
    sweep.open_sweep_dir(out, parsed, grid).opened.close()
    assert main(["summary", str(out)]) == 2  # nothing to pool yet: said after each cell's state
    text = capsys.readouterr().out
    assert text.count(": free") == 3 and "no finished cell yet" in text
    first = sweep.Sweep(parsed.study, {"seed": [0]}, parsed.cells[:1])  # seed 0 alone, run to the end
    study.run_study(first.cells[0].config, out / "seed=0", study.make_accelerator(first.cells[0].config, out))
    ownership.open_run_dir(out / "seed=1", parsed.cells[1].config).close()  # begun, and held by another worker:
    code = ("from pathlib import Path; from bidirect.ownership import Lock; import sys; "
            f"Lock(Path({str(out / 'seed=1')!r})).acquire(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["summary", str(out)]) == 0
        text = capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    assert "cell seed=0: finished" in text and f"cell seed=1: claimed by process {holder.pid}" in text
    assert "cell seed=2: free" in text and (out / SUMMARY_FILE).is_file()
    Lock(out).acquire().release()  # nothing left holding the sweep


# --------------------------------------------------------------------------- a run's workers


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("phase.json", "log.jsonl", "README.md")}


def test_a_runs_backbones_trained_side_by_side_equal_one_process(tmp_path, capsys, one_thread):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "augmentations": ["single"]}}))
    alone, side_by_side = tmp_path / "alone", tmp_path / "workers"
    subprocess.run([sys.executable, "-m", "bidirect", "run", str(config), "--out", str(alone)], env=ONE_THREAD,
                   check=True, capture_output=True, timeout=600)
    assert main(["run", str(config), "--out", str(side_by_side), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "[w1] single/gpt2-rope/pretrain step" in text and "[w2] single/gbert/pretrain step" in text
    a, b = (json.loads((d / "results.json").read_text()) for d in (alone, side_by_side))
    assert _drop_timing(a) == _drop_timing(b) and b["torch_threads"] == 1
    assert _files(alone / "models") == _files(side_by_side / "models")  # the weights, byte for byte
    # A finished run asked again with workers: nothing to train, nothing changed.
    before = (side_by_side / "results.json").stat().st_mtime_ns
    assert main(["run", str(config), "--out", str(side_by_side), "--resume", "--workers", "2"]) == 0
    assert "[w1]" not in capsys.readouterr().out and (side_by_side / "results.json").stat().st_mtime_ns == before


def test_train_cells_refused_unless_its_parent_holds_the_run(run_copy, capsys):
    _, run = run_copy
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train-cells", str(run), "--cell", "single/gpt2-rope"]) == 2
    assert "train-cells trains only for the `bidirect run --workers` that holds the run's lock (held by no process)" \
        in capsys.readouterr().out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_sweep_under_accelerate_launch_claims_each_cell_once_for_both_processes(tmp_path):
    """Under `accelerate launch` the main process claims a cell and the other trains the same one with it (the
    claim is broadcast), cell after cell."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({**single_study(), "sweep": {"seed": [0, 1]}}))
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bidirect"]
    done = subprocess.run([*launch, "sweep", str(grid), "--out", str(out)], env=ONE_THREAD, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _claims(done.stdout) == ["seed=0", "seed=1"], done.stdout[-3000:] + done.stderr[-3000:]
    assert all((out / cell / "results.json").is_file() for cell in ("seed=0", "seed=1"))
    assert (out / SUMMARY_FILE).is_file()
