"""Saved models work in the tools people already use: transformers' pipelines load them from the run
folder by path (gbert through its registered masked-LM identity) and answer P_train questions as the
package's evaluator scored them."""

from __future__ import annotations

import pytest
from transformers import pipeline

import bidirect.api as bd
from bidirect.data.generate import StudyData
from bidirect.rundir import read_tokenizer as run_tokenizer
from bidirect.tokenizer import EOS, MASK, answer_ids

# Small enough to fine-tune in seconds, long enough that most P_train answers are learned.
STUDY = {
    "name": "pipelines",
    "data": {"individuals": 12, "p_val": 0.0, "augmentations": ["single"]},
    "tokenizer": {"kind": "word"},
    "model": {"layers": 1, "heads": 2, "width": 64, "mlp_width": 128, "context": 128},
    "backbones": ["gpt2-rope", {"name": "gbert", "finetune": {"steps": 300, "batch_size": 12, "lr": 3e-3,
                                                               "min_lr": 3e-4}}],
    "pretrain": {"steps": 20, "batch_size": 4, "warmup_steps": 1, "log_every": 10},
    "finetune": {"steps": 150, "batch_size": 4, "lr": 1e-2, "min_lr": 1e-3, "log_every": 50},
    "masking": {"probability": 0.15, "span": "word"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pipelines") / "run"
    results = bd.run(STUDY, run)
    return run, results["results"]["single"], run_tokenizer(run), StudyData.load(run / "data").qa_train


@pytest.mark.slow
def test_causal_model_answers_in_a_text_generation_pipeline(trained):
    run, results, tokenizer, qa = trained
    generate = pipeline("text-generation", model=str(run / "models/single/gpt2-rope/finetune/model"),
                        tokenizer=tokenizer)
    right = 0
    for question, answer in zip(qa["question"], qa["answer"]):
        steps = len(answer_ids(tokenizer, answer)) + 1  # the answer, then end-of-text
        out = generate(question, max_new_tokens=steps, do_sample=False, return_full_text=False)
        right += out[0]["generated_text"].strip() == answer
    assert right > 0  # it learned some, and the pipeline finds exactly the ones the evaluator counted
    assert right / len(qa) == pytest.approx(results["gpt2-rope"]["qa_train"]["mean"])


@pytest.mark.slow
def test_gbert_and_its_masks_in_a_fill_mask_pipeline(trained):
    run, results, tokenizer, qa = trained
    fill = pipeline("fill-mask", model=str(run / "models/single/gbert/finetune/model"), tokenizer=tokenizer, top_k=1)
    right = 0
    for question, answer in zip(qa["question"], qa["answer"]):
        n = len(answer_ids(tokenizer, answer))  # the paper's rule: a mask per answer token, then end-of-text
        out = fill(question + MASK * n + EOS)
        best = [masks[0]["token"] for masks in out] if n > 1 else [out[0]["token"]]
        right += tokenizer.decode(best).strip() == answer
    assert right > 0
    assert right / len(qa) == pytest.approx(results["gbert"]["qa_train_given"]["mean"])
