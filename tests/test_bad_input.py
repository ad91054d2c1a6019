"""Bad input and faults of issue 22: each gets one message naming the field or file, exit code 2 (1 for a fault of
the machine, with the command that continues), and changes nothing on disk.

Every case runs the real command (`bidirect.cli.main`, or a subprocess) on real files under pytest's tmp_path, beside
a decoy file of a user's, and checks the exit code, the message and that the folder is byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_safety import _run, _snapshot
from tiny import ONE_CELL, TINY, write_config

from bidirect import rundir
from bidirect.cli import main
from bidirect.config import MAX_YAML_VALUES, apply_overrides, from_dict, load, shown


def _refused(tmp_path: Path, text: str, capsys, argv: list[str] | None = None, command: str = "run") -> str:
    """Write ``text`` as a config beside a user's file, run ``command`` on it and return the one error line, after
    checking exit code 2, that it is short, and that nothing was written."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, out = _run([command, str(config), "--out", str(tmp_path / "out"), *(argv or [])], capsys)
    assert code == 2 and out.startswith("error: "), out
    assert len(out) < 600, out  # one message, never the value echoed whole
    assert _snapshot(tmp_path) == before
    return out


# --------------------------------------------------------------------------- the YAML itself


def _bomb(levels: int) -> str:
    """`seed:` a list of nine aliases of a list of nine aliases ... (9**levels strings once expanded)."""
    lists = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lists += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return f"seed: [{', '.join(lists)}]\n"


def test_alias_bomb_refused_while_loading(tmp_path, capsys):
    out = _refused(tmp_path, _bomb(6), capsys)
    assert f"c.yaml: its aliases (*name) expand to more than {MAX_YAML_VALUES:,} values" in out


def test_a_bad_value_is_shown_cut_never_echoed(tmp_path, capsys):
    out = _refused(tmp_path, _bomb(4), capsys)  # 6,561 strings: loads, and the message echoed all (4.3 MB at 6)
    assert "c.yaml: seed: expected an integer, got [['lol', 'lol'," in out and out.endswith("...")
    out = _refused(tmp_path, "name: [" + ", ".join(["x" * 50] * 2000) + "]\n", capsys)
    assert "name: expected a string, got ['xxxx" in out and out.endswith("...")
    assert len(shown(list(range(10**6)))) <= 80


def test_alias_inside_its_own_value_refused(tmp_path, capsys):
    out = _refused(tmp_path, "seed: &a [*a]\n", capsys)
    assert "c.yaml: an alias (line 1) is inside the value it names" in out


def test_nested_10000_deep_refused(tmp_path, capsys):
    out = _refused(tmp_path, "seed: " + "[" * 10_000 + "]" * 10_000 + "\n", capsys)
    assert "c.yaml: nested more than 64 levels deep (line 1)" in out


@pytest.mark.parametrize("text,what", [("? [a, b]\n: 1\n", "list"), ("data:\n  ? {a: 1}\n  : 2\n", "mapping")])
def test_list_or_mapping_as_a_key_refused(tmp_path, text, what, capsys):
    out = _refused(tmp_path, text, capsys)
    assert "c.yaml: not valid YAML" in out and f"found a {what} as a key" in out


@pytest.mark.parametrize("text", ["", "# just a comment\n\n", "~\n", "---\n"])
def test_empty_config_refused_not_the_default_study(tmp_path, text, capsys):
    out = _refused(tmp_path, text, capsys)
    assert "c.yaml: the file is empty (no settings), which would run the whole default study" in out
    assert "`bidirect run --out DIR`" in out


@pytest.mark.parametrize("text,field,shown_as", [
    ("data: {individuals: 1:20}\n", "data.individuals", "'1:20'"),  # YAML 1.1 read 80
    ("data: {individuals: 010}\n", "data.individuals", "'010'"),  # YAML 1.1 read 8
    ("pretrain: {lr: 1:30.5}\n", "pretrain.lr", "'1:30.5'"),  # YAML 1.1 read 90.5
])
def test_base_60_and_octal_numbers_not_reinterpreted(tmp_path, text, field, shown_as, capsys):
    out = _refused(tmp_path, text, capsys)
    assert f"{field}: expected " in out and shown_as in out


