"""A run folder may come from someone else: no bidirect command runs code that a folder holds.

Every file a checkpoint and a saved model hold gets a payload that writes a marker file when it is unpickled or
imported; the folder's hash lists are rewritten to match (anyone can), since they catch damage, not tampering.
The command then either refuses in one line or goes on without reading the file, and the marker never appears.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from test_trainer import Interrupt, _accelerator, dying

from bidirect.cli import main
from bidirect.config import MaskingConfig, ModelSize, TrainConfig
from bidirect.integrity import write_manifest
from bidirect.models import backbone_kind, build_backbone, load_backbone
from bidirect.objectives import make_objective, tokenize_bios
from bidirect.rundir import RunDirError
from bidirect.tokenizer import load_tokenizer
from bidirect.trainer import TrainingError, complete_checkpoints, train_phase

SIZE = ModelSize(layers=1, heads=2, width=32, mlp_width=64, context=128)
FINETUNE = "models/single/gpt2-rope/finetune/model"


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the file appearing is the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _code(marker: Path) -> str:
    """Python source that writes ``marker`` when it is imported, for files that hold code (a model's .py)."""
    return (f"open({str(marker)!r}, 'w').write('ran')\n"
            "from transformers import GPTNeoXConfig, GPTNeoXForCausalLM\n"
            "class EvilConfig(GPTNeoXConfig):\n    model_type = 'evil'\n"
            "class EvilModel(GPTNeoXForCausalLM):\n    config_class = EvilConfig\n")


# --------------------------------------------------------------------------- checkpoints


def _setup(study_data, tokenizer):
    objective = make_objective(backbone_kind("gbert"), tokenizer, SIZE.context, MaskingConfig())
    stream = objective.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer), seed=0)
    set_seed(0)
    return build_backbone("gbert", SIZE, tokenizer), objective, stream


CFG = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=3)


