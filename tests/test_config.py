"""Configs load from YAML into typed dataclasses; every bad value gets one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bidirect.config import MAX_INDIVIDUALS, ConfigError, StudyConfig, from_dict, load, validate

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if path.name.startswith("accelerate"):
        pytest.skip("an accelerate launch config, not a study")
    if "rungs" in (yaml.safe_load(path.read_text()) or {}):
        pytest.skip("a GPU ladder (scripts/ladder.py), not a study: tests/test_device_check.py loads it")
    if "sweep" in (yaml.safe_load(path.read_text()) or {}):  # a sweep file: every cell is a study
        from bidirect import sweep

        configs = [cell.config for cell in sweep.load(path).cells]
    else:
        configs = [load(path)]
    assert all(cfg.backbones and cfg.augmentations() for cfg in configs)


def test_quick_yaml_is_the_embedded_default():
    assert load(CONFIGS / "quick.yaml").to_dict() == validate(StudyConfig()).to_dict()


def test_paper_yaml_has_the_papers_setup():
    cfg = load(CONFIGS / "paper.yaml")
    assert (cfg.data.individuals, cfg.data.p_train) == (100_000, 0.5)
    assert (cfg.model.layers, cfg.model.heads, cfg.model.width, cfg.model.context) == (12, 12, 768, 512)
    assert (cfg.pretrain.lr, cfg.pretrain.weight_decay, cfg.pretrain.adam_eps) == (1e-3, 0.1, 1e-6)
    assert (cfg.pretrain.warmup_steps, cfg.pretrain.min_lr, cfg.pretrain.batch_size) == (1000, 1e-4, 96)
    assert cfg.pretrain.steps == 80_000 and cfg.finetune.batch_size == 48 and cfg.finetune.steps == 50_000
    gbert = next(b for b in cfg.backbones if b.name == "gbert")
    assert cfg.train_config(gbert, "pretrain").steps == 150_000
    assert cfg.train_config(gbert, "pretrain").lr == 3e-4


def test_yaml_scientific_notation_without_dot(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pretrain:\n  lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert load(path).pretrain.lr == 1e-3


BAD = [
    ({"data": {"individual": 10}}, "unknown key data.individual"),
    ({"nonsense": 1}, "unknown key nonsense"),
    ({"data": {"individuals": "many"}}, "data.individuals: expected an integer"),
    ({"data": {"individuals": -5}}, "data.individuals: must be > 0"),
    ({"data": {"individuals": 0}}, "data.individuals: must be > 0"),
    ({"data": {"individuals": MAX_INDIVIDUALS + 1}}, "distinct full names"),
    ({"data": {"p_train": 0}}, "data.p_train: must be strictly between 0 and 1"),
    ({"data": {"p_train": 1.0}}, "data.p_train"),
    ({"data": {"augmentations": ["multi0"]}}, "multi must be >= 1"),
    ({"data": {"augmentations": ["shuffle"]}}, "unknown augmentation 'shuffle'"),
    ({"data": {"augmentations": []}}, "data.augmentations"),
    ({"model": {"heads": 3}}, "model.heads: 3 does not divide model.width"),
    ({"model": {"layers": 0}}, "model.layers: must be > 0"),
    ({"model": {"width": -128}}, "model.width"),
    ({"backbones": ["gpt5"]}, "unknown backbone 'gpt5'; known: gpt2"),
    ({"backbones": ["gpt2", "gpt2"]}, "listed twice"),
    ({"backbones": [{"name": "gpt2", "pretrain": {"lr": -1}}]}, "backbones.gpt2.pretrain.lr: must be > 0"),
    ({"backbones": [{"name": "gpt2", "pretrain": {"lrr": 1}}]}, "unknown key backbones.gpt2.pretrain.lrr"),
    ({"pretrain": {"steps": 0}}, "pretrain.steps: must be > 0"),
    ({"pretrain": {"batch_size": 10, "grad_accum": 3}}, "pretrain.grad_accum: 3 does not divide"),
    ({"pretrain": {"min_lr": 1.0}}, "pretrain.min_lr"),
    ({"mixed_precision": "fp8"}, "allowed: 'auto', 'no', 'bf16', 'fp16'"),
    ({"pretrain": {"mixed_precision": "bf16"}}, "pretrain.mixed_precision: moved to mixed_precision (one precision"),
    ({"backbones": [{"name": "gpt2", "finetune": {"qa_share": 0.5}}]}, "backbones.gpt2.finetune.qa_share: moved to "
                                                                         "qa_share"),
    ({"masking": {"fill": "one_pass"}}, "masking.fill: moved to eval.fill"),
    ({"qa_share": 1.0}, "qa_share: must be strictly between 0 and 1"),
    ({"qa_share": float("nan")}, "qa_share: expected a finite number"),
    ({"protocol": "pretrain"}, "protocol: got 'pretrain'; allowed: 'pretrain_finetune', 'mixed'"),
    ({"tokenizer": {"kind": "sentencepiece"}}, "tokenizer.kind"),
    ({"masking": {"probability": 1.5}}, "masking.probability"),
    ({"compile": True}, "unknown key compile"),
    ({"pretrain": {"compile": "yes"}}, "pretrain.compile: expected true or false"),
    ([1, 2], "expected a mapping at the top level"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m for _, m in BAD])
def test_bad_config_named_clearly(raw, message):
    with pytest.raises(ConfigError, match=None) as err:
        from_dict(raw)
    assert message in str(err.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def test_backbone_overrides_merge():
    cfg = from_dict({"backbones": ["gpt2", {"name": "bert", "pretrain": {"lr": 3e-4}}]})
    assert cfg.train_config(cfg.backbones[0], "pretrain").lr == cfg.pretrain.lr
    assert cfg.train_config(cfg.backbones[1], "pretrain").lr == 3e-4
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["backbones"][1]["pretrain"] == {"lr": 3e-4}


def test_partial_section_keeps_that_sections_defaults():
    cfg = from_dict({"finetune": {"steps": 7}})
    default = StudyConfig().finetune
    assert cfg.finetune.steps == 7
    assert (cfg.finetune.lr, cfg.finetune.warmup_steps, cfg.finetune.weight_decay) == (
        default.lr, default.warmup_steps, default.weight_decay)


def test_a_run_folder_of_an_older_version_loads_its_moved_keys(tmp_path):
    """config.yaml files written before mixed_precision, qa_share and fill moved to the scope the code reads: the
    values that were read (the pretraining phase's) move, the copies that were ignored go; a study file with the
    old keys is refused."""
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump({
        "protocol": "mixed",
        "pretrain": {"steps": 10, "mixed_precision": "bf16", "qa_share": 0.6},
        "finetune": {"mixed_precision": "no", "qa_share": 0.9},
        "backbones": [{"name": "gbert", "pretrain": {"mixed_precision": "fp16"}}],
        "masking": {"probability": 0.2, "fill": "left_to_right"},
    }))
    cfg = load(old, saved=True)
    assert (cfg.mixed_precision, cfg.qa_share, cfg.eval.fill) == ("bf16", 0.6, "left_to_right")
    assert cfg.pretrain.steps == 10 and cfg.masking.probability == 0.2 and cfg.backbones[0].pretrain == {}
    with pytest.raises(ConfigError, match=r"(pretrain|finetune)\.mixed_precision: moved to mixed_precision"):
        load(old)
