"""Lose nothing, ever (issue 10): what --force may delete, checks before deletion, the run lock,
finished runs left alone, every float finite and every size bounded, and one message (never a
traceback) for damaged files, OS errors and Ctrl-C.

Every folder here is a real one under pytest's tmp_path. The guard against deleting ``/``, the
home folder or the current folder is tested on the guard function and through the CLI with HOME
and the current folder moved into tmp_path: nothing here can reach the real ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import ONE_CELL, write_config

from bidirect import ownership, rundir, study
from bidirect.cli import main
from bidirect.config import MAX_BIOS, ConfigError, from_dict, load
from bidirect.rundir import MARKER, RunDirError

FINETUNE = "models/single/gpt2-rope/finetune"


def _snapshot(top: Path) -> dict[str, str]:
    """Every file and folder under ``top`` with the hash of its bytes (and its modification time)."""
    return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            if p.is_file() else "dir" for p in sorted(top.rglob("*"))}


def _unlocked(folder: Path) -> bool:
    """Another process can take ``folder``'s lock: nobody holds it (this one has released it)."""
    code = f"from pathlib import Path; from bidirect.ownership import Lock; Lock(Path({str(folder)!r})).acquire()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    text = capsys.readouterr().out
    assert "Traceback" not in text
    return code, " ".join(text.split())


# --------------------------------------------------------------------------- --force: only bidirect's own folders


@pytest.fixture
def home_and_cwd(tmp_path, monkeypatch):
    """HOME and the current folder inside tmp_path, each marked as a bidirect run folder, so that
    only the guard (not the marker) can stop --force."""
    home = tmp_path / "home"
    cwd = home / "work" / "here"
    cwd.mkdir(parents=True)
    for folder in (home, home / "work", cwd):
        rundir.write_marker(folder, "run")
        (folder / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home, cwd


@pytest.mark.parametrize("which,why", [("root", "root of the file system"), ("home", "your home folder"),
                                       ("cwd", "the current folder"), ("dot", "the current folder"),
                                       ("ancestor", "holds the current folder"), ("above_home", "holds your home"),
                                       ("symlink", "symbolic link")])
def test_force_guard_never_the_root_home_cwd_or_an_ancestor(home_and_cwd, which, why):
    home, cwd = home_and_cwd
    link = home.parent / "link"
    link.symlink_to(home / "work", target_is_directory=True)
    folder = {"root": Path("/"), "home": home, "cwd": cwd, "dot": Path("."), "ancestor": home / "work",
              "above_home": home.parent, "symlink": link}[which]
    if which != "symlink":
        assert ownership.forbidden(folder) is not None and why in ownership.forbidden(folder)
    with pytest.raises(RunDirError, match=f"--force will not delete it: .*{why}"):
        ownership.check_replaceable(folder, "run")  # raises before anything: it never deletes


@pytest.mark.parametrize("command", ["data", "run"])
def test_force_on_the_current_folder_refused_and_kept(home_and_cwd, finished, command, capsys):
    _, cwd = home_and_cwd
    before = _snapshot(cwd.parent.parent)
    code, text = _run([command, str(finished[0]), "--out", ".", "--force"], capsys)
    assert code == 2 and "--out .: --force will not delete it: it is the current folder" in text
    assert _snapshot(cwd.parent.parent) == before


@pytest.mark.parametrize("command", ["data", "run", "sweep"])
def test_force_on_a_folder_bidirect_did_not_write_refused(tmp_path, finished, command, capsys):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "config.yaml").write_text("mine: true\n")  # some config.yaml is no proof
    (folder / "thesis.tex").write_text("years of work")
    config = finished[0]
    if command == "sweep":
        config = tmp_path / "sweep.yaml"
        config.write_text(finished[0].read_text() + "sweep: {seed: [0, 1]}\n")
    before = _snapshot(folder)
    code, text = _run([command, str(config), "--out", str(folder), "--force"], capsys)
    assert code == 2 and "--force will not delete it" in text and f"no {MARKER} marker" in text
    assert _snapshot(folder) == before


def test_force_on_a_sweep_folder_as_a_run_refused(tmp_path, finished, capsys):
    folder = tmp_path / "a_sweep"
    folder.mkdir()
    rundir.write_marker(folder, "sweep")
    code, text = _run(["run", str(finished[0]), "--out", str(folder), "--force"], capsys)
    assert code == 2 and "a bidirect sweep folder, not a run folder" in text and (folder / MARKER).is_file()