@pytest.fixture(scope="module")
def interrupted(study_data, tokenizer, tmp_path_factory):
    """A phase killed after its step-3 checkpoint (gbert: the RNG states decide its masks), and the same phase
    run straight through, whose weights a resume must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("interrupted")
    model, objective, stream = _setup(study_data, tokenizer)
    train_phase(model, objective, stream, CFG, root / "straight", _accelerator(), "t", seed=0)
    model, objective, stream = _setup(study_data, tokenizer)
    with pytest.raises(Interrupt):  # in step 5, after the checkpoint of step 3
        train_phase(model, dying(objective.collate, 5), stream, CFG, root / "killed", _accelerator(), "t", seed=0)
    return root


def _resume(root: Path, tmp_path: Path, study_data, tokenizer):
    model, objective, stream = _setup(study_data, tokenizer)
    torch.manual_seed(1234)  # a fresh process: the RNG states must come from the checkpoint
    return train_phase(model, objective, stream, CFG, tmp_path / "killed", _accelerator(), "t", seed=0)


def test_checkpoint_holds_no_pickle_beyond_tensors(interrupted):
    """The scheduler's state is JSON beside the counters, not accelerate's custom_checkpoint pickle."""
    (checkpoint,) = complete_checkpoints(interrupted / "killed" / "checkpoints")
    names = sorted(p.name for p in checkpoint.iterdir())
    assert not any(n.startswith("custom_checkpoint") or n.startswith("scheduler") for n in names), names
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["scheduler"]["last_epoch"] == 3


@pytest.mark.parametrize("name", ["scheduler.bin", "sampler.bin"])
def test_pickles_bidirect_does_not_write_are_never_read(interrupted, tmp_path, study_data, tokenizer, name):
    """A payload in a file of accelerate's that bidirect's checkpoints do not use: the resume never opens it and
    ends as an uninterrupted run does."""
    shutil.copytree(interrupted / "killed", tmp_path / "killed")
    (checkpoint,) = complete_checkpoints(tmp_path / "killed" / "checkpoints")
    marker = tmp_path / "ran"
    torch.save(Payload(marker), checkpoint / name)
    summary = _resume(interrupted, tmp_path, study_data, tokenizer)
    assert not marker.exists() and summary.steps == CFG.steps
    _assert_same_weights(interrupted / "straight", tmp_path / "killed")


def test_scheduler_pickle_refused_until_deleted(interrupted, tmp_path, study_data, tokenizer):
    """The reviewer's payload: accelerate unpickles custom_checkpoint_0.pkl (where earlier versions kept the
    scheduler) with weights_only=False. bidirect refuses the checkpoint, names the file, and resumes bit for bit
    once it is deleted (the schedule follows from the step)."""
    shutil.copytree(interrupted / "killed", tmp_path / "killed")
    (checkpoint,) = complete_checkpoints(tmp_path / "killed" / "checkpoints")
    marker = tmp_path / "ran"
    torch.save(Payload(marker), checkpoint / "custom_checkpoint_0.pkl")
    with pytest.raises(TrainingError, match=r"holds custom_checkpoint_0.pkl, a pickle bidirect does not read.*"
                                            r"Delete it to resume from this checkpoint"):
        _resume(interrupted, tmp_path, study_data, tokenizer)
    assert not marker.exists()
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    _resume(interrupted, tmp_path, study_data, tokenizer)
    _assert_same_weights(interrupted / "straight", tmp_path / "killed")


def _assert_same_weights(first: Path, second: Path) -> None:
    straight = load_backbone(first / "model").state_dict()
    resumed = load_backbone(second / "model").state_dict()
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("name, message", [
    ("model.safetensors", r"is corrupt \(SafetensorError: Error while deserializing header"),  # not a pickle format
    ("optimizer.bin", "is corrupt: a file in it holds Python objects beyond tensors, which bidirect does not unpickle"),
    ("random_states_0.pkl", "is corrupt: a file in it holds Python objects beyond tensors"),
])
def test_payload_in_a_checkpoint_file_refused_without_running(interrupted, tmp_path, study_data, tokenizer, name,
                                                              message):
    shutil.copytree(interrupted / "killed", tmp_path / "killed")
    (checkpoint,) = complete_checkpoints(tmp_path / "killed" / "checkpoints")
    marker = tmp_path / "ran"
    (checkpoint / name).unlink()
    torch.save(Payload(marker), checkpoint / name)  # a pickle where tensors belong
    with pytest.raises(TrainingError, match=rf"checkpoint .*step_00000003 {message}.*Delete it"):
        _resume(interrupted, tmp_path, study_data, tokenizer)
    assert not marker.exists()


def test_damaged_rng_states_stop_the_resume(interrupted, tmp_path, study_data, tokenizer):
    """accelerate skips RNG states it cannot read with a log line; the resume would then differ from an
    uninterrupted run without a word. bidirect refuses the checkpoint instead."""
    shutil.copytree(interrupted / "killed", tmp_path / "killed")
    (checkpoint,) = complete_checkpoints(tmp_path / "killed" / "checkpoints")
    rng = checkpoint / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:40])
    with pytest.raises(TrainingError, match="is corrupt"):
        _resume(interrupted, tmp_path, study_data, tokenizer)
    torch.save({"nothing": torch.zeros(1)}, rng)  # readable, but no RNG states in it
    with pytest.raises(TrainingError, match="holds no RNG states"):
        _resume(interrupted, tmp_path, study_data, tokenizer)


def test_scheduler_state_not_at_the_checkpoint_step_refused(interrupted, tmp_path, study_data, tokenizer):
    shutil.copytree(interrupted / "killed", tmp_path / "killed")
    (checkpoint,) = complete_checkpoints(tmp_path / "killed" / "checkpoints")
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    state["scheduler"]["last_epoch"] = 0
    path.write_text(json.dumps(state))
    with pytest.raises(TrainingError, match="scheduler state is not at step 3"):
        _resume(interrupted, tmp_path, study_data, tokenizer)


def test_older_checkpoint_without_scheduler_json_resumes_bit_identical(interrupted, tmp_path, study_data, tokenizer):
    """Checkpoints of the versions that pickled the scheduler: the schedule is rebuilt from the step."""
    shutil.copytree(interrupted / "killed", tmp_path / "killed")
    (checkpoint,) = complete_checkpoints(tmp_path / "killed" / "checkpoints")
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    del state["scheduler"]
    path.write_text(json.dumps(state))
    _resume(interrupted, tmp_path, study_data, tokenizer)
    _assert_same_weights(interrupted / "straight", tmp_path / "killed")


# --------------------------------------------------------------------------- saved models and tokenizers


@pytest.fixture
def saved_gbert(tokenizer, tmp_path) -> Path:
    path = tmp_path / "model"
    build_backbone("gbert", SIZE, tokenizer).save_pretrained(path)
    write_manifest(path)
    return path


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("model_type, auto_map", [
    ("evil", {"AutoConfig": "evil.EvilConfig", "AutoModelForMaskedLM": "evil.EvilModel"}),
    ("gbert", {"AutoConfig": "evil.EvilConfig", "AutoModelForMaskedLM": "evil.EvilModel"}),
])
def test_saved_model_naming_its_own_code_never_runs_it(saved_gbert, tmp_path, model_type, auto_map):
    marker = tmp_path / "ran"
    (saved_gbert / "evil.py").write_text(_code(marker))
    (saved_gbert / "gbert.py").write_text(_code(marker))  # the copy of bidirect's code saved beside the weights
    _edit_config(saved_gbert, model_type=model_type, auto_map=auto_map)
    write_manifest(saved_gbert)  # a hash list catches damage, not tampering: anyone can rewrite it
    if model_type == "gbert":  # bidirect's own class: built from bidirect's code, the folder's .py untouched
        assert type(load_backbone(saved_gbert)).__name__ == "GBertForMaskedLM"
    else:
        with pytest.raises(RunDirError, match=r"model_type 'evil' .* is not a model bidirect saves \(allowed: "
                                              r"gpt2 \(GPT2LMHeadModel\).*bidirect runs no code from a run folder"):
            load_backbone(saved_gbert)
    assert not marker.exists()


def test_saved_model_with_a_class_of_another_name_refused(saved_gbert, tmp_path):
    _edit_config(saved_gbert, architectures=["EvilModel"])
    write_manifest(saved_gbert)
    with pytest.raises(RunDirError, match=r"architectures \['EvilModel'\] is not a model bidirect saves"):
        load_backbone(saved_gbert)


def test_pickled_weights_are_not_unpickled(saved_gbert, tmp_path):
    marker = tmp_path / "ran"
    (saved_gbert / "model.safetensors").unlink()
    with (saved_gbert / "pytorch_model.bin").open("wb") as f:
        pickle.dump(Payload(marker), f)
    write_manifest(saved_gbert)
    with pytest.raises(RunDirError, match="could not load the model saved at"):
        load_backbone(saved_gbert)
    assert not marker.exists()


def test_tokenizer_naming_its_own_code_never_runs_it(tokenizer, tmp_path):
    marker = tmp_path / "ran"
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "evil.py").write_text(_code(marker) + "class EvilTok:\n    pass\n")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTok", auto_map={"AutoTokenizer": [None, "evil.EvilTok"]})
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded("Anya was born")["input_ids"] == tokenizer("Anya was born")["input_ids"]
    assert not marker.exists()


def test_eval_of_a_tampered_run_refuses_without_asking(run_copy, tmp_path, capsys, monkeypatch):
    """The reviewer's case end to end: `bidirect eval` on a run whose saved model names its own code stopped at
    transformers' "Do you wish to run the custom code? [y/N]". Now one line, no prompt, nothing run."""
    _, run = run_copy
    marker = tmp_path / "ran"
    model = run / FINETUNE
    (model / "evil.py").write_text(_code(marker))
    _edit_config(model, model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                                      "AutoModelForCausalLM": "evil.EvilModel"})
    write_manifest(model)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("bidirect asked a question"))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "is not a model bidirect saves" in out and "Traceback" not in out and "custom code" not in out
    assert not marker.exists()
