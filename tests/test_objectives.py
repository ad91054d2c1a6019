"""Objectives: the labels say exactly what each backbone is trained to predict."""

from __future__ import annotations

import torch

from bidirect.config import MaskingConfig
from bidirect.objectives import IGNORE, STATIC_BUCKET, CausalLM, MaskedLM, encode_qa, tokenize_bios


def test_causal_packing_restarts_positions_and_shifts_labels(study_data, tokenizer):
    obj = CausalLM(tokenizer, context=256)
    windows = obj.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer), seed=0)
    eos = tokenizer.eos_token_id
    n_docs = 0
    for ids, labels, pos in zip(windows["input_ids"], windows["labels"], windows["position_ids"]):
        assert len(ids) <= 256 and len(ids) == len(labels) == len(pos)
        for t in range(len(ids) - 1):
            if pos[t + 1] != 0:
                assert labels[t] == ids[t + 1]  # next token, inside a document
        n_docs += sum(1 for x in ids if x == eos)
        assert pos[0] == 0 and ids[-1] == eos  # windows hold whole documents
    assert n_docs == len(study_data.bios["single"])  # every bio once, none split


def test_causal_qa_loss_on_answer_tokens_only(study_data, tokenizer):
    obj = CausalLM(tokenizer, context=128)
    qa = encode_qa(study_data.qa_train, tokenizer)
    windows = obj.qa_examples(qa, seed=0)
    expected = sum(len(a) + 1 for a in qa["answer_ids"])  # answer tokens and the eos after each
    got = sum(sum(1 for x in labels if x != IGNORE) for labels in windows["labels"])
    assert got == expected
    ids, labels = windows[0]["input_ids"], windows[0]["labels"]
    first = qa.shuffle(seed=0, keep_in_memory=True)[0]
    q, a = first["question_ids"], first["answer_ids"]
    assert ids[: len(q) + len(a) + 1] == q + a + [tokenizer.eos_token_id]
    assert labels[: len(q) - 1] == [IGNORE] * (len(q) - 1)
    assert labels[len(q) - 1 : len(q) + len(a) - 1] == a  # position t predicts token t+1
    assert labels[len(q) + len(a) - 1] == tokenizer.eos_token_id


def test_pad_is_not_eos_and_never_labelled(study_data, tokenizer):
    """Pitfall: labels unmasked at padding, or pad == eos so eos is never learned."""
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    obj = CausalLM(tokenizer, context=128)
    windows = obj.qa_examples(encode_qa(study_data.qa_train, tokenizer), seed=0)
    batch = obj.collate([windows[0], windows[len(windows) - 1]])
    pad = batch["input_ids"] == tokenizer.pad_token_id
    assert pad.any() and (batch["labels"][pad] == IGNORE).all()
    assert (batch["labels"] == tokenizer.eos_token_id).any()  # eos is a target


def test_whole_word_masking(study_data, tokenizer):
    torch.manual_seed(0)
    obj = MaskedLM(tokenizer, 256, MaskingConfig(probability=0.15))
    examples = obj.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer), seed=0)
    items = [examples[i] for i in range(len(examples))]
    batch = obj.collate(items)
    words_total = words_chosen = 0
    for row, item in enumerate(items):
        labels = batch["labels"][row].tolist()
        word_ids = item["word_ids"]
        chosen = {}
        for t, w in enumerate(word_ids):
            chosen.setdefault(w, set()).add(labels[t] != IGNORE)
        assert all(len(v) == 1 for v in chosen.values())  # a word is chosen whole or not at all
        words_total += len(chosen)
        words_chosen += sum(1 for v in chosen.values() if True in v)
        n = len(item["input_ids"])
        assert (batch["labels"][row, n:] == IGNORE).all()  # never padding
        assert (batch["attention_mask"][row, n:] == 0).all() and (batch["attention_mask"][row, :n] == 1).all()
    assert 0.10 < words_chosen / words_total < 0.22
    labelled = batch["labels"] != IGNORE
    masked = batch["input_ids"][labelled] == tokenizer.mask_token_id
    assert 0.7 < masked.float().mean() < 0.9  # 80% become mask tokens


def test_masking_changes_every_batch(study_data, tokenizer):
    obj = MaskedLM(tokenizer, 256, MaskingConfig())
    examples = obj.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer), seed=0)
    items = [examples[i] for i in range(8)]
    assert not torch.equal(obj.collate(items)["labels"], obj.collate(items)["labels"])


def test_masked_qa_masks_the_answer_length(study_data, tokenizer):
    obj = MaskedLM(tokenizer, 256, MaskingConfig())
    qa = encode_qa(study_data.qa_train, tokenizer)
    examples = obj.qa_examples(qa, seed=0)
    batch = obj.collate([examples[i] for i in range(4)])
    for row in range(4):
        ex = examples[row]
        n_mask = sum(1 for x in ex["input_ids"] if x == tokenizer.mask_token_id)
        labelled = (batch["labels"][row] != IGNORE)
        assert labelled.sum() == n_mask > 0
        assert (batch["input_ids"][row][labelled] == tokenizer.mask_token_id).all()
    answers = {(tuple(q), tuple(a)) for q, a in zip(qa["question_ids"], qa["answer_ids"])}
    ex = examples[0]
    q = ex["input_ids"][: ex["input_ids"].index(tokenizer.mask_token_id)]
    a = [x for x in ex["labels"] if x != IGNORE]
    assert (tuple(q), tuple(a)) in answers


def test_static_shapes_pad_to_a_few_lengths_and_change_nothing_else(study_data, tokenizer):
    """For torch.compile: batches padded to a multiple of STATIC_BUCKET (at most the context); the extra columns
    are padding, never labelled, and the real columns are the dynamic batch's."""
    for obj in (CausalLM(tokenizer, 256), MaskedLM(tokenizer, 200, MaskingConfig(), seed=1)):
        examples = obj.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer), seed=0)
        static = obj.with_static_shapes()
        assert not obj.static and static.static
        lengths = set()
        for start in range(0, len(examples) - 3, 4):
            items = [{**examples[i], "index": i} for i in range(start, start + 4)]
            dynamic, padded = obj.collate(items), static.collate(items)
            n = dynamic["input_ids"].shape[1]
            lengths.add(padded["input_ids"].shape[1])
            assert padded["input_ids"].shape[1] in (min(obj.context, -(-n // STATIC_BUCKET) * STATIC_BUCKET),)
            for key in dynamic:
                assert torch.equal(padded[key][..., :n] if key != "index" else padded[key], dynamic[key]), key
            assert (padded["labels"][:, n:] == IGNORE).all()
            assert (padded["input_ids"][:, n:] == tokenizer.pad_token_id).all()
        assert len(lengths) <= 2, lengths