def test_old_run_folder_proved_by_content_not_names(tmp_path, run_copy):
    """Issue 22: two file names prove nothing; a run of a version before the marker is proved by its
    results.json recording the config in its config.yaml, and even then --force does not replace it
    unmarked (tests/test_user_files.py: a resume marks it, deleting nothing)."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("name: x\n")
    with pytest.raises(RunDirError, match="no .bidirect marker"):
        ownership.check_replaceable(legacy, "run")
    (legacy / "results.json").write_text("{}")  # what issue 10 took for proof
    with pytest.raises(RunDirError, match="results.json is not a bidirect results file"):
        ownership.check_replaceable(legacy, "run")
    _, run = run_copy
    (run / MARKER).unlink()  # what runs/ of the repository hold, written before the marker
    assert rundir.folder_kind(run) == "run"
    with pytest.raises(RunDirError, match="before the .bidirect marker, and --force replaces only marked folders"):
        ownership.check_replaceable(run, "run")


def test_force_replaces_a_bidirect_folder(run_copy, capsys):
    config, run = run_copy
    code, _ = _run(["data", str(config), "--out", str(run), "--force"], capsys)
    assert code == 0
    assert not (run / "models").exists() and not (run / "results.json").exists()  # replaced: data only
    assert (run / MARKER).is_file() and _unlocked(run)
    assert not ownership.aside_path(run).exists()


def test_interrupted_force_leaves_the_old_folder_aside_and_refuses_to_guess(run_copy, capsys):
    config, run = run_copy
    aside = ownership.aside_path(run)
    shutil.copytree(run, aside)  # what a SIGKILL between the move and the delete leaves
    code, text = _run(["run", str(config), "--out", str(run), "--force"], capsys)
    assert code == 2 and f"{aside} holds the folder an interrupted --force replaced" in text
    assert aside.is_dir() and (run / "results.json").is_file()


# --------------------------------------------------------------------------- checks before anything is deleted


@pytest.mark.parametrize("changes,message", [
    (dict(model__context=32), "model.context: 32 tokens is too short for the longest biography"),
    (dict(pretrain={"steps": 2, "batch_size": 4096}), "pretrain.batch_size: 4096 is more than the"),
    (dict(finetune={"steps": 2, "batch_size": 4096}), "finetune.batch_size: 4096 is more than the"),
    (dict(backbones=[{"name": "gpt2-rope", "finetune": {"batch_size": 4096}}]),
     "backbones.gpt2-rope.finetune.batch_size: 4096 is more than the"),
])
def test_force_with_a_config_failing_late_keeps_the_finished_run(run_copy, tmp_path, changes, message, capsys):
    _, run = run_copy
    before = _snapshot(run)
    bad = write_config(tmp_path / "bad.yaml", **{**ONE_CELL, **changes})
    code, text = _run(["run", str(bad), "--out", str(run), "--force"], capsys)
    assert code == 2 and message in text
    assert _snapshot(run) == before and not ownership.aside_path(run).exists()


def test_sweep_force_with_a_config_failing_late_keeps_the_old_sweep(tmp_path, finished, capsys):
    old = tmp_path / "old_sweep"
    old.mkdir()
    rundir.write_marker(old, "sweep")
    (old / "sweep.json").write_text('{"axes": {"seed": [0]}, "cells": [{"name": "seed=0", "values": {"seed": 0}}]}')
    (old / "summary.json").write_text('{"axes": {}, "group_by": [], "pooled": "seed", "rows": []}')
    (old / "seed=0").mkdir()
    (old / "seed=0" / "results.json").write_text("{}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(write_config(tmp_path / "study.yaml", **ONE_CELL, model__context=32).read_text()
                   + "sweep: {seed: [0, 1]}\n")
    before = _snapshot(old)
    code, text = _run(["sweep", str(bad), "--out", str(old), "--force"], capsys)
    assert code == 2 and "model.context: 32 tokens is too short" in text
    assert _snapshot(old) == before and not ownership.aside_path(old).exists()


def test_finetune_batch_checked_before_pretraining(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the fine-tuning batch cannot be filled")

    monkeypatch.setattr(study, "train_phase", refuse)
    bad = write_config(tmp_path / "bad.yaml", **ONE_CELL, finetune={"steps": 2, "batch_size": 4096})
    code, text = _run(["run", str(bad), "--out", str(tmp_path / "new")], capsys)
    assert code == 2 and "finetune.batch_size: 4096 is more than the" in text and "lower it to at most" in text
    assert not (tmp_path / "new" / "models").exists()


# --------------------------------------------------------------------------- the lock


def _hold(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock, as a second `bidirect run` would."""
    # It holds the lock until it is killed (it waits on a pipe nobody writes), not for a time a busy machine
    # could outlast.
    code = (f"from pathlib import Path; from bidirect.ownership import Lock; import sys; "
            f"Lock(Path({str(run)!r})).acquire(); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_refused_naming_the_holder_until_it_dies(run_copy, capsys):
    config, run = run_copy
    holder = _hold(run)
    try:
        before = _snapshot(run)
        for argv in (["run", str(config), "--out", str(run), "--resume"],
                     ["run", str(config), "--out", str(run), "--force"],
                     ["data", str(config), "--out", str(run), "--force"]):
            code, text = _run(argv, capsys)
            assert code == 2 and f"{run}: in use by process {holder.pid} on {socket.gethostname()}" in text, argv
            assert _snapshot(run) == before
    finally:
        holder.kill()  # SIGKILL: no chance to clean up, and yet no stale lock
        holder.wait()
    code, _ = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 0 and _unlocked(run)


def test_lock_is_held_while_training(tmp_path, monkeypatch):
    seen = []
    real = study.train_phase

    def spy(*args, **kwargs):
        seen.append(_unlocked(tmp_path / "run"))
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "train_phase", spy)
    config = write_config(tmp_path / "tiny.yaml", **ONE_CELL)
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    assert seen == [False, False]  # held in both phases
    assert _unlocked(tmp_path / "run")


