"""Shared fixtures: a small generated study and its tokenizer (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from tiny import ONE_CELL, single_study, write_config

from bidirect.cli import main
from bidirect.config import Augmentation, DataConfig
from bidirect.data.generate import generate
from bidirect.study import tokenizer_corpus
from bidirect.tokenizer import train_tokenizer

AUGS = ["single", "multi3+permute+fullname", "single+permute2"]


@pytest.fixture(scope="session")
def study_data():
    return generate(DataConfig(individuals=60, p_train=0.5, augmentations=AUGS), [Augmentation.parse(a) for a in AUGS],
                    seed=0)


@pytest.fixture(scope="session")
def tokenizer(study_data):
    return train_tokenizer(tokenizer_corpus(study_data), "bpe", vocab_size=600)


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    config = root / "lora.yaml"
    config.write_text(yaml.safe_dump(single_study(backbones=["gpt2-rope", "gpt2"],
                                          finetune={"steps": 3, "batch_size": 4, "log_every": 1, "lr": 0.01,
                                                    "finetune_mode": "lora", "lora_rank": 4})))
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished one-cell tiny run, made once for the session; tests that change it work on `run_copy`."""
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root / "tiny.yaml", **ONE_CELL)
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return config, root / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    config, run = finished
    return config, Path(shutil.copytree(run, tmp_path / "run", symlinks=True))
