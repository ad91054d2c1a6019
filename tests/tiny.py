"""The tiny study that the end-to-end tests run in seconds, and a writer for variants of it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

TINY = {
    "name": "tiny",
    # Pinned where the default study differs (a validation split, attribute-span masking at 40%), so that
    # the tiny study's counts and masks stay what its tests assert.
    "data": {"individuals": 24, "p_val": 0.0, "augmentations": ["single", "multi2+permute"]},
    "masking": {"probability": 0.15, "span": "word"},
    # BPE with a small vocabulary: long bios, and tokenizers of different sizes really differ.
    "tokenizer": {"kind": "bpe", "vocab_size": 400},
    # 256: with a 400-token vocabulary a biography is about 230 tokens, and a study refuses to cut them.
    "model": {"layers": 1, "heads": 2, "width": 32, "mlp_width": 64, "context": 256},
    "backbones": ["gpt2-rope", "gbert"],
    "pretrain": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 3},
    "finetune": {"steps": 3, "batch_size": 4, "log_every": 1},
}


def tiny_config(base: dict = TINY, **changes) -> dict:
    """``base`` with ``section__field=value`` (or ``section=value``) changes."""
    cfg = json.loads(json.dumps(base))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    return cfg


def write_config(path: Path, base: dict = TINY, **changes) -> Path:
    path.write_text(yaml.safe_dump(tiny_config(base, **changes)))
    return path


def single_study(**changes) -> dict:
    """The tiny study on `single` with gpt2-rope alone and no checkpoints: the base of the sweep, report and LoRA
    tests, with ``section__field=value`` changes."""
    base = tiny_config(data__augmentations=["single"], backbones=["gpt2-rope"], pretrain__checkpoint_every=0)
    return tiny_config(base, **changes)


# One cell, one backbone: the finished run (conftest's `finished`) the safety, user-files and bad-input tests copy.
ONE_CELL = dict(data__augmentations=["single"], backbones=["gpt2-rope"])
