"""Trustworthy under faults and bad input.

- A run killed with SIGKILL resumes with ``--resume`` and ends with the same bytes as an
  uninterrupted run; checkpoints half written by the kill are skipped, by name.
- The same config and seed, run twice, give the same results.json but for timings.
- Damaged or foreign run folders and wrong configs: one clear error, exit 2, no traceback,
  nothing that existed deleted or overwritten (a table of cases).
- The leak guard finds P_test QA slipped into any training stream, and run_cell refuses to train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from cut import cut_env
from datasets import DatasetDict, concatenate_datasets
from tiny import tiny_config
from tiny import write_config as write_tiny

from bidirect import config as config_lib
from bidirect import study
from bidirect.cli import main
from bidirect.config import BackboneConfig, MaskingConfig, from_dict
from bidirect.data.generate import StudyData
from bidirect.objectives import encode_qa, make_objective
from bidirect.tokenizer import load_tokenizer, qa_text
from bidirect.trainer import TrainingError

# One cell, small enough for seconds, long enough (60 steps, a checkpoint every 5) to be killed mid-phase.
TINY = tiny_config(
    data__augmentations=["single"],
    backbones=["gpt2-rope"],
    pretrain={"steps": 60, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 5},
)
PRETRAIN = Path("models/single/gpt2-rope/pretrain")
# Same thread count in every process: the CPU kernels' float sums then do not depend on the process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING = re.compile(r"(seconds|per_second|_time|timestamp)$")


def write_config(path: Path, **changes) -> Path:
    return write_tiny(path, TINY, **changes)


def _start(config: Path, out: Path, *extra: str, env: dict[str, str] = ENV) -> subprocess.Popen:
    path = out.with_name(out.name + "".join(extra) + ".log")
    with open(path, "w") as log:  # a file, not a pipe, that the child keeps open
        proc = subprocess.Popen([sys.executable, "-m", "bidirect", "run", str(config), "--out", str(out), *extra],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = path
    return proc


def _finish(proc: subprocess.Popen) -> str:
    proc.wait(timeout=600)
    text = proc.log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _drop_timing(value):
    if isinstance(value, dict):
        return {k: _drop_timing(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_drop_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of one config: straight through, again (in another process and folder),
    and killed with SIGKILL after its first checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("faults")
    config = write_config(root / "tiny.yaml")
    straight, killed = root / "straight", root / "killed"
    first = killed / PRETRAIN / "checkpoints" / "step_00000005"  # SIGKILL right after it is complete (tests/cut.py)
    procs = {"straight": _start(config, straight),
             "killed": _start(config, killed, env=cut_env(ENV, first, root / "cut_hook", signal.SIGKILL))}
    try:
        return _kill_and_resume(root, config, straight, killed, procs)
    finally:
        for proc in procs.values():  # only if something above failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _kill_and_resume(root: Path, config: Path, straight: Path, killed: Path, procs: dict) -> SimpleNamespace:
    checkpoints = killed / PRETRAIN / "checkpoints"
    procs["killed"].wait(timeout=600)
    assert procs["killed"].returncode == -signal.SIGKILL
    assert not (killed / PRETRAIN / "phase.json").exists(), "killed too late: the pretraining phase had finished"
    last = [p for p in sorted(checkpoints.glob("step_*")) if (p / "trainer_state.json").is_file()][-1]
    last_step = int(last.name.removeprefix("step_"))
    shutil.copytree(killed, root / "killed_copy")  # the killed state, for the bad-input table

    # What a kill during a checkpoint write leaves: a temporary folder, and (damage) a step_
    # folder without trainer_state.json, both newer than the last complete checkpoint. The
    # resumed run must skip them, and later write its own checkpoint of that step over the
    # leftover. And a log line of a step after the checkpoint, which the resumed run redoes.
    every = TINY["pretrain"]["checkpoint_every"]
    half_step = checkpoints / f"step_{last_step + every:08d}"
    half_tmp = checkpoints / f".tmp_step_{last_step + 2 * every:08d}"
    half_step.mkdir(exist_ok=True)
    half_tmp.mkdir(exist_ok=True)
    (half_step / "model.safetensors").write_bytes((last / "model.safetensors").read_bytes()[:1000])
    with (killed / PRETRAIN / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": last_step + 1, "loss": 99.0, "lr": 0.0}) + "\n")

    resumed = procs["resumed"] = _start(config, killed, "--resume")
    # Meanwhile the same config again, in this process (whose imports are paid for), one thread like the others.
    again, threads = root / "again", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(config), "--out", str(again)]) == 0
    finally:
        torch.set_num_threads(threads)
    _finish(procs["straight"])
    return SimpleNamespace(root=root, config=config, straight=straight, killed=killed, again=again,
                           last=last, last_step=last_step, half=(half_step, half_tmp),
                           resume_log=_finish(resumed))


def test_sigkill_then_resume_ends_bit_identical(runs):
    """The resumed run continues from its last complete checkpoint and ends with the very
    bytes of the uninterrupted run: models, training logs and every result."""
    assert 0 < runs.last_step < TINY["pretrain"]["steps"]
    flat = "".join(runs.resume_log.split())
    assert "".join(f"resumed from {runs.last} at step {runs.last_step}/".split()) in flat
    a = json.loads((runs.straight / "results.json").read_text())
    b = json.loads((runs.killed / "results.json").read_text())
    assert a["results"] == b["results"]
    assert _drop_timing(a["training"]) == _drop_timing(b["training"])
    for phase in ("pretrain", "finetune"):
        phase_dir = Path("models/single/gpt2-rope") / phase
        model_a, model_b = _files(runs.straight / phase_dir / "model"), _files(runs.killed / phase_dir / "model")
        assert "model.safetensors" in model_a and model_a == model_b, phase
        # No line twice, none from the killed process's future: the log is the uninterrupted one.
        log_a = (runs.straight / phase_dir / "log.jsonl").read_text()
        assert log_a == (runs.killed / phase_dir / "log.jsonl").read_text(), phase
        assert not (runs.killed / phase_dir / "checkpoints").exists()  # a finished phase keeps none


def test_resume_skips_half_written_checkpoints_by_name(runs):
    flat = "".join(runs.resume_log.split())
    for path in runs.half:
        assert "".join(f"skipping incomplete checkpoint {path}".split()) in flat
    assert "Traceback" not in runs.resume_log


def test_same_config_same_seed_same_results(runs):
    """Two runs of one config in two processes: identical results.json but for timings,
    identical data, tokenizer, models and logs."""
    a = json.loads((runs.straight / "results.json").read_text())
    b = json.loads((runs.again / "results.json").read_text())
    assert "wall_seconds" in a and "seconds" in a["training"]["single"]["gpt2-rope"]["pretrain"]
    assert _drop_timing(a) == _drop_timing(b)
    for part in ("data", "tokenizer", "models"):
        files_a, files_b = _files(runs.straight / part), _files(runs.again / part)
        assert files_a.keys() == files_b.keys(), part
        for name in files_a:
            if name.endswith("phase.json"):  # a phase's summary holds its timing
                assert _drop_timing(json.loads(files_a[name])) == _drop_timing(json.loads(files_b[name])), name
            else:
                assert files_a[name] == files_b[name], name
    assert (runs.straight / "tokenizer.sha256").read_text() == (runs.again / "tokenizer.sha256").read_text()


# --------------------------------------------------------------------------- bad input


def _snapshot(paths: list[Path]) -> dict[str, str]:
    """Every file and folder under ``paths`` with the hash of its bytes."""
    seen = {}
    for top in paths:
        if top.is_file():
            seen[str(top)] = hashlib.sha256(top.read_bytes()).hexdigest()
        for p in sorted(top.rglob("*")) if top.is_dir() else []:
            seen[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return seen


def _copy(src: Path, dst: Path, models: bool = True) -> Path:
    shutil.copytree(src, dst, ignore=None if models else shutil.ignore_patterns("models"))
    return dst


@pytest.fixture(scope="module")
def world(runs):
    """The folders the bad-input cases act on, made once."""
    root = runs.root / "bad"
    root.mkdir()
    w = SimpleNamespace(root=root, config=str(runs.config))
    w.a_file = root / "a_file"
    w.a_file.write_text("x")
    w.finished = _copy(runs.straight, root / "finished")
    w.corrupt = _copy(runs.straight, root / "corrupt", models=False)
    (w.corrupt / "results.json").write_text("{not json")
    w.not_results = _copy(runs.straight, root / "not_results", models=False)
    (w.not_results / "results.json").write_text('{"study": "x"}')
    w.not_a_run = root / "not_a_run"
    w.not_a_run.mkdir()
    (w.not_a_run / "notes.txt").write_text("mine")
    w.unfinished = _copy(runs.root / "killed_copy", root / "unfinished")

    w.truncated = _copy(runs.root / "killed_copy", root / "truncated")
    w.checkpoint = sorted((w.truncated / PRETRAIN / "checkpoints").glob("step_*"))[-1]
    weights = w.checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    # The tokenizer of another run, with another vocabulary, copied into a run folder.
    other = root / "other_tokenizer_run"
    other_config = write_config(root / "other.yaml", tokenizer={"kind": "bpe", "vocab_size": 300})
    assert main(["data", str(other_config), "--out", str(other)]) == 0
    assert len(load_tokenizer(other / "tokenizer")) != len(load_tokenizer(runs.straight / "tokenizer"))
    for name, src in (("foreign_eval", runs.straight), ("foreign_resume", runs.root / "killed_copy")):
        dst = _copy(src, root / name)
        shutil.rmtree(dst / "tokenizer")
        shutil.copytree(other / "tokenizer", dst / "tokenizer")
        setattr(w, name, dst)

    w.bad_yaml = root / "bad.yaml"
    w.bad_yaml.write_text("data: {individuals: 24\nmodel: [")
    # lr 1e30 after a warmup step at lr 0: step 2 blows the weights up, step 3's loss is not finite.
    w.nan_yaml = write_config(root / "nan.yaml", pretrain={"steps": 6, "batch_size": 4, "lr": 1.0e30,
                                                             "warmup_steps": 2, "checkpoint_every": 1})
    return w


def _cfg(w, name: str, **changes) -> str:
    return str(write_config(w.root / f"{name}.yaml", **changes))


def _context_check(w, out: Path, text: str) -> None:
    """The message names the longest biography's real token count; nothing was trained."""
    data, tokenizer = StudyData.load(out / "data"), load_tokenizer(out / "tokenizer")
    encoded = tokenizer(list(data.bios["single"]["text"]), add_special_tokens=False)["input_ids"]
    longest = max(len(ids) for ids in encoded)
    assert f"which is {longest} tokens" in " ".join(text.split())
    assert not (out / "models").exists()


