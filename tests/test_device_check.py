"""The GPU device check (scripts/device_check.sh) and its ladder (configs/gpu_ladder.yaml, scripts/ladder.py):
the ladder file's rules, and the script rehearsed on the CPU at tiny sizes, call after call as the rare sessions
lent a GPU make them, so that it keeps working in between."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from cut import cut_env

from bidirect.config import dump, load

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"
_spec = importlib.util.spec_from_file_location("ladder", ROOT / "scripts" / "ladder.py")
ladder = importlib.util.module_from_spec(_spec)
sys.modules["ladder"] = ladder  # its dataclasses look their module up there
_spec.loader.exec_module(ladder)

RUNGS = [("gpu_contrast", "run", "runs/gpu_contrast"), ("load_curve_gpu", "sweep", "runs/load_curve_gpu"),
         ("gpu_paper_masking", "run", "runs/gpu_paper_masking"),
         ("factorization_curse", "sweep", "runs/factorization_curse")]


# --------------------------------------------------------------------------- the ladder file


@pytest.mark.parametrize("name", ["gpu_ladder.yaml", "gpu_ladder_dry.yaml"])
def test_the_ladders_have_the_four_rungs_in_order(name):
    """The dry ladder is the GPU ladder rung for rung, so that its rehearsal walks the same steps."""
    rungs = ladder.load(ROOT / "configs" / name)
    assert [(r.name, r.kind, str(r.out)) for r in rungs] == RUNGS
    assert all(r.why and r.cells for r in rungs)


def test_the_paper_masking_rung_is_gpu_contrast_with_the_papers_masking():
    contrast, paper = (load(ROOT / "configs" / f"{n}.yaml").to_dict() for n in ("gpu_contrast", "gpu_paper_masking"))
    assert [b["name"] for b in paper["backbones"]] == ["gbert"]
    assert paper["masking"] == {**contrast["masking"], "probability": 0.15, "span": "word"}
    assert paper["pretrain"] == {**contrast["pretrain"], "steps": 6000, "batch_size": 256, "checkpoint_every": 1000}
    for key in ("data", "tokenizer", "model", "finetune", "eval", "seed", "protocol"):
        assert paper[key] == contrast[key], key


def _write(tmp_path: Path, rungs) -> Path:
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump({"rungs": rungs}, sort_keys=False))
    return path


GOOD = {"name": "first", "run": "configs/gpu_contrast_dry.yaml", "out": "runs/first", "why": "a test"}


@pytest.mark.parametrize("change,words", [
    ({"out": None}, ["rung 1 (first)", "field 'out'"]),
    ({"out": "elsewhere/first"}, ["rung 1 (first)", "field 'out'", "under runs/"]),
    ({"out": "runs/../first"}, ["rung 1 (first)", "field 'out'"]),
    ({"why": ""}, ["rung 1 (first)", "field 'why'"]),
    ({"sweep": "configs/factorization_curse_dry.yaml"}, ["rung 1 (first)", "exactly one"]),
    ({"run": "configs/factorization_curse_dry.yaml"}, ["rung 1 (first)", "field 'run'", "a sweep file"]),
    ({"run": None, "sweep": "configs/gpu_contrast_dry.yaml"}, ["rung 1 (first)", "field 'sweep'", "not a sweep"]),
    ({"run": "configs/no_such.yaml"}, ["rung 1 (first)", "field 'run'", "no_such.yaml"]),
    ({"runs": "x"}, ["rung 1 (first)", "field 'runs'", "not a field"]),
    ({"name": "a b"}, ["rung 1 (a b)", "field 'name'"]),
])
def test_a_bad_rung_is_named_with_its_field(tmp_path, change, words):
    entry = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ladder.LadderError) as err:
        ladder.load(_write(tmp_path, [entry]))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_two_rungs_may_not_share_a_name_or_a_folder(tmp_path):
    with pytest.raises(ladder.LadderError, match=r"rung 2 \(first\): field 'name'"):
        ladder.load(_write(tmp_path, [GOOD, {**GOOD, "out": "runs/second"}]))
    with pytest.raises(ladder.LadderError, match=r"rung 2 \(second\): field 'out'"):
        ladder.load(_write(tmp_path, [GOOD, {**GOOD, "name": "second", "out": "runs/first/inner"}]))
    with pytest.raises(ladder.LadderError, match="one top-level key"):
        ladder.load(_write(tmp_path, []))


def test_the_next_rung_is_the_first_unfinished_one(tmp_path):
    rungs = ladder.load(ROOT / "configs" / "gpu_ladder_dry.yaml")
    first, second = rungs[0], rungs[1]
    assert ladder.next_rung(rungs, tmp_path) is first
    assert ladder.command(first, tmp_path) == ["run", "configs/gpu_contrast_dry.yaml", "--out",
                                               str(tmp_path / "runs/gpu_contrast")]
    folder = tmp_path / first.out
    folder.mkdir(parents=True)
    cfg = first.cells[0][1]
    dump(cfg, folder / "config.yaml")
    aug = cfg.augmentations()[0].name
    (folder / "results.json").write_text(json.dumps({"results": {aug: {"gpt2-rope": {}}}}))
    assert ladder.progress(first, tmp_path) == (1, 2) and ladder.next_rung(rungs, tmp_path) is first
    assert ladder.command(first, tmp_path)[-1] == "--resume"  # a started run is continued, not refused
    (folder / "results.json").write_text(json.dumps({"results": {aug: {"gpt2-rope": {}, "gbert": {}}}}))
    assert ladder.next_rung(rungs, tmp_path) is second
    other = load(ROOT / "configs" / "gpu_contrast_dry.yaml", ["seed=1"])
    dump(other, folder / "config.yaml")  # the config was edited after the rung ran
    with pytest.raises(ladder.LadderError, match="rung gpu_contrast: .* is not the study"):
        ladder.next_rung(rungs, tmp_path)


# --------------------------------------------------------------------------- the script, on the CPU


def _call(out: Path, budget: int, *flags: str, cut: Path | None = None) -> subprocess.CompletedProcess:
    """One device call: OUT emptied of what the last one brought back (the rungs' runs/ folder stays, as the
    repository's runs/ does on a warm machine). ``cut``: a path; the rung's process is ended with SIGTERM right
    after it renames a file into place there."""
    for p in out.glob("*"):
        if p.is_file():
            p.unlink()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if cut is not None:  # at one known point, not when a poller gets to run (tests/cut.py)
        env = cut_env(env, cut, out.parent / "cut_hook")
    done = subprocess.run(["bash", str(SCRIPT), str(out), str(budget), *flags], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if cut is not None:
        assert "exit code 143" in (out / "rung.log").read_text(), done.stdout[-3000:]  # cut by the hook, not ended
    return done


def _unpack_as_a_fresh_machine(out: Path, folder: str) -> None:
    """What a later session has of a rung: its folder as rung.tgz brought it back (and it was committed)."""
    shutil.rmtree(out / folder)
    with tarfile.open(out / "rung.tgz") as tar:
        tar.extractall(out, filter="data")


@pytest.mark.slow
def test_device_check_dry_run_walks_the_ladder(tmp_path):
    out = tmp_path / "out"
    # First call of a session: the bench, then the first rung, finished.
    done = _call(out, 400, "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:]
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["bench.json", "bench.log", "ladder.txt", "nvidia-smi.txt", "rung.log", "rung.tgz",
                     "versions.txt"]  # at most 8: what a device call can bring back
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["backbones"]) == {"gpt2-rope", "gbert"} and bench["config"]["size_name"] == "tiny"
    assert "rung gpu_contrast: exit code 0" in (out / "rung.log").read_text()
    with tarfile.open(out / "rung.tgz") as tar:
        names = tar.getnames()
        results = json.load(tar.extractfile("runs/gpu_contrast/results.json"))
    assert not any(n.endswith((".safetensors", ".bin")) or "/data/" in n for n in names)  # what stays behind
    assert {aug: sorted(cells) for aug, cells in results["results"].items()} == {
        "multi2+permute+fullname": ["gbert", "gpt2-rope"]}
    # A later session has only what came back: the rung is still finished, so its next call goes on.
    _unpack_as_a_fresh_machine(out, "runs/gpu_contrast")
    assert ladder.next_rung(ladder.load(ROOT / "configs" / "gpu_ladder_dry.yaml"), out).name == "load_curve_gpu"

    # Second call (--resume: no bench): the load-curve sweep, a cell per backbone, finished.
    done = _call(out, 400, "--dry-run", "--resume")
    assert done.returncode == 0 and not (out / "bench.json").exists(), (out / "rung.log").read_text()[-3000:]
    with tarfile.open(out / "rung.tgz") as tar:
        cells = sorted(n.split("/")[2] for n in tar.getnames() if n.endswith("/results.json"))
    assert cells == ["kind=causal", "kind=masked"] and "next: gpu_paper_masking" in (out / "ladder.txt").read_text()

    # Third call: the next rung, cut off once it has written a checkpoint...
    pretrain = out / "runs/gpu_paper_masking/models/multi2+permute+fullname/gbert/pretrain"
    done = _call(out, 400, "--dry-run", "--resume", cut=pretrain / "checkpoints" / "step_00000002")
    assert done.returncode != 0 and not (out / "bench.json").exists()
    assert "next: gpu_paper_masking" in (out / "ladder.txt").read_text()
    with tarfile.open(out / "rung.tgz") as tar:
        names = tar.getnames()
    assert "runs/gpu_paper_masking/config.yaml" in names and not any("checkpoints" in n for n in names)
    # ... continues on the same machine from that checkpoint, not from the start.
    done = _call(out, 400, "--dry-run", "--resume")
    log = (out / "rung.log").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "--resume" in log.splitlines()[0] and "resumed from" in log and "gpu_paper_masking: exit code 0" in log
    assert "next: factorization_curse" in (out / "ladder.txt").read_text()

    # The sweep rung, cut off after its first cell, continues in a later session from what came back.
    sweep = out / "runs/factorization_curse"
    done = _call(out, 400, "--dry-run", "--resume", cut=sweep / "objective=gpt2-rope" / "results.json")
    assert done.returncode != 0 and "next: factorization_curse" in (out / "ladder.txt").read_text()
    _unpack_as_a_fresh_machine(out, "runs/factorization_curse")
    done = _call(out, 400, "--dry-run", "--resume")
    log = (out / "rung.log").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "objective=gpt2-rope: finished, skipped" in log and "summary:" in log
    assert "next: none, every rung is finished" in (out / "ladder.txt").read_text()


def test_device_check_refuses_an_unknown_mode(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "10", "--fast"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr and not any(tmp_path.iterdir())
