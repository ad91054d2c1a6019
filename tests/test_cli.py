"""The command line end to end on a tiny study, and its answers to bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from tiny import write_config

from bidirect.cli import main
from bidirect.protocol import MEMORIZATION_LEVELS


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = write_config(root / "tiny.yaml")
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return config, root / "run"


def test_run_writes_every_level_for_every_cell(finished_run):
    _, run = finished_run
    results = json.loads((run / "results.json").read_text())
    for aug in ("single", "multi2+permute"):
        for backbone in ("gpt2-rope", "gbert"):
            levels = results["results"][aug][backbone]
            # no P_val in the tiny study; the prior and given-length rules beside the masked model's free length
            given = {"qa_train_prior", "qa_test_prior", "qa_train_given", "qa_test_given"} if backbone == "gbert" \
                else set()
            assert set(levels) == {*MEMORIZATION_LEVELS, "qa_train", "qa_test", *given}
            assert levels["qa_test"]["n"] == 12 * 6 and levels["bio_recall"]["n"] == 24 * 6
            assert levels["qa_test"]["people"] == 12 and len(levels["qa_test"]["ci95"]["mean"]) == 2
            assert (run / "models" / aug / backbone / "finetune" / "model" / "config.json").is_file()
            assert results["leak_check"][aug][backbone]["leaked"] == 0
            assert results["leak_check"][aug][backbone]["qa_documents_checked"] == 12 * 6
    assert set(results["majority_baseline"]) >= {"birth_city", "mean"}
    # the length-aware baseline knows more, so it can only score as high or higher
    assert results["majority_baseline_given_length"]["mean"] >= results["majority_baseline"]["mean"]
    assert len(results["data_sha256"]) == 64
    assert results["parameters"]["gbert"] == results["parameters"]["gpt2-rope"]


def test_finished_run_is_never_overwritten(finished_run, capsys):
    config, run = finished_run
    before = (run / "results.json").read_bytes()
    assert main(["run", str(config), "--out", str(run)]) == 2
    assert "holds a finished run" in capsys.readouterr().out
    assert (run / "results.json").read_bytes() == before


def test_resume_of_finished_run_trains_nothing(finished_run, capsys):
    config, run = finished_run
    before = json.loads((run / "results.json").read_text())["results"]
    assert main(["run", str(config), "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "results.json").read_text())["results"] == before


def test_eval_and_summary(finished_run, capsys):
    _, run = finished_run
    before = json.loads((run / "results.json").read_text())["results"]
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["results"] == before  # deterministic
    assert main(["summary", str(run), str(run)]) == 0
    out = capsys.readouterr().out
    assert "QA P_test" in out and "gbert" in out


def test_resume_with_other_config_refused(finished_run, tmp_path, capsys):
    _, run = finished_run
    other = write_config(tmp_path / "other.yaml", data__individuals=30)
    assert main(["run", str(other), "--out", str(run), "--resume"]) == 2
    assert "config differs" in capsys.readouterr().out


def test_two_processes_match_one(tmp_path):
    """`accelerate launch` with 2 CPU processes: same data, same counts, close metrics."""
    config = write_config(tmp_path / "tiny.yaml", backbones=["gpt2-rope"], data__augmentations=["single"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bidirect"]
    two = subprocess.run([*launch, "run", str(config), "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "bidirect", "run", str(config), "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    for name in ("individuals", "qa_train", "qa_test", "bios/single"):
        files = sorted((tmp_path / "one" / "data" / name).glob("*.arrow"))
        assert files and all(f.read_bytes() == (tmp_path / "two" / "data" / name / f.name).read_bytes() for f in files)
    for level in ("bio_recall", "qa_train", "qa_test"):
        s1, s2 = r1["results"]["single"]["gpt2-rope"][level], r2["results"]["single"]["gpt2-rope"][level]
        assert s1["n"] == s2["n"]  # no item dropped or counted twice by the distributed sampler
        # Same global batch and order; only float reductions differ between 1 and 2 processes.
        assert abs(s1["mean"] - s2["mean"]) <= 0.1
    loss1 = r1["training"]["single"]["gpt2-rope"]["pretrain"]["final_loss"]
    loss2 = r2["training"]["single"]["gpt2-rope"]["pretrain"]["final_loss"]
    assert abs(loss1 - loss2) < 0.05 * loss1
    # The tiny model's accuracies are near zero, so the comparison above cannot see a wrong item. The same model
    # evaluated by two processes must give every person exactly the answers one process gave.
    shutil.copytree(tmp_path / "one", tmp_path / "again")
    again = subprocess.run([*launch, "eval", str(tmp_path / "again")], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    r3 = json.loads((tmp_path / "again" / "results.json").read_text())
    levels = r1["results"]["single"]["gpt2-rope"]
    assert {"bio_recall", "name_tied", "qa_train", "qa_test"} <= set(levels)
    for level, one_process in levels.items():
        two_processes = r3["results"]["single"]["gpt2-rope"][level]
        assert two_processes["per_person"] == one_process["per_person"], level
        assert two_processes["mean"] == one_process["mean"] and two_processes["n"] == one_process["n"], level


def test_help_of_every_command(capsys):
    from bidirect.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for argv in [["--help"], *[[name, "--help"] for name in commands]]:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0, argv
    assert "usage: bidirect" in capsys.readouterr().out


def test_set_overrides_are_checked_like_the_file_and_recorded(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "data"
    assert main(["data", str(config), "--out", str(out), "--set", "data.individuals=30", "backbones=[gpt2-rope]",
                 "masking.span=attribute"]) == 0
    from bidirect.config import load

    saved = load(out / "config.yaml")
    assert saved.data.individuals == 30 and [b.name for b in saved.backbones] == ["gpt2-rope"]
    assert saved.masking.span == "attribute" and saved.pretrain.steps == 6  # the rest is the file's
    capsys.readouterr()
    # a bad value or key: the message the same value gets in a file, exit 2, nothing written
    for override, same_in_file in [("pretrain.steps=-1", {"pretrain__steps": -1}),
                                   ("pretrain.stepz=5", {"pretrain__stepz": 5}),
                                   ("masking.span=sentence", {"masking__span": "sentence"})]:
        bad_out = tmp_path / f"bad_{override.split('=')[0]}"
        assert main(["run", str(config), "--out", str(bad_out), "--set", override]) == 2
        from_override = capsys.readouterr().out.strip()
        bad_file = write_config(tmp_path / "bad.yaml", **same_in_file)
        assert main(["run", str(bad_file), "--out", str(bad_out)]) == 2
        from_file = capsys.readouterr().out.strip()
        # the same words, said of the --set rather than of the file (issue 30)
        assert from_override.startswith("error: --set ") and from_override.endswith(from_file.split(": ", 2)[2])
        assert not bad_out.exists()
    assert main(["run", str(config), "--out", str(tmp_path / "x"), "--set", "pretrain.steps"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().out


def test_version_and_run_help_list_the_config_sections(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("bidirect 0.")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--set KEY=VALUE" in text
    assert "config keys: name, seed, protocol, qa_share, mixed_precision, data, tokenizer, model" in text


def test_tracking_writes_tensorboard_events_of_training_and_evaluation(tmp_path, capsys):
    """tracking.log_with goes through accelerate's trackers; TensorBoard's local event files are read back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path / "tiny.yaml", data__augmentations=["single"],
                          tracking={"log_with": ["tensorboard"]})
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    # not a terminal here: training steps and evaluation levels are plain lines as they happen
    out = capsys.readouterr().out
    assert "single/gbert/pretrain step 6/6 loss" in out
    assert re.search(r"^eval qa_test: 72 items, \d+\.\d% in \d+ s$", out, re.M)
    events = tmp_path / "run" / "trackers" / "run"  # trackers/<run folder's name>; the study's hparams beside
    assert list(events.glob("events.out.tfevents.*")) and list(events.rglob("hparams.yml"))
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"single/gpt2-rope/pretrain/loss", "single/gbert/finetune/lr", "single/gbert/pretrain/tokens_per_second",
            "single/gpt2-rope/eval/qa_test", "single/gbert/eval/name_tied"} <= set(tags)
    loss = EventAccumulator(str(events)).Reload().Scalars("single/gpt2-rope/pretrain/loss")
    log = [json.loads(line) for line in (tmp_path / "run" / "models" / "single" / "gpt2-rope" / "pretrain"
                                          / "log.jsonl").read_text().splitlines()]
    assert [e.step for e in loss] == [r["step"] for r in log]  # the same logging steps as log.jsonl
    assert [round(e.value, 4) for e in loss] == [round(r["loss"], 4) for r in log]


def test_unknown_or_missing_tracker_is_a_config_error(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "tiny.yaml", tracking={"log_with": ["tensorbord"]})
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "tracking.log_with[0]: unknown tracker 'tensorbord'; allowed: tensorboard, wandb" in capsys.readouterr().out
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    config = write_config(tmp_path / "tiny.yaml", tracking={"log_with": ["wandb"]})
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "tracking.log_with: wandb is not installed here" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