def _nan_check(w, out: Path, text: str) -> None:
    flat = "".join(text.split())
    named = re.search(r"lastgoodcheckpoint:(\S+?step_\d{8})", flat)
    assert named and Path(named.group(1)).is_dir() and named.group(1).endswith("step_00000002"), flat
    assert not (out / PRETRAIN / "model").exists()


# id -> (argv, message fragments, folders that must not change, folder that must not be created, extra check)
def _case(w, case: str):
    new = w.root / f"out_{case}"
    config_error = {
        "unknown_key": (dict(data__colour="red"), "unknown key data.colour"),
        "wrong_type": (dict(model__width="wide"), "model.width: expected an integer, got 'wide'"),
        "negative_size": (dict(model__width=-32), "model.width: must be > 0, got -32"),
        "zero_size": (dict(model__layers=0), "model.layers: must be > 0, got 0"),
        "heads_not_dividing_width": (dict(model__heads=3), "model.heads: 3 does not divide model.width 32"),
        "p_train_0": (dict(data__p_train=0.0), "data.p_train: must be strictly between 0 and 1, got 0.0"),
        "p_train_1": (dict(data__p_train=1.0), "data.p_train: must be strictly between 0 and 1, got 1.0"),
        "more_individuals_than_names": (dict(data__individuals=160_000_001), "distinct full names the pools allow"),
        "unknown_backbone": (dict(backbones=["gpt5"]), "backbones[0]: unknown backbone 'gpt5'"),
        "unknown_augmentation": (dict(data__augmentations=["shuffle"]), "unknown augmentation 'shuffle'"),
    }
    if case in config_error:
        changes, message = config_error[case]
        return ["run", _cfg(w, case, **changes), "--out", str(new)], [message], [w.root / f"{case}.yaml"], new, None
    table = {
        "missing_config": (["run", str(w.root / "missing.yaml"), "--out", str(new)], ["missing.yaml does not exist"],
                           [], new, None),
        "invalid_yaml": (["run", str(w.bad_yaml), "--out", str(new)], ["not valid YAML"], [w.bad_yaml], new, None),
        "context_shorter_than_bio": (["run", _cfg(w, "context32", model__context=32), "--out", str(new)],
                                     ["model.context: 32 tokens is too short for the longest biography",
                                      "Raise model.context to at least", "Nothing was trained"], [], None,
                                     _context_check),
        "out_is_a_file": (["run", w.config, "--out", str(w.a_file)], ["is a file, not a folder"], [w.a_file], None,
                          None),
        "finished_run_not_overwritten": (["run", w.config, "--out", str(w.finished)], ["holds a finished run"],
                                         [w.finished], None, None),
        "resume_with_other_config": (["run", _cfg(w, "other_config", data__individuals=30), "--out", str(w.finished),
                                      "--resume"], ["the config differs from the one this run started with"],
                                     [w.finished], None, None),
        "resume_not_a_run": (["run", w.config, "--out", str(w.not_a_run), "--resume"],
                             ["not a bidirect run folder (no .bidirect marker", "will not write into it"],
                             [w.not_a_run], None, None),
        "truncated_checkpoint": (["run", w.config, "--out", str(w.truncated), "--resume"],
                                 [f"checkpoint {w.checkpoint} is corrupt", "SafetensorError"], [w.truncated], None,
                                 None),
        "non_finite_loss": (["run", str(w.nan_yaml), "--out", str(new)],
                            ["non-finite loss at step 3; examples [", "of this stream; last good checkpoint:"],
                            [w.nan_yaml], None, _nan_check),
        "foreign_tokenizer_resume": (["run", w.config, "--out", str(w.foreign_resume), "--resume"],
                                     [f"{w.foreign_resume / 'tokenizer'}: the tokenizer does not match the run"],
                                     [w.foreign_resume], None, None),
        "foreign_tokenizer_eval": (["eval", str(w.foreign_eval)],
                                   [f"{w.foreign_eval / 'tokenizer'}: the tokenizer does not match the run"],
                                   [w.foreign_eval], None, None),
        "eval_corrupt_results": (["eval", str(w.corrupt)], ["results.json: corrupt JSON"], [w.corrupt], None, None),
        "summary_corrupt_results": (["summary", str(w.corrupt)], ["results.json: corrupt JSON"], [w.corrupt], None,
                                    None),
        "summary_not_a_results_file": (["summary", str(w.not_results)], ["not a bidirect results file"],
                                       [w.not_results], None, None),
        "eval_not_a_run": (["eval", str(w.not_a_run)], ["not a bidirect run folder (no config.yaml)"],
                           [w.not_a_run], None, None),
        "eval_unfinished_run": (["eval", str(w.unfinished)], ["no trained model"], [w.unfinished], None, None),
        "eval_no_such_folder": (["eval", str(w.root / "nowhere")], ["no such run folder"], [], w.root / "nowhere",
                                None),
        "eval_a_file": (["eval", str(w.a_file)], ["a file, not a run folder"], [w.a_file], None, None),
        "summary_no_such_folder": (["summary", str(w.root / "nowhere")], ["no such run folder"], [],
                                   w.root / "nowhere", None),
    }
    return table[case]


