"""What moves a published number (issue 25): scoring against adversarial fakes (confident at a wrong length; writes
the answer and goes on), baselines on data where the wrong split or the wrong grouping gives another answer, a mean
over attributes with unequal items, intervals whose resampling unit shows, the leak guard at the end of a long
stream, whole-word and whole-value masking checked against the text, capacity's bits by hand.

Every expected value is worked out by hand or from the text, never from the code under test. `scripts/mutants.py`
makes, one at a time, the realistic bugs these tests are here to catch (docs/reliability.md lists them)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn

from bidirect.analysis.capacity import FIELDS, bits_stored, log2_comb
from bidirect.analysis.probe import probe_inputs
from bidirect.config import Augmentation, DataConfig, EvalConfig, MaskingConfig
from bidirect.data.generate import generate
from bidirect.evaluate import (
    Item,
    _accuracy,
    majority_baseline,
    paired_difference,
    person_intervals,
    qa_items,
    score_items,
)
from bidirect.objectives import IGNORE, MaskedLM, tokenize_bios
from bidirect.results import ATTRIBUTES
from bidirect.study import leak_check
from bidirect.tokenizer import answer_ids, question_ids, train_tokenizer

CPU = torch.device("cpu")


class Table(nn.Module):
    """A fake model: at each position of each row, the logits ``rule(row, position)`` gives ({token: logit}, 0
    for every other token), so that the log-probabilities a test expects are worked out by hand."""

    def __init__(self, vocab: int, rule):
        super().__init__()
        self.vocab, self.rule = vocab, rule
        self.anchor = nn.Parameter(torch.zeros(1))  # a device for the evaluator to find

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                for token, value in self.rule(row, t).items():
                    logits[b, t, token] = value
        return SimpleNamespace(logits=logits)


def _logp(logit: float, vocab: int) -> float:
    """log-probability of the one token at ``logit`` when every other token of ``vocab`` is at 0."""
    return logit - math.log(math.exp(logit) + vocab - 1)


@pytest.fixture(scope="module")
def question(study_data, tokenizer):
    """A P_test question whose answer has at least two tokens, the answer's ids, and a token not in them."""
    for q, a, attribute, person in zip(*(study_data.qa_test[c] for c in ("question", "answer", "attribute", "id"))):
        ids = answer_ids(tokenizer, a)
        if len(ids) >= 2:
            wrong = next(t for t in range(len(tokenizer.all_special_ids), len(tokenizer)) if t not in ids)
            return SimpleNamespace(q=q, a=a, ids=ids, attribute=ATTRIBUTES.index(attribute), person=person,
                                   wrong=wrong)
    raise AssertionError("no P_test answer of two tokens or more")


def _scored(model, kind, tokenizer, items, rule, **kwargs):
    return score_items(model, kind, tokenizer, items, True, rule, EvalConfig(fill="one_pass"), CPU, False, "", **kwargs)


# --------------------------------------------------------------------------- scoring: adversarial fakes


def test_a_model_confident_at_a_wrong_length_separates_the_length_rules(tokenizer, question):
    """One mask: the wrong token at logit 12 (log-probability -0.004). The true number of masks: the true tokens at
    logit 3 (-3.4 each). Any other length: nothing (-6.4). The best mean log-probability keeps the wrong one-token
    answer; a prior that makes one token 90 times less likely than the true length keeps the true answer (-3.4 - 0.1
    against -0.004 - 4.6); told the length, the model is right."""
    vocab, mask, n = len(tokenizer), tokenizer.mask_token_id, len(question.ids)
    start = len(question_ids(tokenizer, question.q))

    def rule(row, t):
        masks = sum(1 for x in row if x == mask)
        if row[t] != mask or row[start + masks] != tokenizer.eos_token_id:  # as fine-tuned: masks, end-of-text
            return {}
        if masks == 1:
            return {question.wrong: 12.0}
        return {question.ids[t - start]: 3.0} if masks == n else {}

    assert _logp(3.0, vocab) + math.log(0.9) > _logp(12.0, vocab) + math.log(0.01) > _logp(3.0, vocab) - 6
    model = Table(vocab, rule)
    items = qa_items(tokenizer, [question.q], [question.a], [question.attribute], "masked", [question.person])
    prior = {question.attribute: {k: math.log(0.9 if k == n else 0.01) for k in range(1, n + 2)}}
    free = _scored(model, "masked", tokenizer, items, "free", longest=n + 1, prior=prior, cache={})
    told = _scored(model, "masked", tokenizer, items, "given", longest=n + 1, prior=prior, cache={})
    with_prior = _scored(model, "masked", tokenizer, items, "prior", longest=n + 1, prior=prior, cache={})
    assert free == ([False], [1])
    assert with_prior == ([True], [n])
    assert told == ([True], [n])