# --------------------------------------------------------------------------- a finished run is not rewritten


def test_resume_of_a_finished_run_leaves_results_json_as_it_was(run_copy, capsys):
    config, run = run_copy
    path = run / "results.json"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    code, text = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 0 and "QA P_test" in text
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# --------------------------------------------------------------------------- config: finite, in range, bounded


NON_FINITE = [
    ("pretrain", "lr", ".nan"), ("pretrain", "lr", ".inf"), ("pretrain", "min_lr", ".nan"),
    ("pretrain", "weight_decay", ".nan"), ("finetune", "adam_eps", ".inf"), ("pretrain", "clip_norm", "-.inf"),
    ("finetune", "min_lr", ".inf"), ("masking", "replace_mask", ".nan"), ("masking", "replace_random", ".nan"),
    ("masking", "probability", ".nan"), ("data", "p_train", ".nan"), ("model", "dropout", ".nan"),
    ("pretrain", "adam_betas", "[.nan, 0.98]"),
]


@pytest.mark.parametrize("section,key,value", NON_FINITE, ids=[f"{s}.{k}={v}" for s, k, v in NON_FINITE])
def test_non_finite_floats_refused(tmp_path, section, key, value, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"{section}:\n  {key}: {value}\n")
    code, text = _run(["run", str(config), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{section}.{key}" in text and "expected a finite number" in text
    assert not (tmp_path / "out").exists()


def test_non_finite_backbone_override_refused():
    with pytest.raises(ConfigError, match=r"backbones\.gbert\.finetune\.lr: expected a finite number"):
        from_dict({"backbones": [{"name": "gbert", "finetune": {"lr": float("nan")}}]})


TOO_LARGE = [
    ({"data": {"augmentations": ["multi1000"]}}, "at most multi100"),
    ({"data": {"augmentations": ["single+permute500"]}}, "at most multi100 and permute100"),
    ({"data": {"individuals": 1_000_000, "augmentations": ["multi100+permute100"]}}, f"{MAX_BIOS:,}"),
    ({"tokenizer": {"vocab_size": 10**12}}, "tokenizer.vocab_size: at most"),
    ({"model": {"context": 10**7}}, "model.context: at most"),
    ({"model": {"width": 2**20, "heads": 4}}, "model.width: at most"),
    ({"model": {"layers": 10**5}}, "model.layers: at most"),
    ({"model": {"heads": 1024, "width": 2048}}, "model.heads: at most"),
    ({"model": {"mlp_width": 10**8}}, "model.mlp_width: at most"),
    ({"eval": {"num_beams": 10**4}}, "eval.num_beams: at most"),
    ({"seed": -1}, "seed: must be in [0, 2**32), got -1"),
    ({"seed": 2**40}, "seed: must be in [0, 2**32)"),
]


@pytest.mark.parametrize("raw,message", TOO_LARGE, ids=[m for _, m in TOO_LARGE])
def test_sizes_bounded(raw, message):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert message in str(err.value)


SILENT = [
    ("data:\n  individuals: 30\n  individuals: 40\n", "found the key 'individuals' twice"),
    ("seed: 1\nseed: 2\n", "found the key 'seed' twice"),
    ("data: {augmentations: [fullname+fullname]}\n", "'fullname' and 'fullname' both set fullname"),
    ("data: {augmentations: [multi2+multi5]}\n", "'multi2' and 'multi5' both set multi"),
    ("data: {augmentations: [single+multi3]}\n", "'single' and 'multi3' both set multi"),
    ("data: {augmentations: [permute+permute2]}\n", "'permute' and 'permute2' both set permute"),
    ("backbones:\n", "backbones: empty (null)"),
    ("backbones: [{pretrain: {lr: 0.001}}]\n", "backbones[0]: a backbone mapping needs name:"),
]


@pytest.mark.parametrize("text,message", SILENT, ids=[m for _, m in SILENT])
def test_silently_reinterpreted_inputs_refused(tmp_path, text, message, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, out = _run(["run", str(config), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and message in out and not (tmp_path / "out").exists()


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("pretrain: &p {steps: 10, lr: 0.001}\nfinetune:\n  <<: *p\n  steps: 5\n")
    cfg = load(config)
    assert (cfg.finetune.steps, cfg.finetune.lr) == (5, 0.001)


def test_error_named_where_the_user_wrote_it():
    with pytest.raises(ConfigError) as err:
        from_dict({"pretrain": {"batch_size": 10, "grad_accum": 3}, "backbones": ["gpt2-rope"]})
    assert str(err.value).startswith("pretrain.grad_accum: 3 does not divide pretrain.batch_size 10")


# --------------------------------------------------------------------------- damaged files and OS errors: one message


def test_config_not_utf8_a_folder_or_unreadable(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    code, text = _run(["run", str(latin), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"{latin}: not a UTF-8 text file (byte 9 is 0xe9)" in text
    code, text = _run(["run", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"config file {tmp_path} is a folder, not a YAML file" in text
    code, text = _run(["sweep", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"sweep file {tmp_path} is a folder" in text
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text("seed: 1\n")
        locked.chmod(0)
        code, text = _run(["run", str(locked), "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and f"{locked}: cannot read it (Permission denied)" in text
    assert not (tmp_path / "o").exists()


def test_impossible_or_unwritable_out(tmp_path, finished, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, text = _run(["run", str(finished[0]), "--out", str(a_file / "run")], capsys)
    assert code == 2 and f"--out {a_file / 'run'}: cannot create the folder (Not a directory" in text
    if os.geteuid() != 0:
        parent = tmp_path / "read_only"
        parent.mkdir()
        parent.chmod(0o500)
        try:
            code, text = _run(["data", str(finished[0]), "--out", str(parent / "run")], capsys)
            assert code == 2 and "cannot create the folder (Permission denied" in text
        finally:
            parent.chmod(0o700)


@pytest.mark.parametrize("damage", ["model", "tokenizer"])
def test_truncated_model_or_tokenizer(run_copy, damage, capsys):
    _, run = run_copy
    path = run / (f"{FINETUNE}/model/model.safetensors" if damage == "model" else "tokenizer/tokenizer.json")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(run)
    code, text = _run(["eval", str(run)], capsys)
    assert code == 2 and _snapshot(run) == before
    if damage == "model":
        # the hash recorded at save (issue 22) names the file before the loader fails on it
        assert f"{path}: damaged: its sha256 is" in text and "--resume" in text
    else:
        assert f"{path}: cannot be read" in text and "damaged" in text


def test_corrupt_results_json_advice_works(run_copy, capsys):
    config, run = run_copy
    good = json.loads((run / "results.json").read_text())["results"]
    (run / "results.json").write_text('{"results": {')
    before = _snapshot(run)
    for argv in (["eval", str(run)], ["summary", str(run)], ["run", str(config), "--out", str(run), "--resume"]):
        code, text = _run(argv, capsys)
        assert code == 2 and "results.json: corrupt JSON" in text and "bidirect eval" not in text, argv
        assert _snapshot(run) == before
    advice = text[text.index("`") + 1:text.rindex("`")].split()
    assert advice[:2] == ["bidirect", "run"]
    (run / "results.json").rename(run.parent / "results.json.damaged")  # "move it away"
    assert main(advice[1:]) == 0  # the advised command rebuilds it from the saved models
    assert json.loads((run / "results.json").read_text())["results"] == good


@pytest.mark.parametrize("damage", ["trainer_state.json", "phase.json"])
def test_corrupt_checkpoint_state_or_phase_summary(run_copy, damage, capsys):
    config, run = run_copy
    (run / "results.json").unlink()
    phase = run / FINETUNE
    if damage == "trainer_state.json":  # an unfinished phase whose last checkpoint's state is damaged
        (phase / "phase.json").unlink()
        path = phase / "checkpoints" / "step_00000002" / damage
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x00\x00")
    else:
        path = phase / damage
        path.write_text("{")
    before = _snapshot(run)
    code, text = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 2 and f"{path}:" in text and "is damaged" in text
    assert _snapshot(run) == before


def test_corrupt_sweep_json(tmp_path, finished, capsys):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    rundir.write_marker(sweep_dir, "sweep")
    (sweep_dir / "sweep.yaml").write_text(finished[0].read_text() + "sweep: {seed: [0]}\n")
    (sweep_dir / "sweep.json").write_text('{"axes": ')
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(finished[0].read_text() + "sweep: {seed: [0]}\n")
    before = _snapshot(sweep_dir)
    for argv in (["summary", str(sweep_dir)], ["sweep", str(sweep_file), "--out", str(sweep_dir)]):
        code, text = _run(argv, capsys)
        assert code == 2 and f"{sweep_dir / 'sweep.json'}: the sweep's manifest is damaged" in text, argv
        assert _snapshot(sweep_dir) == before


def test_full_disk_exit_1_then_resume(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "tiny.yaml", **ONE_CELL)
    real = study.train_phase

    def full(model, collate, stream, cfg, out_dir, *args, **kwargs):
        if out_dir.name == "finetune":
            raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "model"))
        return real(model, collate, stream, cfg, out_dir, *args, **kwargs)

    monkeypatch.setattr(study, "train_phase", full)
    code, text = _run(["run", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "No space left on device" in text
    assert f"bidirect run {config} --out {tmp_path / 'run'} --resume" in text
    assert _unlocked(tmp_path / "run")
    monkeypatch.setattr(study, "train_phase", real)
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--resume"]) == 0


@pytest.mark.parametrize("when", ["training", "force"])
def test_ctrl_c_stops_cleanly(run_copy, tmp_path, monkeypatch, when, capsys):
    config, run = run_copy

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if when == "training":
        monkeypatch.setattr(study, "train_phase", interrupt)
        run = tmp_path / "new"
        argv = ["run", str(config), "--out", str(run)]
    else:  # during the data of a --force: the replaced run comes back
        monkeypatch.setattr(study, "prepare_data", interrupt)
        before = _snapshot(run)
        argv = ["run", str(config), "--out", str(run), "--force"]
    code, text = _run(argv, capsys)
    assert code == 130 and text.startswith("error: interrupted")
    assert f"bidirect run {config} --out {run} --resume" in text
    assert _unlocked(run)
    if when == "force":
        assert _snapshot(run) == before and not ownership.aside_path(run).exists()


# --------------------------------------------------------------------------- messages


def test_data_advises_only_what_data_can_do(run_copy, capsys):
    config, run = run_copy
    code, text = _run(["data", str(config), "--out", str(run)], capsys)
    assert code == 2 and "--resume" not in text and "--force to replace it" in text


def test_messages_not_wrapped_when_piped(tmp_path):
    missing = tmp_path / ("a_long_folder_name_" * 4) / "missing_config.yaml"
    proc = subprocess.run([sys.executable, "-m", "bidirect", "run", str(missing), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [f"error: config file {missing} does not exist"]