CASES = [
    "unknown_key", "wrong_type", "negative_size", "zero_size", "heads_not_dividing_width", "p_train_0", "p_train_1",
    "more_individuals_than_names", "unknown_backbone", "unknown_augmentation", "missing_config", "invalid_yaml",
    "context_shorter_than_bio", "out_is_a_file", "finished_run_not_overwritten", "resume_with_other_config",
    "resume_not_a_run", "truncated_checkpoint", "non_finite_loss", "foreign_tokenizer_resume",
    "foreign_tokenizer_eval", "eval_corrupt_results", "summary_corrupt_results", "summary_not_a_results_file",
    "eval_not_a_run", "eval_unfinished_run", "eval_no_such_folder", "eval_a_file", "summary_no_such_folder",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_clear_error(world, case, capsys, monkeypatch):
    argv, messages, watched, not_created, check = _case(world, case)
    if case == "non_finite_loss":  # lr 1e30 is past config.MAX_LR (issue 22); lifted here to reach the loss check
        monkeypatch.setattr(config_lib, "MAX_LR", 1e31)
    before = _snapshot(watched)
    capsys.readouterr()
    assert main(argv) == 2, argv
    text = capsys.readouterr().out
    flat = "".join(text.split())  # rich wraps long lines, paths included
    for message in messages:
        assert "".join(message.split()) in flat, (message, text)
    assert "Traceback" not in text
    assert _snapshot(watched) == before  # nothing that existed was deleted or overwritten
    if not_created is not None:
        assert not not_created.exists()
    if check is not None:
        check(world, world.root / f"out_{case}", text)


# --------------------------------------------------------------------------- leak guard


def _leaky(data: StudyData, where: str, augmentation: str = "single") -> tuple[StudyData, str]:
    """``data`` with the QA of one P_test person slipped into P_train's QA or into the biographies."""
    row = data.qa_test[3]
    if where == "qa_train":
        return dataclasses.replace(data, qa_train=concatenate_datasets([data.qa_train, data.qa_test.select([3])])), \
            row["question"]
    text = qa_text(row["question"], row["answer"])
    bios = data.bios[augmentation].map(lambda r, i: {"text": text if i == 0 else r["text"]}, with_indices=True,
                                       keep_in_memory=True)
    return dataclasses.replace(data, bios=DatasetDict({**data.bios, augmentation: bios})), row["question"]


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_leak_check_counts_a_p_test_question_in_the_qa_stream(kind, study_data, tokenizer):
    objective = make_objective(kind, tokenizer, 256, MaskingConfig())
    clean = study.leak_check(objective.qa_examples(encode_qa(study_data.qa_train, tokenizer), 0), tokenizer, study_data)
    assert clean["leaked"] == 0 and clean["qa_documents_checked"] == len(study_data.qa_train)
    leaky, question = _leaky(study_data, "qa_train")
    guard = study.leak_check(objective.qa_examples(encode_qa(leaky.qa_train, tokenizer), 0), tokenizer, study_data)
    # Found by the hash of its exact question, decoded from the stream's tokens.
    assert guard["leaked"] == 1 and guard["examples"] == [question]
    assert guard["qa_documents_checked"] == len(study_data.qa_train) + 1


@pytest.mark.parametrize("kind", ["causal", "masked"])
@pytest.mark.parametrize("protocol,where", [("mixed", "qa_train"), ("pretrain_finetune", "bios")])
def test_leak_check_counts_a_p_test_question_in_every_protocol(kind, protocol, where, study_data, tokenizer):
    # word masking: the doctored bio keeps the old value spans, which attribute-span masking would read
    cfg = from_dict({"protocol": protocol, "masking": {"span": "word"}})
    objective = make_objective(kind, tokenizer, 256, MaskingConfig())
    clean = study.training_streams(cfg, objective, study_data, tokenizer, "single")
    assert study.leak_check(list(clean.values()), tokenizer, study_data)["leaked"] == 0
    leaky, question = _leaky(study_data, where)
    streams = study.training_streams(cfg, objective, leaky, tokenizer, "single")
    stream = streams["mixed" if protocol == "mixed" else "pretrain"]
    guard = study.leak_check(stream, tokenizer, study_data)
    assert guard["leaked"] >= 1 and set(guard["examples"]) == {question}  # mixed may draw it more than once


@pytest.mark.parametrize("protocol,where", [("pretrain_finetune", "qa_train"), ("pretrain_finetune", "bios"),
                                            ("mixed", "qa_train")])
def test_run_cell_refuses_to_train_on_a_leak(protocol, where, study_data, tokenizer, tmp_path, monkeypatch):
    cfg = from_dict({"protocol": protocol, "model": TINY["model"], "masking": {"span": "word"}})  # as above
    real = study.training_streams
    monkeypatch.setattr(study, "training_streams", lambda c, o, d, t, a: real(c, o, _leaky(d, where, a)[0], t, a))

    def train_phase(*args, **kwargs):
        raise AssertionError("trained on a stream with P_test QA")

    monkeypatch.setattr(study, "train_phase", train_phase)
    with pytest.raises(TrainingError, match=r"single/gpt2-rope: \d+ P_test QA document\(s\) found .*refusing to train"):
        study.run_cell(cfg, tmp_path, study_data, tokenizer, "single", BackboneConfig("gpt2-rope"), Accelerator())
    assert not (tmp_path / "models").exists()
