"""MLM variants (masking.rate, masking.span): MLM-U's per-bio mask rate, attribute-span masking,
their validation, and masks that stay a function of (seed, epoch, row index)."""

from __future__ import annotations

import statistics

import pytest
import torch

from bidirect.config import ConfigError, MaskingConfig, from_dict
from bidirect.objectives import DIFFUSION_MIN_RATE, IGNORE, MaskedLM, encode_qa, tokenize_bios
from bidirect.tokenizer import value_token_span

AUG = "multi3+permute+fullname"  # 180 bios of the shared fixture


@pytest.mark.parametrize(("key", "allowed"), [("rate", "'fixed', 'uniform', 'diffusion'"),
                                              ("span", "'word', 'attribute'")])
def test_unknown_variant_named_with_allowed_values(key, allowed):
    with pytest.raises(ConfigError, match=f"masking.{key}: got 'bogus'; allowed: {allowed}"):
        from_dict({"masking": {key: "bogus"}})


def _examples(obj: MaskedLM, study_data, tokenizer, aug: str = AUG):
    bios = tokenize_bios(study_data.bios[aug], tokenizer, values=obj.values)
    examples = obj.bio_examples(bios, seed=0)
    return [{**examples[i], "index": i} for i in range(len(examples))]


@pytest.fixture
def qa_examples(study_data, tokenizer):
    def make(obj: MaskedLM) -> list[dict]:
        examples = obj.qa_examples(encode_qa(study_data.qa_train, tokenizer), seed=0)
        return [{**examples[i], "index": 10_000 + i} for i in range(8)]

    return make


def _word_shares(items, labels):
    shares = []
    for row, item in enumerate(items):
        chosen = {}
        for t, w in enumerate(item["word_ids"]):
            if w >= 0:
                chosen[w] = chosen.get(w, False) or labels[row][t] != IGNORE
        shares.append(sum(chosen.values()) / len(chosen))
    return shares


def test_uniform_rate_varies_per_bio_and_averages_a_half(study_data, tokenizer):
    obj = MaskedLM(tokenizer, 256, MaskingConfig(rate="uniform"), seed=0)
    items = _examples(obj, study_data, tokenizer)
    shares = _word_shares(items, obj.collate(items)["labels"].tolist())
    assert 0.4 < statistics.mean(shares) < 0.6
    assert statistics.stdev(shares) > 0.2 and min(shares) < 0.15 and max(shares) > 0.85
    fixed = MaskedLM(tokenizer, 256, MaskingConfig(), seed=0)
    assert statistics.mean(_word_shares(items, fixed.collate(items)["labels"].tolist())) < 0.25


