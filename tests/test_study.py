"""study.py's checks before anything trains: every document fits the context, and a
run reuses another's pretraining only where everything pretraining reads is the same. A study end to end:
test_faults.py, test_cli.py, test_api.py."""

from __future__ import annotations

import pytest
import yaml
from tiny import TINY, tiny_config

from bidirect import study
from bidirect.config import Augmentation, ConfigError, DataConfig, MaskingConfig, finetune_only, from_dict
from bidirect.data.generate import generate
from bidirect.tokenizer import qa_ids, qa_text, train_tokenizer


@pytest.fixture(scope="module")
def small():
    data = generate(DataConfig(individuals=40, p_train=0.5), [Augmentation.parse("single")], seed=0)
    qa = [qa_text(q, a) for q, a in zip(data.qa_train["question"], data.qa_train["answer"], strict=True)]
    return data, train_tokenizer(list(data.bios["single"]["text"]) + qa, "word")


def _longest_qa(data, tokenizer):
    longest = 0
    for qa in data.qa_sets().values():
        questions, answers = qa_ids(tokenizer, qa["question"], qa["answer"])
        longest = max(longest, *(len(q) + len(a) for q, a in zip(questions, answers)))
    return longest


def test_the_context_must_hold_the_longest_document_and_its_end_of_text(small):
    data, tokenizer = small
    bios = max(len(ids) for ids in tokenizer(list(data.bios["single"]["text"]), add_special_tokens=False)["input_ids"])
    need = max(bios, _longest_qa(data, tokenizer)) + 1  # by hand: the longest document, then end-of-text
    base = {"data": {"individuals": 40, "p_train": 0.5, "augmentations": ["single"]}, "backbones": ["gbert"]}
    study.check_context(from_dict({**base, "model": {"context": need}}), data, tokenizer)
    with pytest.raises(ConfigError, match=f"model.context: {need - 1} tokens is too short .* at least {need}"):
        study.check_context(from_dict({**base, "model": {"context": need - 1}}), data, tokenizer)


def test_fine_tuning_only_fields_are_marked_on_the_field():
    assert finetune_only(MaskingConfig) == {"answer", "window_pad", "window_rate"}


def test_a_run_reuses_pretraining_whatever_its_fine_tuning(finished, tmp_path):
    _, run = finished
    saved = yaml.safe_load((run / "config.yaml").read_text())
    same = from_dict({**saved, "finetune": {**saved.get("finetune", {}), "steps": 5}, "name": "another"})
    assert [(aug, b.name) for aug, b in study.check_reuse(same, run)] == [("single", "gpt2-rope")]
    other = from_dict({**saved, "masking": {**saved.get("masking", {}), "probability": 0.3}})
    with pytest.raises(ConfigError, match=r"its masking.probability is 0.15, this study's 0.3"):
        study.check_reuse(other, run)


def test_masked_qa_layout_is_no_pretraining_setting():
    cfg = from_dict(tiny_config(backbones=["gbert"]))
    window = from_dict(tiny_config(backbones=["gbert"], masking={**TINY["masking"], "answer": "window",
                                                                  "window_pad": "eos", "window_rate": "uniform"},
                                   eval={"masked_length": "window"}))
    assert study._pretraining(cfg) == study._pretraining(window)
    assert study._pretraining(cfg) != study._pretraining(from_dict(tiny_config(backbones=["gbert"],
                                                                               masking__all_values=0.25)))