def test_base_60_in_a_set_value_and_a_name_keeps_what_was_written(tmp_path, capsys):
    out = _refused(tmp_path, "name: x\n", capsys, ["--set", "data.individuals=1:20"])
    assert "data.individuals: expected an integer, got '1:20'" in out
    config = tmp_path / "n.yaml"
    config.write_text("name: 1:20\n")
    assert load(config).name == "1:20"


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("text,message", [
    ("finetune: {lora_rank: 1000000000, finetune_mode: lora}\n", "finetune.lora_rank: at most model.width (128), "
                                                                  "got 1,000,000,000"),
    ("finetune: {lora_rank: 1000000000}\n", "finetune.lora_rank: at most model.width"),
    ("pretrain: {lr: 1.0e+300}\n", "pretrain.lr: at most 10, got 1e+300"),
    ("backbones: [{name: gbert, pretrain: {lr: 1.0e+300}}]\n", "backbones.gbert.pretrain.lr: at most 10"),
    (f"pretrain: {{batch_size: {2**62}, grad_accum: {2**62}}}\n", "pretrain.batch_size: at most 1,048,576"),
    (f"finetune: {{batch_size: {2**62}}}\n", "finetune.batch_size: at most 1,048,576"),
    ("pretrain: {batch_size: 65536, grad_accum: 65536}\n", "pretrain.grad_accum: at most 4,096 micro-batches"),
])
def test_sizes_that_ran_out_of_memory_or_hung_are_bounded(tmp_path, text, message, capsys):
    assert message in _refused(tmp_path, text, capsys)


# --------------------------------------------------------------------------- --set: what was asked, once


def test_set_the_same_key_twice_refused(tmp_path, capsys):
    out = _refused(tmp_path, "name: x\n", capsys, ["--set", "seed=3", "seed=4"])
    assert "--set seed: given twice ('seed=3' and 'seed=4'); give each field once" in out
    out = _refused(tmp_path, "name: x\n", capsys, ["--set", "model={layers: 1}", "model.layers=2"])
    assert "--set model.layers: overlaps --set model" in out


def test_set_a_section_keeps_its_other_fields_like_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {width: 64, heads: 2}\n")
    cfg = load(config, ["model={layers: 1}"])
    assert (cfg.model.layers, cfg.model.width, cfg.model.heads) == (1, 64, 2)  # was width 128, heads 4
    from_file = tmp_path / "f.yaml"
    from_file.write_text("model: {width: 64, heads: 2, layers: 1}\n")
    assert load(from_file) == cfg


def test_sweep_over_a_whole_section_keeps_its_other_fields(tmp_path):
    from bidirect.sweep import load as load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text("model: {width: 64, heads: 2}\nsweep:\n  model: [{layers: 1}, {layers: 3}]\n")
    cells = load_sweep(sweep).cells
    assert [(c.config.model.layers, c.config.model.width, c.config.model.heads) for c in cells] == [(1, 64, 2),
                                                                                                   (3, 64, 2)]


def _pretrain_steps(folder: Path) -> list[int]:
    from bidirect.config import load as load_config

    cfg = load_config(folder / "config.yaml", saved=True)
    return [cfg.train_config(b, "pretrain").steps for b in cfg.backbones]


def test_readme_set_pretrain_steps_does_what_it_says(tmp_path, capsys):
    """`bidirect run --set pretrain.steps=400` (the README's example) trained 1,500 and 3,000 steps: the default
    backbones' own pretrain.steps won. It applies to every backbone now, and a note says what it replaced."""
    out = tmp_path / "q"
    code, text = _run(["data", "--out", str(out), "--set", "pretrain.steps=400"], capsys)
    assert code == 0 and _pretrain_steps(out) == [400, 400]
    assert "note: --set pretrain.steps=400 applies to gpt2-rope too, in place of its own pretrain.steps 1500" in text
    assert "applies to gbert too, in place of its own pretrain.steps 3000" in text
    quick = Path(__file__).parents[1] / "configs" / "quick.yaml"
    code, text = _run(["data", str(quick), "--out", str(tmp_path / "q2"), "--set", "pretrain.steps=400"], capsys)
    assert code == 0 and _pretrain_steps(tmp_path / "q2") == [400, 400]