def test_value_ids_are_the_value_tokens(study_data, tokenizer):
    """Only with values=True; the tokens of value a are exactly the answer's span in the bio."""
    assert "value_ids" not in tokenize_bios(study_data.bios["single"], tokenizer).column_names  # default unchanged
    bios = study_data.bios["single"]
    tokenized = tokenize_bios(bios, tokenizer, values=True)
    for row in range(10):
        offsets = tokenizer(bios[row]["text"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        value_ids = tokenized[row]["value_ids"]
        for a, (start, end) in enumerate(zip(bios[row]["value_start"], bios[row]["value_end"])):
            i, j = value_token_span(offsets, start, end)
            assert [t for t, v in enumerate(value_ids) if v == a] == list(range(i, j))


def test_attribute_span_masks_whole_values(study_data, tokenizer):
    obj = MaskedLM(tokenizer, 256, MaskingConfig(span="attribute"), seed=0)
    items = _examples(obj, study_data, tokenizer)
    batch = obj.collate(items)
    labels, inputs = batch["labels"].tolist(), batch["input_ids"].tolist()
    whole = partial = 0
    for row, item in enumerate(items):
        for a in range(6):
            tokens = [t for t, v in enumerate(item["value_ids"]) if v == a]
            chosen = [labels[row][t] != IGNORE for t in tokens]
            assert all(chosen) or not any(chosen)  # a masked token of a value: the whole value is masked
            if all(chosen):
                whole += 1
                masked = [inputs[row][t] == tokenizer.mask_token_id for t in tokens]
                assert all(masked) or not any(masked)  # one fate for the whole value
            partial += not any(chosen)
    assert whole > 0 and partial > 0
    # More values are masked than with word spans, where each word of a value is drawn alone.
    plain = MaskedLM(tokenizer, 256, MaskingConfig(), seed=0)
    plain_labels = plain.collate([{k: v for k, v in it.items() if k != "value_ids"} for it in items])["labels"]
    whole_plain = sum(all(plain_labels[row, t] != IGNORE for t, v in enumerate(it["value_ids"]) if v == a)
                      for row, it in enumerate(items) for a in range(6))
    assert whole > whole_plain


@pytest.mark.parametrize("masking", [MaskingConfig(rate="uniform"), MaskingConfig(span="attribute"),
                                     MaskingConfig(rate="uniform", span="attribute"),
                                     MaskingConfig(span="attribute", all_values=0.5)],
                         ids=["uniform", "attribute", "both", "all-values"])
def test_masks_are_a_function_of_seed_epoch_and_index(study_data, tokenizer, masking):
    obj = MaskedLM(tokenizer, 256, masking, seed=3)
    items = _examples(obj, study_data, tokenizer)[:16]
    first = obj.collate(items)
    again = MaskedLM(tokenizer, 256, masking, seed=3).collate(items)
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["labels"], again["labels"])
    reordered = obj.collate(items[::-1])  # not a function of the batch an example lands in
    assert torch.equal(reordered["labels"].flip(0), first["labels"])
    obj.set_epoch(1)
    assert not torch.equal(obj.collate(items)["labels"], first["labels"])
    other_seed = MaskedLM(tokenizer, 256, masking, seed=4).collate(items)
    assert not torch.equal(other_seed["labels"], first["labels"])


def _reference_masks(obj: MaskedLM, item: dict) -> tuple[list[int], list[int]]:
    """The masking rule one bio at a time in plain Python, as every committed masked run was trained with it;
    the batched tensor code must draw exactly these masks, so those runs stay reproducible."""
    ids, word_ids, value_ids = item["input_ids"], item["word_ids"], item.get("value_ids")
    rng = torch.Generator().manual_seed(hash((obj.seed, obj.epoch, item["index"])) & (2**63 - 1))
    p = obj.masking.probability
    if obj.masking.rate == "uniform":
        p = float(torch.rand((), generator=rng))
    words = sorted({w for w in word_ids if w >= 0})
    draws = torch.rand(2 * len(words) + 1, generator=rng).tolist()
    if obj.masking.all_values > 0 and float(torch.rand((), generator=rng)) < obj.masking.all_values:
        labels = [t if v >= 0 and t not in obj.special else IGNORE for t, v in zip(ids, value_ids)]
        return [obj.mask if label != IGNORE else t for t, label in zip(ids, labels)], labels
    chosen = {w for w, r in zip(words, draws) if r < p}
    if not chosen and words:
        chosen = {words[int(draws[-1] * len(words))]}
    fate = dict(zip(words, draws[len(words):]))
    unit = {w: w for w in words}
    if obj.masking.span == "attribute":
        first: dict[int, int] = {}
        for w, v in zip(word_ids, value_ids):
            if w >= 0 and v >= 0:
                unit[w] = first.setdefault(v, w)
        chosen = {unit[w] for w in chosen}
    out, labels = list(ids), [IGNORE] * len(ids)
    for t, w in enumerate(word_ids):
        if w < 0 or unit[w] not in chosen or ids[t] in obj.special:
            continue
        labels[t] = ids[t]
        r = fate[unit[w]]
        if r < obj.masking.replace_mask:
            out[t] = obj.mask
        elif r < obj.masking.replace_mask + obj.masking.replace_random:
            out[t] = int(torch.randint(len(obj.special), obj.vocab_size, (), generator=rng))
    return out, labels


@pytest.mark.parametrize("masking", [MaskingConfig(), MaskingConfig(rate="uniform"), MaskingConfig(span="attribute"),
                                     MaskingConfig(probability=0.4, span="attribute", replace_mask=0.5,
                                                   replace_random=0.4),
                                     MaskingConfig(probability=0.01, rate="uniform", span="attribute"),
                                     MaskingConfig(probability=0.4, span="attribute", all_values=0.3),
                                     MaskingConfig(all_values=0.5, replace_mask=0.5, replace_random=0.4)],
                         ids=["paper", "uniform", "attribute", "attribute-random", "rare", "all-values",
                              "all-values-words"])
def test_batched_masks_equal_the_rule_applied_bio_by_bio(study_data, tokenizer, masking):
    obj = MaskedLM(tokenizer, 256, masking, seed=7)
    obj.set_epoch(2)
    items = _examples(obj, study_data, tokenizer)[:64]
    batch = obj.collate(items)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids, labels = _reference_masks(obj, item)
        assert batch["input_ids"][row, :n].tolist() == ids and batch["labels"][row, :n].tolist() == labels, row
    assert (batch["labels"] != IGNORE).any() and (batch["input_ids"] == tokenizer.mask_token_id).any()


def test_diffusion_masks_as_mlm_u_and_weights_each_bio_by_one_over_its_rate(study_data, tokenizer, qa_examples):
    """rate: diffusion draws the same per-bio rate t and masks as MLM-U (uniform), and weights each labelled token
    of a bio by 1/max(t, DIFFUSION_MIN_RATE); QA tokens weigh 1; nothing else carries weight."""
    uniform = MaskedLM(tokenizer, 256, MaskingConfig(rate="uniform", span="attribute"), seed=5)
    diffusion = MaskedLM(tokenizer, 256, MaskingConfig(rate="diffusion", span="attribute"), seed=5)
    items = _examples(diffusion, study_data, tokenizer)[:12] + qa_examples(diffusion)[:4]
    a, b = uniform.collate(items), diffusion.collate(items)
    assert "weights" not in a and torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    labelled = b["labels"] != IGNORE
    assert (b["weights"][~labelled] == 0).all()
    for row, item in enumerate(items):
        if not item["word_ids"]:  # QA
            assert (b["weights"][row][labelled[row]] == 1).all() and labelled[row].any()
            continue
        t = float(torch.rand((), generator=diffusion._generator(item)))  # the bio's first draw is its rate
        assert torch.allclose(b["weights"][row][labelled[row]], torch.tensor(1 / max(t, DIFFUSION_MIN_RATE)))


def test_all_values_masks_every_value_and_nothing_else_in_its_share_of_bios(study_data, tokenizer):
    """A bio drawn for the all-values rule shows its name and template words and hides all six values; the other
    bios are masked exactly as without the rule (the extra draw comes after theirs)."""
    obj = MaskedLM(tokenizer, 256, MaskingConfig(probability=0.4, span="attribute", all_values=0.25), seed=0)
    items = _examples(obj, study_data, tokenizer)
    batch = obj.collate(items)
    plain = MaskedLM(tokenizer, 256, MaskingConfig(probability=0.4, span="attribute"), seed=0).collate(items)
    hidden = 0
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        values = [t for t, v in enumerate(item["value_ids"]) if v >= 0]
        labelled = (batch["labels"][row, :n] != IGNORE).nonzero().flatten().tolist()
        if labelled == values:
            assert set(item["value_ids"]) - {-1} == set(range(6))
            assert all(batch["input_ids"][row, t] == tokenizer.mask_token_id for t in values)
            assert batch["input_ids"][row, :n][[t for t in range(n) if t not in values]].tolist() == \
                [item["input_ids"][t] for t in range(n) if t not in values]
            hidden += 1
        else:
            assert torch.equal(batch["labels"][row], plain["labels"][row]), row
    assert 0.15 < hidden / len(items) < 0.35  # 180 bios at 0.25
    none = MaskedLM(tokenizer, 256, MaskingConfig(probability=0.4, span="attribute", all_values=0.0), seed=0)
    assert torch.equal(none.collate(items)["input_ids"], plain["input_ids"])


def test_all_values_is_a_share(study_data):
    with pytest.raises(ConfigError, match="masking.all_values: a share of bios, from 0 to 1, got 1.5"):
        from_dict({"masking": {"all_values": 1.5}})