def test_the_length_rule_compares_mean_log_probabilities_not_sums(tokenizer, question):
    """The true length reads every true token at logit 7 (-0.44 each with the 600 tokens); one mask reads the wrong
    token at logit 6.5 (-0.64). Per token the true answer is likelier, so the rule keeps it; summed over its two
    tokens or more (-0.87 or less) it would lose."""
    vocab, mask, n = len(tokenizer), tokenizer.mask_token_id, len(question.ids)
    start = len(question_ids(tokenizer, question.q))

    def rule(row, t):
        masks = sum(1 for x in row if x == mask)
        if row[t] != mask:
            return {}
        if masks == 1:
            return {question.wrong: 6.5}
        return {question.ids[t - start]: 7.0} if masks == n else {}

    assert vocab == 600 and _logp(7.0, vocab) > _logp(6.5, vocab) > 2 * _logp(7.0, vocab)
    items = qa_items(tokenizer, [question.q], [question.a], [question.attribute], "masked", [question.person])
    assert _scored(Table(vocab, rule), "masked", tokenizer, items, "free", longest=n + 1, cache={}) == ([True], [n])


def test_two_lengths_equally_likely_keep_the_shorter(tokenizer, question):
    """Every length reads the true answer's first tokens at the same logit: equal mean log-probabilities, and the
    rule keeps the shortest candidate (one token, which is wrong for a longer answer)."""
    vocab, mask = len(tokenizer), tokenizer.mask_token_id
    start = len(question_ids(tokenizer, question.q))
    model = Table(vocab, lambda row, t: {question.ids[min(t - start, len(question.ids) - 1)]: 5.0}
                  if row[t] == mask else {})
    items = qa_items(tokenizer, [question.q], [question.a], [question.attribute], "masked", [question.person])
    assert _scored(model, "masked", tokenizer, items, "free", longest=len(question.ids), cache={}) == ([False], [1])


def test_a_causal_answer_counts_only_if_it_stops(tokenizer, question):
    """Teacher forcing: a model that predicts each next token of the row is right; one that writes the whole answer
    and then goes on (its prediction at the answer's end is not end-of-text) is wrong, as greedy decoding would
    never stop after the answer."""
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    items = qa_items(tokenizer, [question.q], [question.a], [question.attribute], "causal", [question.person])
    last = len(items[0].ids) - 2  # the position whose next token is end-of-text

    def echo(row, t):
        return {row[t + 1]: 5.0} if t + 1 < len(row) else {}

    def goes_on(row, t):
        return {question.wrong: 5.0} if t == last else echo(row, t)

    assert items[0].ids[-1] == eos
    assert _scored(Table(vocab, echo), "causal", tokenizer, items, None)[0] == [True]
    assert _scored(Table(vocab, goes_on), "causal", tokenizer, items, None)[0] == [False]


@pytest.mark.parametrize("stops,window_right", [(True, True), (False, False)])
def test_the_window_rule_asks_for_the_stop_and_the_told_rule_does_not(tokenizer, question, stops, window_right):
    """An answer window three longer than the answer, filled with the answer and then (``stops``) end-of-text and
    junk, or junk only. The window rule is right only when the model stopped, and then chose the true length; told
    the length, the model is right either way (the stop is not asked)."""
    vocab, eos, mask = len(tokenizer), tokenizer.eos_token_id, tokenizer.mask_token_id
    n, start = len(question.ids), len(question_ids(tokenizer, question.q))
    window = n + 3

    def rule(row, t):
        if row[t] != mask:
            return {}
        k = t - start
        return {question.ids[k]: 5.0} if k < n else {eos if k == n and stops else question.wrong: 5.0}

    items = qa_items(tokenizer, [question.q], [question.a], [question.attribute], "masked", [question.person],
                     window=window)
    assert items[0].ids[start:] == [mask] * window and items[0].want == question.ids + [eos]
    model = Table(vocab, rule)
    assert _scored(model, "masked", tokenizer, items, "window") == ([window_right], [n if stops else None])
    assert _scored(model, "masked", tokenizer, items, "given") == ([True], [n])


# --------------------------------------------------------------------------- baselines and aggregates


def _people(**columns) -> SimpleNamespace:
    """A study's individuals: every attribute "x" unless given; ``split`` says who is in which split."""
    n = len(columns["split"])
    table = {"id": list(range(n)), "split": columns["split"]}
    table.update({a: columns.get(a, ["x"] * n) for a in ATTRIBUTES})
    return SimpleNamespace(individuals=Dataset.from_dict(table))