def test_a_file_setting_a_phase_field_applies_to_the_default_backbones(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("pretrain: {steps: 400}\n")
    notes: list[str] = []
    cfg = load(config, notes=notes)
    assert [cfg.train_config(b, "pretrain").steps for b in cfg.backbones] == [400, 400]
    assert notes == ["pretrain.steps = 400 applies to every backbone, in place of the default backbones' own "
                     "(gpt2-rope 1500, gbert 3000)"]
    # a backbone's own value written in the same file is more specific, and wins as documented
    config.write_text("pretrain: {steps: 400}\nbackbones: [{name: gbert, pretrain: {steps: 50}}, gpt2-rope]\n")
    cfg = load(config)
    assert [cfg.train_config(b, "pretrain").steps for b in cfg.backbones] == [50, 400]


def test_set_lr_replaces_a_backbones_own_lr_and_min_lr_together():
    notes: list[str] = []
    raw = {"backbones": [{"name": "gpt2-rope", "pretrain": {"lr": 3e-3, "min_lr": 3e-4, "steps": 7}}]}
    cfg = from_dict(apply_overrides(raw, ["pretrain.lr=1e-4", "pretrain.min_lr=1e-5"], notes))
    train = cfg.train_config(cfg.backbones[0], "pretrain")
    assert (train.lr, train.min_lr, train.steps) == (1e-4, 1e-5, 7)
    assert notes[0] == "--set pretrain.lr=1e-4 applies to gpt2-rope too, in place of its own pretrain.lr 0.003, " \
                       "pretrain.min_lr 0.0003"


def test_sweep_over_pretrain_steps_varies_every_backbone(tmp_path):
    from bidirect.sweep import load as load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text((Path(__file__).parents[1] / "configs" / "quick.yaml").read_text()
                     + "sweep: {pretrain.steps: [100, 200]}\n")
    cells = load_sweep(sweep).cells
    assert [[c.config.train_config(b, "pretrain").steps for b in c.config.backbones] for c in cells] == \
        [[100, 100], [200, 200]]  # each cell trained 1,500 and 3,000 steps


# --------------------------------------------------------------------------- what runs is what is recorded


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 is refused only without a GPU")
def test_fp16_on_a_cpu_refused_not_recorded(tmp_path, capsys):
    write_config(tmp_path / "base.yaml", **ONE_CELL)
    out = _refused(tmp_path, (tmp_path / "base.yaml").read_text() + "mixed_precision: fp16\n", capsys)
    assert "mixed_precision: 'fp16' needs a CUDA GPU, and there is none here" in out and "use auto, no or bf16" in out


def test_accelerate_launch_num_processes_without_multi_gpu_refused(tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs one process without --multi_gpu; it trained as one."""
    config = write_config(tmp_path / "tiny.yaml", **ONE_CELL)
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           "-m", "bidirect", "run", str(config), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines == ["error: accelerate launch --num_processes 2 started 1 process: without --multi_gpu accelerate "
                     "runs one. Use `accelerate launch --multi_gpu --num_processes 2 ...` (with --cpu on a CPU), or "
                     "leave --num_processes out"], proc.stdout + proc.stderr
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- damaged files of a run: one message


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the session's finished run (conftest), with a user's files inside and beside it."""
    config, run = finished
    copy = Path(shutil.copytree(run, tmp_path / "run", symlinks=True))
    (copy / "notes.txt").write_text("a user's file inside the run folder")
    (tmp_path / "thesis.tex").write_text("a user's file beside it")
    return config, copy


def _edit_results(run: Path, change) -> None:
    path = run / "results.json"
    results = json.loads(path.read_text())
    change(results)
    path.write_text(json.dumps(results))


@pytest.mark.parametrize("damage,message", [
    (lambda r: r.update(results=[]), "results: expected a mapping of augmentation -> backbone -> level -> scores, "
                                     "got list"),
    (lambda r: r.update(wall_seconds="ten"), "wall_seconds: expected a number, got str"),
    (lambda r: r["results"]["single"].update({"gpt2-rope": [1]}), "results.single.gpt2-rope: expected a mapping"),
])
def test_results_json_of_another_shape(run_copy, damage, message, capsys):
    config, run = run_copy
    _edit_results(run, damage)
    before = _snapshot(run.parent)
    for argv in (["summary", str(run)], ["eval", str(run)], ["run", str(config), "--out", str(run), "--resume"]):
        code, text = _run(argv, capsys)
        assert code == 2 and f"{run / 'results.json'}: not a bidirect results file ({message}" in text, argv
        assert f"`bidirect run {run / 'config.yaml'} --out {run} --resume`" in text
        assert _snapshot(run.parent) == before


def test_summary_of_a_backbone_not_in_the_run(run_copy, capsys):
    _, run = run_copy
    before = _snapshot(run.parent)
    code, text = _run(["summary", str(run), "--backbone", "nope"], capsys)
    assert code == 2 and text == "error: --backbone nope: not in this run (it has gpt2-rope)"
    assert _snapshot(run.parent) == before


@pytest.mark.parametrize("option,value,message", [
    ("--eval-items", "1000000000000", "--eval-items: at most 10,000,000, got 1,000,000,000,000"),
    ("--batch", str(2**62), "--batch: at most 1,048,576, got 4,611,686,018,427,387,904"),
    ("--peak-tflops", "nan", "--peak-tflops: must be a finite number > 0, got nan"),
])
def test_bench_options_bounded(tmp_path, option, value, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, text = _run(["bench", "--size", "tiny", "--steps", "1", option, value], capsys)
    assert code == 2 and text == f"error: {message}"
    assert _snapshot(tmp_path) == before


def test_log_jsonl_with_bytes_that_are_no_text(run_copy, capsys):
    config, run = run_copy
    log = run / "models/single/gpt2-rope/pretrain/log.jsonl"
    log.write_bytes(log.read_bytes() + b"\xff\xfe{garbage\n")
    code, text = _run(["report", str(run)], capsys)  # the damaged line is left out of the loss curve
    assert code == 0 and "report:" in text
    from bidirect.trainer import _truncate_log

    _truncate_log(log, 10**9)  # what a resume does first: the damaged line goes like a line a kill cut
    assert b"garbage" not in log.read_bytes() and json.loads(log.read_text().splitlines()[-1])["step"] == 6


def test_corrupt_capacity_json_in_a_sweep_report(tmp_path, finished, capsys):
    config, run = finished
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(config.read_text() + "sweep: {seed: [0]}\n")
    sweep = tmp_path / "sweep"
    from bidirect import rundir

    sweep.mkdir()
    rundir.write_marker(sweep, "sweep")
    shutil.copytree(run, sweep / "seed=0")
    (sweep / "sweep.yaml").write_text(sweep_file.read_text())
    (sweep / "sweep.json").write_text(json.dumps({"axes": {"seed": [0]}, "cells": [{"name": "seed=0",
                                                                                   "values": {"seed": 0}}]}))
    (sweep / "seed=0" / "capacity.json").write_text('{"results": {"gpt2-rope": {"single": {"bits": 1}}}}')
    before = _snapshot(sweep)
    code, text = _run(["report", str(sweep), "--out", str(tmp_path / "r.md")], capsys)
    assert code == 2 and f"{sweep / 'seed=0' / 'capacity.json'}: not a capacity file bidirect wrote (KeyError" in text
    assert f"`bidirect capacity {sweep / 'seed=0'}`" in text and _snapshot(sweep) == before


def test_capacity_replaces_its_own_damaged_file(run_copy, capsys):
    _, run = run_copy
    (run / "capacity.json").write_text('{"phase": "pretrain", "results": [3]}')  # a list: AttributeError before
    code, _ = _run(["capacity", str(run)], capsys)
    assert code == 0 and "gpt2-rope" in json.loads((run / "capacity.json").read_text())["results"]


# --------------------------------------------------------------------------- what a run uses is what it made


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[offset:offset + len(data)] = data
    path.write_bytes(bytes(content))


ARROW = "data/individuals/data-00000-of-00001.arrow"
MODEL = "models/single/gpt2-rope/finetune/model/model.safetensors"


@pytest.mark.parametrize("command", ["eval", "capacity", "probe"])
def test_overwritten_arrow_bytes_refused_not_a_segfault(run_copy, command, capsys):
    """64 overwritten bytes of an arrow file segfaulted eval (exit -11); capacity ran on them without a word."""
    _, run = run_copy
    _overwrite(run / ARROW, 100, bytes(64))
    before = _snapshot(run.parent)
    code, text = _run([command, str(run), *(["--steps", "1"] if command == "probe" else [])], capsys)
    assert code == 2 and text.startswith(f"error: {run / ARROW}: damaged: its sha256 is "), text
    assert f"`bidirect data {run / 'config.yaml'} --out NEW` writes the same files" in text
    assert _snapshot(run.parent) == before


def test_the_advice_for_damaged_data_works(run_copy, tmp_path, capsys):
    _, run = run_copy
    _overwrite(run / ARROW, 100, bytes(64))
    assert main(["data", str(run / "config.yaml"), "--out", str(tmp_path / "new")]) == 0
    shutil.rmtree(run / "data")
    shutil.copytree(tmp_path / "new" / "data", run / "data")  # "put NEW/data in place of it"
    assert main(["eval", str(run)]) == 0


def test_random_bytes_in_model_tensors_refused(run_copy, capsys):
    config, run = run_copy
    _overwrite(run / MODEL, (run / MODEL).stat().st_size - 200, os.urandom(100))
    before = _snapshot(run.parent)
    for argv in (["eval", str(run)], ["capacity", str(run), "--phase", "finetune"]):
        code, text = _run(argv, capsys)
        assert code == 2 and text.startswith(f"error: {run / MODEL}: damaged: its sha256 is "), text
        assert "eval bio_recall" not in text  # every model checked before any is evaluated
        assert _snapshot(run.parent) == before
    # the advice: delete the phase, move results.json away, resume: the same model again
    advice = text[text.index("`") + 1:text.rindex("`")].split()
    shutil.rmtree(run / MODEL.rsplit("/", 2)[0])
    (run / "results.json").rename(run.parent / "results.json.old")
    assert main(advice[1:]) == 0
    assert main(["eval", str(run)]) == 0


def test_zeroed_data_sha256_refused(run_copy, capsys):
    _, run = run_copy
    (run / "data" / "sha256").write_text("0" * 64 + "\n")
    for older in (False, True):  # older: a data folder without a manifest; results.json's hash catches it still
        if older:
            (run / "data" / "files.sha256").unlink()
        before = _snapshot(run.parent)
        code, text = _run(["eval", str(run)], capsys)
        assert code == 2 and f"{run / 'data' / 'sha256'}: '0000000000" in text and "is not the data hash" in text
        assert _snapshot(run.parent) == before


def test_edited_config_yaml_refused(run_copy, capsys):
    config, run = run_copy
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("  steps: 3\n", "  steps: 4\n"))
    before = _snapshot(run.parent)
    for argv in (["eval", str(run)], ["capacity", str(run)], ["probe", str(run), "--steps", "1"],
                 ["run", str(saved), "--out", str(run), "--resume"]):
        code, text = _run(argv, capsys)
        assert code == 2 and f"{saved}: not the config {run / 'results.json'} was made with (finetune.steps: 4 in " \
                              "config.yaml, 3 in results.json)" in text, argv
        assert _snapshot(run.parent) == before


def test_corrupt_dataset_dict_json_of_an_older_data_folder(run_copy, capsys):
    _, run = run_copy
    (run / "data" / "files.sha256").unlink()  # no manifest (an older version): the reader's error, in one line
    (run / "data" / "bios" / "dataset_dict.json").write_text("{")
    before = _snapshot(run.parent)
    code, text = _run(["eval", str(run)], capsys)
    assert code == 2 and text.startswith(f"error: {run / 'data'}: cannot be read (JSONDecodeError")
    assert _snapshot(run.parent) == before


def test_committed_runs_still_read():
    """The runs in runs/ have no models, no data manifest and some a results.json older than fields of the config:
    summary and report read them, and their config.yaml matches what their results.json recorded."""
    from bidirect.integrity import check_results
    from bidirect.rundir import read_results, require_run_dir

    runs = [p.parent for p in sorted((Path(__file__).parents[1] / "runs").rglob("config.yaml"))
            if (p.parent / "results.json").is_file()]
    assert len(runs) > 10
    for run in runs:
        check_results(run, require_run_dir(run), read_results(run))


# --------------------------------------------------------------------------- a full disk while saving


BIG = dict(ONE_CELL, model={"layers": 2, "heads": 2, "width": 256, "mlp_width": 1024, "context": 256},
           pretrain={"steps": 1, "batch_size": 4}, finetune={"steps": 1, "batch_size": 4})


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system (tmpfs): room for the tiny study's data and tokenizer, not for a 256-wide model."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("needs root and mount (a real full disk)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a file still open cannot stop it


def test_full_disk_while_saving_a_model_is_one_line_then_resumes(small_disk, tmp_path, capsys):
    config = write_config(tmp_path / "big.yaml", **BIG)
    out = small_disk / "run"
    code, text = _run(["run", str(config), "--out", str(out)], capsys)
    assert code == 1, text
    error = text[text.index("error: "):]
    assert error == (f"error: {out}/models/single/gpt2-rope/pretrain/.model.tmp: No space left on device; free space "
                     f"(or fix the disk), then continue with `bidirect run {config} --out {out} --resume`")
    assert not (out / "models/single/gpt2-rope/pretrain/.model.tmp").exists()  # the half model gave its space back
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # "free space"
    advice = error[error.index("`") + 1:error.rindex("`")].split()
    assert main(advice[1:]) == 0 and (out / "results.json").is_file()


def test_full_disk_reported_by_safetensors_is_an_oserror(run_copy, monkeypatch, capsys):
    """Where no file system can be filled: the error safetensors raises on a full disk, raised by its own writer."""
    import safetensors.torch
    from safetensors import SafetensorError

    config, run = run_copy
    shutil.rmtree(run / "models/single/gpt2-rope/finetune")
    (run / "results.json").unlink()

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", full)
    code, text = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 1 and text.endswith(f"finetune/.model.tmp: No space left on device; free space (or fix the disk), "
                                       f"then continue with `bidirect run {config} --out {run} --resume`")


# --------------------------------------------------------------------------- probe 22: cases not yet covered


@pytest.mark.parametrize("out", [".", "/", ""])
def test_report_out_a_folder_with_no_name_is_refused(run_copy, tmp_path, out, monkeypatch, capsys):
    """`report RUN --out .` (or `/`) was a ValueError traceback from pathlib ('has an empty name')."""
    _, run = run_copy
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code, text = _run(["report", str(run), "--out", out or "./"], capsys)
    assert code == 2 and f"--out {out or '.'}: expected a .md file, e.g. {Path(out or '.') / 'report.md'}" in text
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("args,message", [
    (["What is the birth city of " + "x " * 3000 + "?"], "question: 6,0"),
    (["What is the birth city of A B C?", "--length", str(10**9)], "--length: 1000000000; the models read at most "
                                                                   "model.context = 256 tokens"),
    (["What is the birth city of A B C?", "--length", "250"], "(--length 250 and end-of-text), the models read at "
                                                              "most model.context = 256 tokens; give a shorter"),
])
def test_ask_past_the_context_is_refused(run_copy, args, message, capsys):
    """A question longer than the context was an IndexError traceback (learned positions) or answered from a question
    read cut short (rotary); --length 10**9 allocated a billion masks (a hang, then out of memory)."""
    _, run = run_copy
    (run.parent / "notes.txt").write_text("mine")
    before = _snapshot(run.parent)
    code, text = _run(["ask", str(run), *args], capsys)
    assert code == 2 and message in text and len(text) < 300, text
    assert _snapshot(run.parent) == before


def test_a_sweep_of_too_many_cells_is_refused_before_building_them(tmp_path, capsys):
    """300 x 300 values: minutes of silence building 90,000 configs before anything was said."""
    values = ", ".join(map(str, range(300)))
    text = write_config(tmp_path / "t.yaml", **ONE_CELL).read_text()
    out = _refused(tmp_path, text + f"sweep:\n  seed: [{values}]\n  finetune.lr: [{values}]\n", capsys,
                   command="sweep")
    assert "sweep: 300 x 300 values make 90,000 cells, each a whole study; at most 10,000" in out


@pytest.mark.parametrize("name", ["a\n# b", "\x1b[31mred", "tab\there"])
def test_a_name_that_is_not_one_printable_line_is_refused(tmp_path, name, capsys):
    """A newline in `name:` split the report's heading in two (the second line a heading of its own)."""
    out = _refused(tmp_path, json.dumps({"name": name}), capsys)
    assert "name: one line of printable text, got " in out


@pytest.mark.parametrize("command", ["eval", "summary", "capacity", "ask"])
@pytest.mark.parametrize("what", ["file", "sweep", "folder"])
def test_a_run_folder_command_names_what_it_was_given(tmp_path, command, what, capsys):
    """A file was "no such run folder", a user's folder "no results.json (the run has not evaluated anything yet)"
    for summary, a sweep "not a bidirect run folder (no config.yaml)"."""
    given = tmp_path / ("notes.txt" if what == "file" else what)
    if what == "file":
        given.write_text("mine")
    else:
        given.mkdir()
        (given / "notes.txt").write_text("mine")
    if what == "sweep":
        (given / rundir.MARKER).write_text('{"kind": "sweep"}\n')
        (given / "sweep.json").write_text(json.dumps({"axes": {"seed": [0]},
                                                      "cells": [{"name": "seed=0", "values": {"seed": 0}}]}))
    before = _snapshot(tmp_path)
    code, text = _run([command, str(given), *(["a question"] if command == "ask" else [])], capsys)
    expected = {"file": f"{given}: a file, not a run folder",
                "sweep": f"{given}: a sweep folder, not a run folder; give one of its cells (e.g. {given / 'seed=0'})",
                "folder": f"{given}: not a bidirect run folder (no "}[what]
    if what == "sweep" and command == "summary":  # a sweep is summary's to pool: its cells are missing
        expected = f"{given}: no finished cell yet"
    assert code == 2 and expected in text, text
    assert _snapshot(tmp_path) == before


def test_resume_with_pretrained_from_of_a_folder_without_data_reuses_it(run_copy, tmp_path, capsys):
    """`run --out NEW --resume --pretrained-from RUN` trained the pretraining again, the option unread."""
    config, run = run_copy
    other = write_config(tmp_path / "ft.yaml", **ONE_CELL, finetune__steps=2)
    code, _ = _run(["run", str(other), "--out", str(tmp_path / "new"), "--resume", "--pretrained-from", str(run)],
                   capsys)
    phase = "models/single/gpt2-rope/pretrain/log.jsonl"
    assert code == 0 and (tmp_path / "new" / phase).stat().st_mtime_ns == (run / phase).stat().st_mtime_ns  # copied


# --------------------------------------------------------------------------- issue 30: what was asked is what runs


def test_set_options_add_up_and_a_plain_option_twice_is_refused(tmp_path, capsys):
    """`run --set tokenizer.kind=bpe --set name=x` ran with kind: word (the second --set replaced the first); `ask
    --backbone gbert --backbone gpt2-rope` answered with gpt2-rope only."""
    config = write_config(tmp_path / "c.yaml", **ONE_CELL, tokenizer={"kind": "word"})
    code, _ = _run(["data", str(config), "--out", str(tmp_path / "d"), "--set", "tokenizer.kind=bpe",
                    "tokenizer.vocab_size=400", "--set", "name=x"], capsys)
    saved = load(tmp_path / "d" / "config.yaml", saved=True)
    assert code == 0 and (saved.tokenizer.kind, saved.name) == ("bpe", "x")
    out = _refused(tmp_path, "name: x\n", capsys, ["--set", "seed=3", "--set", "seed=4"])
    assert "--set seed: given twice ('seed=3' and 'seed=4')" in out
    before = _snapshot(tmp_path)
    for argv in (["ask", str(tmp_path / "d"), "q", "--backbone", "gbert", "--backbone", "gpt2-rope"],
                 ["run", str(config), "--out", str(tmp_path / "a"), "--out", str(tmp_path / "b")]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err.splitlines()[-1]
        assert exited.value.code == 2 and "given twice" in err, err
    assert err.endswith(f"error: argument --out: given twice ({str(tmp_path / 'a')!r} and {str(tmp_path / 'b')!r}); "
                        "give it once, or run the command once for each")
    assert _snapshot(tmp_path) == before


def test_ask_length_of_causal_models_only_is_refused(run_copy, capsys):
    """`ask ... --length 2` with only causal models asked answered as if it had not been given."""
    _, run = run_copy
    before = _snapshot(run.parent)
    code, text = _run(["ask", str(run), "What is the birth city of A B C?", "--length", "2"], capsys)
    assert code == 2 and text == ("error: --length 2: tells masked models the answer's length, and the models asked "
                                  "(gpt2-rope) are causal: each writes its answer until end-of-text. Leave --length "
                                  "out, or ask a masked backbone")
    assert _snapshot(run.parent) == before


def test_edited_config_yaml_of_an_unfinished_run_refused(run_copy, capsys):
    """An edited config.yaml of an unfinished run (pretrain.steps 3000 -> 60) resumed at step 46/60 from a checkpoint
    made under 3,000 steps; the marker now records the study as the run starts, as results.json does at its end."""
    config, run = run_copy
    shutil.rmtree(run / "models/single/gpt2-rope/finetune")
    (run / "results.json").unlink()  # unfinished: pretrained, not fine-tuned
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("  steps: 6\n", "  steps: 60\n"))
    before = _snapshot(run.parent)
    for argv in (["run", str(saved), "--out", str(run), "--resume"], ["eval", str(run)],
                 ["capacity", str(run)]):
        code, text = _run(argv, capsys)
        assert code == 2 and text == (f"error: {saved}: not the config this run started with (pretrain.steps: 60 in "
                                      f"config.yaml, 6 when it started, recorded in {run / '.bidirect'}); put back "
                                      "the config.yaml this run started with, or start a new run folder with the new "
                                      "config"), argv
        assert _snapshot(run.parent) == before
    saved.write_text(saved.read_text().replace("  steps: 60\n", "  steps: 6\n"))  # the advice: put it back
    code, text = _run(["run", str(config), "--out", str(run), "--resume", "--set", "pretrain.steps=60"], capsys)
    assert code == 2 and "the config differs from the one this run started with" in text  # as before
    assert main(["run", str(saved), "--out", str(run), "--resume"]) == 0


@pytest.mark.parametrize("config,sets,message", [
    ("masking: {span: word}\n", ["masking.window_pad=-1"], "error: --set masking.window_pad: got -1; allowed: "),
    ("name: x\n", ["data.individuals=5"], "error: --set data.individuals=5: data.p_val: 0.1 of 5 individuals is no "
                                          "one; raise it or set 0 (data.p_val is the default, not set in "),
    (None, ["data.individuals=5"], "error: --set data.individuals=5: data.p_val: 0.1 of 5 individuals is no one; "
                                   "raise it or set 0 (data.p_val is the default)"),
    ("model: {heads: 2}\n", ["name=y", "model.width=7"], "error: --set model.width=7: model.heads: 2 does not divide "
                                                         "model.width 7 (model.heads is from "),
])
def test_a_set_error_is_said_of_the_set_not_of_the_file_or_a_default(tmp_path, config, sets, message, capsys):
    """`--set` errors were blamed on the config file (`base.yaml: masking.window_pad ...`) and on defaults the user
    never set (`--set data.individuals=5` -> `data.p_val: 0.1 of 5 individuals is no one`)."""
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["data", "--out", str(tmp_path / "out"), *[a for s in sets for a in ("--set", s)]]
    if config is not None:
        (tmp_path / "base.yaml").write_text(config)
        argv.insert(1, str(tmp_path / "base.yaml"))
    before = _snapshot(tmp_path)
    code, text = _run(argv, capsys)
    assert code == 2 and text.startswith(message) and "base.yaml: " not in text, text
    assert _snapshot(tmp_path) == before


ONE_CELL_PRETRAIN = TINY["pretrain"]


def test_pretrained_from_of_other_pretraining_names_the_field_and_both_values(run_copy, tmp_path, capsys):
    """The mismatch named a section (backbones.gpt2-rope.pretrain), not the field and its two values."""
    _, run = run_copy
    other = write_config(tmp_path / "ft.yaml", **ONE_CELL, pretrain={**ONE_CELL_PRETRAIN, "lr": 0.005})
    before = _snapshot(tmp_path)
    code, text = _run(["run", str(other), "--out", str(tmp_path / "new"), "--pretrained-from", str(run)], capsys)
    assert code == 2 and text == (f"error: --pretrained-from {run}: single/gpt2-rope: pretrained with gpt2-rope's "
                                  "pretrain.lr 0.002, this study's is 0.005; its pretrained models are not the ones "
                                  "this study would train"), text
    assert _snapshot(tmp_path) == before


def test_eval_of_a_committed_run_without_data_is_one_line_and_marks_nothing(tmp_path, capsys):
    """`eval` on a committed run (config and results only): datasets' "Directory .../data/individuals not found",
    after the folder had been marked."""
    run = Path(shutil.copytree(Path(__file__).parents[1] / "runs" / "quick", tmp_path / "quick"))
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, text = _run(["eval", str(run)], capsys)
    assert code == 2 and text == (f"error: {run}: no data/ or tokenizer/, so no saved models to evaluate (a run "
                                  f"folder copied without them, as in runs/); `bidirect run {run / 'config.yaml'} "
                                  "--out NEW` makes them again")
    assert _snapshot(tmp_path) == before and not (run / ".bidirect").exists()


def test_ctrl_c_while_importing_is_one_line_and_130(monkeypatch, capsys):
    """Ctrl-C while torch and transformers were imported (seconds, before anything ran): a KeyboardInterrupt
    traceback."""
    class Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "bidirect.trainer":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "bidirect.trainer")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    code, text = _run(["backbones"], capsys)
    assert code == 130 and text == "error: interrupted while starting; nothing was done"


def test_probe_steps_are_bounded(run_copy, capsys):
    """`probe --steps 1000000000` ran with no bound and no output."""
    _, run = run_copy
    before = _snapshot(run.parent)
    code, text = _run(["probe", str(run), "--steps", "1000000000"], capsys)
    assert code == 2 and text == ("error: --steps: at most 100,000, got 1,000,000,000 (probe training steps per cell; "
                                  "the default is 300)")
    assert _snapshot(run.parent) == before


def test_ask_notes_a_stranger_or_a_question_out_of_the_study(run_copy, capsys):
    """`ask` about a name not in the study, or a question not in its forms, answered with no note."""
    from bidirect.data.generate import StudyData

    _, run = run_copy
    before = _snapshot(run.parent)
    person = StudyData.load(run / "data").individuals[0]["full_name"]
    for question, note in [("What is the birth city of Nobody Here Atall?", "note: 'Nobody Here Atall' is none of "
                            "this study's 24 people; the models never saw that person, so their answers are guesses"),
                           ("Where was Ann born?", "note: the question is in none of the study's forms (e.g. 'What "
                            "is the birth city of NAME?'); the models were trained on those, so their answers to it "
                            "are no measure of what they stored"),
                           (f"What is the birth city of {person}?", None)]:
        code, text = _run(["ask", str(run), question], capsys)
        assert code == 0 and "single/gpt2-rope (causal, greedy):" in text
        assert (note in text) if note else "note:" not in text, text
    assert _snapshot(run.parent) == before