def test_the_majority_baseline_counts_p_train_only():
    """P_train's most common birth city is Austin (2 of 3); P_val's four would make it Boston if pooled. Both P_test
    people were born in Austin: the baseline is right on both (every other attribute is one value everywhere)."""
    split = ["train"] * 3 + ["val"] * 4 + ["test"] * 2
    data = _people(split=split, birth_city=["Austin", "Austin", "Boston"] + ["Boston"] * 4 + ["Austin", "Austin"])
    got = majority_baseline(data)
    assert got["birth_city"] == 1.0 and got["mean"] == 1.0


def test_the_told_length_baseline_groups_values_by_tokens_not_characters():
    """"Wolfsburg" and "Sao Paulo" both have nine characters; in tokens one is one word and the other two. P_train:
    Wolfsburg twice, Sao Paulo once; P_test: Sao Paulo. Told the answer is two tokens, the baseline answers Sao
    Paulo (right); grouped by characters it would answer Wolfsburg. Without the length it answers Wolfsburg."""
    cities = ["Wolfsburg", "Wolfsburg", "Sao Paulo", "Sao Paulo"]
    tokenizer = train_tokenizer(["What is x? " + c for c in cities] + ["x"], "word")
    assert len(answer_ids(tokenizer, "Sao Paulo")) == 2 and len(answer_ids(tokenizer, "Wolfsburg")) == 1
    data = _people(split=["train"] * 3 + ["test"], birth_city=cities)
    assert majority_baseline(data, tokenizer)["birth_city"] == 1.0
    assert majority_baseline(data)["birth_city"] == 0.0


def _item(attribute: int, person: int) -> Item:
    return Item(ids=[0], where=[0], want=[0], attribute=attribute, person=person, tokens=1)


def test_a_level_mean_is_over_attributes_not_items():
    """One birth-date item right, three birth-city items wrong, nothing else: per attribute 1.0 and 0.0, the mean
    0.5 (over items it would be 0.25), the other attributes null."""
    items = [_item(0, 0), _item(1, 1), _item(1, 2), _item(1, 3)]
    got = _accuracy(items, [True, False, False, False])
    assert (got["birth_date"], got["birth_city"], got["mean"], got["n"], got["people"]) == (1.0, 0.0, 0.5, 4, 4)
    assert all(got[a] is None for a in ATTRIBUTES[2:])


# --------------------------------------------------------------------------- intervals


def test_the_interval_resamples_people_with_all_their_items():
    """Person 0: ten birth dates right; person 1: one wrong. Resampling people, a quarter of the resamples draw
    person 1 twice (accuracy 0) and a quarter person 0 twice (1): the interval is [0, 1]. Resampling the eleven
    items instead would never reach 0."""
    items = [_item(0, 0)] * 10 + [_item(0, 1)]
    ci = person_intervals(items, [True] * 10 + [False], ATTRIBUTES)
    assert ci["birth_date"] == [0.0, 1.0] and ci["mean"] == [0.0, 1.0]
    assert ci["birth_city"] is None


def test_a_paired_difference_resamples_the_same_people_for_both():
    """Two backbones that agree on every person but one, where the first has one more birth date right: the
    difference is 1/50 on one attribute, 1/300 over six. A resample of the same people that draws person 7 w times
    differs by w/300, and w is about Poisson(1): 0 with probability 0.37, at most 3 with 0.98, so the interval is
    [0, 3/300]. Resampling the two independently would reach below 0: the people's accuracies vary."""
    rng = np.random.default_rng(0)
    hits = rng.integers(0, 2, size=(50, 6)).tolist()
    hits[7][0] = 1
    second = [list(row) for row in hits]
    second[7][0] = 0
    table = {"id": list(range(50)), "items": [[1] * 6] * 50}
    got = paired_difference({"per_person": {**table, "hits": hits}}, {"per_person": {**table, "hits": second}})
    assert got["people"] == 50 and got["difference"] == pytest.approx(1 / 300)
    assert got["ci95"] == pytest.approx([0.0, 3 / 300])


# --------------------------------------------------------------------------- the leak guard


def test_the_leak_guard_reads_the_whole_stream(study_data, tokenizer):
    """A stream of about 4,000 bios with one P_test question and its answer as the very last document: found."""
    bios = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for aug in study_data.bios for t in study_data.bios[aug]["text"]]
    rows = (bios * (4000 // len(bios) + 1))[:4000]
    clean = leak_check(Dataset.from_dict({"input_ids": rows}), tokenizer, study_data)
    assert clean["leaked"] == 0 and clean["qa_documents_checked"] == 0
    q, a = study_data.qa_test["question"][-1], study_data.qa_test["answer"][-1]
    leak = tokenizer(f"{q} {a}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    got = leak_check(Dataset.from_dict({"input_ids": rows + [leak]}), tokenizer, study_data)
    assert got["leaked"] == 1 and got["qa_documents_checked"] == 1 and got["examples"] == [q]


# --------------------------------------------------------------------------- masking, against the text


def _masked_bios(study_data, tokenizer, span: str, probability: float):
    """Masked labels of the single bios, and each bio's text and token offsets read from the text itself."""
    bios = study_data.bios["single"]
    tokenized = tokenize_bios(bios, tokenizer, values=span == "attribute")
    objective = MaskedLM(tokenizer, 512, MaskingConfig(probability=probability, span=span), seed=0)
    items = [{**row, "index": i} for i, row in enumerate(tokenized)]
    longest = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), longest), tokenizer.pad_token_id)
    for i, it in enumerate(items):
        ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
    _, labels, _ = objective.mask_bios(ids, items)
    offsets = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
               for t in bios["text"]]
    return bios, labels, offsets


def _tokens_in(offsets, start: int, end: int) -> list[int]:
    return [k for k, (s, e) in enumerate(offsets) if s < end and e > start]


def test_whole_word_masking_masks_every_token_of_a_word_it_chose(study_data, tokenizer):
    """Words read from the text (runs of letters, runs of digits): each is labelled whole or not at all, and some
    words of several tokens were chosen, so that the test can see a word split."""
    bios, labels, offsets = _masked_bios(study_data, tokenizer, "word", 0.3)
    split_words = 0
    for row, (text, offs) in enumerate(zip(bios["text"], offsets, strict=True)):
        for word in re.finditer(r"[A-Za-z]+|[0-9]+", text):
            tokens = _tokens_in(offs, *word.span())
            chosen = [bool(labels[row, k] != IGNORE) for k in tokens]
            assert len(set(chosen)) == 1, (text[word.start(): word.end()], chosen)
            split_words += len(tokens) > 1 and chosen[0]
    assert split_words > 20


def test_attribute_masking_masks_every_token_of_a_value_it_chose(study_data, tokenizer):
    """Values read from the bios' character spans: each is labelled whole or not at all, and values were chosen."""
    bios, labels, offsets = _masked_bios(study_data, tokenizer, "attribute", 0.4)
    chosen_values = 0
    for row, (offs, starts, ends) in enumerate(zip(offsets, bios["value_start"], bios["value_end"], strict=True)):
        for start, end in zip(starts, ends, strict=True):
            chosen = {bool(labels[row, k] != IGNORE) for k in _tokens_in(offs, start, end)}
            assert len(chosen) == 1, (bios["text"][row][start:end], chosen)
            chosen_values += chosen == {True}
    assert chosen_values > 30


# --------------------------------------------------------------------------- the probe's split


def test_the_probe_scores_p_test_and_never_p_val(tokenizer):
    """With a P_val, the probe trains on P_train's people and scores P_test's: P_val's are in neither."""
    data = generate(DataConfig(individuals=30, p_train=0.5, p_val=0.2), [Augmentation.parse("single")], seed=0)
    split = data.individuals["split"]
    assert "val" in split
    for mode in ("P", "Q"):
        inputs = probe_inputs(mode, tokenizer, data, "single", "causal")
        assert inputs.train_rows == [p for p, s in enumerate(split) if s == "train"]
        assert inputs.test_rows == [p for p, s in enumerate(split) if s == "test"]


# --------------------------------------------------------------------------- capacity, by hand


def test_log2_comb_by_hand():
    assert log2_comb(5, 2) == pytest.approx(math.log2(10))
    assert log2_comb(10, 3) == pytest.approx(math.log2(120))
    assert log2_comb(7, 0) == pytest.approx(0.0, abs=1e-9)


def test_bits_stored_clamps_each_person_before_summing():
    """Two people, every field of entropy 4 bits but the company's city (0): person 0's loss is 1 bit a field
    (3 bits stored each), person 1's 5 (nothing stored, not -1). Per field 3 bits, 2 in aggregate (8 - 6); the
    company's city stores nothing either way."""
    entropy = {f: (0.0 if f == "company_city" else 4.0) for f in FIELDS}
    losses = torch.tensor([[1.0] * len(FIELDS), [5.0] * len(FIELDS)])
    got = bits_stored(losses, entropy)
    assert got["fields"]["birth_date"] == {"entropy_bits": 4.0, "loss_bits": 3.0, "bits": 3.0, "aggregate_bits": 2.0}
    assert got["fields"]["company_city"]["bits"] == 0.0 and got["fields"]["company_city"]["aggregate_bits"] == 0.0
    assert (got["bits_attributes"], got["bits_names"], got["bits"]) == (15.0, 3.0, 18.0)
    assert (got["aggregate_bits"], got["max_bits"], got["individuals"]) == (12.0, 48.0, 2)
