"""How a masked model chooses its answer's length (issue 23): the learned answer window (training targets,
one-pass decoding), the length prior beside the best-log-probability rule, the refused configurations, and the
share of answers given at the true length. Expected values are worked out by hand or from the data's text, never
from the code under test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml
from datasets import Dataset
from tiny import single_study

from bidirect.cli import main
from bidirect.config import Augmentation, ConfigError, DataConfig, EvalConfig, MaskingConfig, from_dict
from bidirect.data.generate import generate
from bidirect.evaluate import (
    Item,
    evaluate_model,
    length_prior,
    max_answer_tokens,
    score_items,
)
from bidirect.objectives import IGNORE, MaskedLM, encode_qa
from bidirect.protocol import MEMORIZATION_LEVELS
from bidirect.rundir import read_results
from bidirect.tokenizer import answer_ids, qa_text, question_ids, train_tokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def study():
    data = generate(DataConfig(individuals=40, p_train=0.5), [Augmentation.parse("single")], seed=0)
    qa = [qa_text(q, a) for q, a in zip(data.qa_train["question"], data.qa_train["answer"], strict=True)]
    return data, train_tokenizer(list(data.bios["single"]["text"]) + qa, "word")


def _objective(tokenizer, **masking) -> MaskedLM:
    return MaskedLM(tokenizer, 256, MaskingConfig(**masking), seed=0)


def _qa(study_data, n=12) -> Dataset:
    return study_data.qa_train.select(range(n))


# --------------------------------------------------------------------------- training targets


@pytest.mark.parametrize("pad", ["eos", "pad", "none"])
def test_window_targets_are_the_answer_then_end_of_text_then_the_filler(study_data, tokenizer, pad):
    qa = _qa(study_data)
    objective = _objective(tokenizer, answer="window", window_pad=pad)
    examples = objective.qa_examples(encode_qa(qa, tokenizer), seed=0)
    answers = [answer_ids(tokenizer, a) for a in qa["answer"]]
    window = max(len(a) for a in answers) + 1  # by hand: the longest answer of the stream and its end-of-text
    filler = {"eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id, "none": IGNORE}[pad]
    by_question = {tuple(question_ids(tokenizer, q)): a for q, a in zip(qa["question"], answers, strict=True)}
    seen = 0
    for ids, labels in zip(examples["input_ids"], examples["labels"], strict=True):
        q = ids[: len(ids) - window]
        answer = by_question[tuple(q)]
        assert ids[len(q):] == [tokenizer.mask_token_id] * window
        assert labels == [IGNORE] * len(q) + answer + [tokenizer.eos_token_id] + [filler] * (window - len(answer) - 1)
        seen += 1
    assert seen == len(qa)
    assert len({len(a) for a in answers}) > 1, "answers of one length could not show the window's filler"


def test_exact_rule_is_unchanged_by_the_window_fields(study_data, tokenizer):
    qa = _qa(study_data)
    examples = _objective(tokenizer).qa_examples(encode_qa(qa, tokenizer), seed=0)
    for ids, labels in zip(examples["input_ids"], examples["labels"], strict=True):
        n = sum(x != IGNORE for x in labels)
        assert ids[-n - 1:] == [tokenizer.mask_token_id] * n + [tokenizer.eos_token_id]


def test_uniform_window_rate_shows_some_targets_and_keeps_at_least_one_masked(study_data, tokenizer):
    qa = study_data.qa_train.select(range(64))
    objective = _objective(tokenizer, answer="window", window_rate="uniform")
    examples = objective.qa_examples(encode_qa(qa, tokenizer), seed=0)
    rows = [{**row, "index": i} for i, row in enumerate(examples)]
    batch = objective.collate(rows)
    again = objective.collate(rows)
    assert torch.equal(batch["input_ids"], again["input_ids"])  # drawn from each row's own generator
    masked_total, window_total = 0, 0
    for r, row in enumerate(rows):
        want = torch.tensor(row["labels"])  # the window's targets before any are shown
        n = len(row["labels"])
        ids, labels = batch["input_ids"][r, :n], batch["labels"][r, :n]
        target = want != IGNORE
        still = labels != IGNORE
        assert still.sum() >= 1
        assert torch.equal(labels[still], want[still])  # a masked position keeps its target
        assert (ids[still] == tokenizer.mask_token_id).all()
        shown = target & ~still
        assert torch.equal(ids[shown], want[shown])  # a shown position reads its target and has no loss
        masked_total += int(still.sum())
        window_total += int(target.sum())
    # t ~ U(0, 1): about half of the window's positions stay masked over 64 rows, neither all nor one each
    assert 0.3 < masked_total / window_total < 0.7


# --------------------------------------------------------------------------- decoding the window


class Writes(torch.nn.Module):
    """A fake masked model that writes ``tokens`` from position 2 on (after a two-token question), whatever the
    row holds there (token 3 past them): logit 5 for the written token, 0 elsewhere."""

    def __init__(self, tokens: list[int]):
        super().__init__()
        self.tokens = tokens
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, 20)
        for t in range(2, input_ids.shape[1]):
            logits[:, t, self.tokens[t - 2] if t - 2 < len(self.tokens) else 3] = 5.0
        return SimpleNamespace(logits=logits)


MASK, EOS, PAD = 1, 2, 0
TOKENIZER = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD, mask_token_id=MASK)


def _window_item(answer: list[int], window: int = 6) -> Item:
    return Item([7, 8] + [MASK] * window, list(range(2, 2 + window)), answer + [EOS], 0, tokens=len(answer))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_end_of_text_at_position_k_gives_a_k_token_answer(k):
    answer = [11, 12, 13]
    written = [11, 12, 13, 14, 15][:k] + [EOS, PAD, PAD]
    right, lengths = score_items(Writes(written), "masked", TOKENIZER, [_window_item(answer)], True, "window",
                            EvalConfig(), CPU, False, "")
    assert lengths == [k]
    assert right == [k == 3]


def test_an_answer_that_goes_on_is_wrong_by_the_window_and_right_told_the_length():
    answer = [11, 12, 13]
    on = Writes([11, 12, 13, 14, 15, 16])  # the answer, then more, never an end-of-text
    item = _window_item(answer)
    window = score_items(on, "masked", TOKENIZER, [item], True, "window", EvalConfig(), CPU, False, "")
    assert window == ([False], [None])
    # told the length, a window model is read at the answer's positions only: where it stops is not asked
    assert score_items(on, "masked", TOKENIZER, [item], True, "given", EvalConfig(), CPU, False, "") == ([True], [3])
    wrong = Writes([11, 19, 13, EOS])
    assert score_items(wrong, "masked", TOKENIZER, [item], True, "given", EvalConfig(), CPU, False, "")[0] == [False]


@pytest.mark.parametrize("fill", ["one_pass", "left_to_right", "confidence"])
@pytest.mark.parametrize(("written", "expected"), [([11, 12, 13, EOS, PAD, PAD], ([True], [3])),
                                                   ([11, 12, EOS, 13, EOS, PAD], ([False], [2]))])
def test_every_fill_order_reads_the_window(fill, written, expected):
    got = score_items(Writes(written), "masked", TOKENIZER, [_window_item([11, 12, 13])], True, "window",
                 EvalConfig(fill=fill), CPU, False, "")
    assert got == expected


# --------------------------------------------------------------------------- the length prior


def test_length_prior_counts_p_train_answer_lengths_per_attribute(study_data, tokenizer):
    prior = length_prior(tokenizer, study_data)
    longest = max_answer_tokens(tokenizer, study_data)
    qa = study_data.qa_train
    for attribute, name in enumerate(["birth_date", "birth_city"]):
        answers = [a for a, at in zip(qa["answer"], qa["attribute"], strict=True) if at == name]
        lengths = [len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers]
        for n in range(1, longest + 1):  # add-one smoothing over the lengths 1..longest
            assert prior[attribute][n] == pytest.approx(math.log((lengths.count(n) + 1) / (len(lengths) + longest)))
    # held-out answers never count: P_test's answers could have other lengths
    assert sum(math.exp(p) for p in prior[0].values()) == pytest.approx(1.0)


class ConfidentAt(torch.nn.Module):
    """At each mask: token 10 + (number of masks), most confidently (logit 6) when the row has ``best`` masks."""

    def __init__(self, best: int):
        super().__init__()
        self.best = best
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, 40)
        for r, row in enumerate(input_ids.tolist()):
            masks = [t for t, x in enumerate(row) if x == MASK]
            logits[r, masks, 10 + len(masks)] = 6.0 if len(masks) == self.best else 4.0
        return SimpleNamespace(logits=logits)


def test_prior_overrules_a_model_confident_at_a_wrong_length():
    item = Item([5, 6, MASK, MASK, MASK, EOS], [2, 3, 4], [13, 13, 13], 0, tokens=3)
    model, cfg = ConfidentAt(best=2), EvalConfig()
    # by hand, over 40 tokens: log-probability of the top token at logit 6 is 6 - log(39 + e^6) = -0.0947,
    # at logit 4 it is 4 - log(39 + e^4) = -0.5306
    free = score_items(model, "masked", TOKENIZER, [item], True, "free", cfg, CPU, False, "", longest=4)
    assert free == ([False], [2])
    # P_train gave this attribute 3 tokens 8 times in 10, 2 tokens once: -0.5306 + log 0.8 beats -0.0947 + log 0.1
    prior = {0: {1: math.log(0.05), 2: math.log(0.1), 3: math.log(0.8), 4: math.log(0.05)}}
    assert score_items(model, "masked", TOKENIZER, [item], True, "prior", cfg, CPU, False, "", longest=4,
                  prior=prior) == ([True], [3])
    flat = {0: dict.fromkeys(range(1, 5), math.log(0.25))}  # a flat prior is the free rule
    assert score_items(model, "masked", TOKENIZER, [item], True, "prior", cfg, CPU, False, "", longest=4,
                  prior=flat) == ([False], [2])


# --------------------------------------------------------------------------- the levels of a cell


class Answers(torch.nn.Module):
    """A fake masked model that knows every QA answer of the data by its question and writes it into the masks
    after the question, followed by ``after`` (a window model: end-of-text then pads); ``early``: the end-of-text
    one token too soon."""

    def __init__(self, data, tokenizer, vocab: int, early: bool = False):
        super().__init__()
        self.answers = {}
        for qa in data.qa_sets().values():
            for q, a in zip(qa["question"], qa["answer"], strict=True):
                self.answers[tuple(question_ids(tokenizer, q))] = answer_ids(tokenizer, a)
        self.mask, self.eos, self.pad, self.vocab, self.early = (tokenizer.mask_token_id, tokenizer.eos_token_id,
                                                                 tokenizer.pad_token_id, vocab, early)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for r, row in enumerate(input_ids.tolist()):
            first = row.index(self.mask) if self.mask in row else 0
            answer = self.answers.get(tuple(row[:first]))
            if answer is None:  # a bio's masked value, or a row already filled: not this fake's business
                continue
            if self.early:
                answer = answer[:-1]
            written = answer + [self.eos] + [self.pad] * len(row)
            for k, t in enumerate(range(first, len(row))):
                logits[r, t, written[k]] = 8.0
        return SimpleNamespace(logits=logits)


def test_window_levels_and_the_share_of_true_lengths(study):
    data, tokenizer = study
    cfg = EvalConfig(masked_length="window", max_individuals=6)
    levels = ("qa_train", "qa_test", "qa_train_given", "qa_test_given")
    right = evaluate_model(Answers(data, tokenizer, len(tokenizer)), "masked", tokenizer, data, "single", cfg,
                           levels=levels, answer="window")
    assert {lv: (r["mean"], r["true_length"]) for lv, r in right.items()} == dict.fromkeys(levels, (1.0, 1.0))
    early = evaluate_model(Answers(data, tokenizer, len(tokenizer), early=True), "masked", tokenizer, data, "single",
                           cfg, levels=levels, answer="window")
    assert {lv: (r["mean"], r["true_length"]) for lv, r in early.items()} == {
        "qa_train": (0.0, 0.0), "qa_test": (0.0, 0.0), "qa_train_given": (0.0, 1.0), "qa_test_given": (0.0, 1.0)}
    # rules a window model does not have are not computed for it
    assert set(evaluate_model(Answers(data, tokenizer, len(tokenizer)), "masked", tokenizer, data, "single", cfg,
                              answer="window")) == {*MEMORIZATION_LEVELS, *levels}


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"masking": {"answer": "window"}, "eval": {"masked_length": "window"}, "backbones": ["gpt2-rope"]},
     "masking.answer", "no backbone is masked"),
    ({"masking": {"window_pad": "eos"}}, "masking.window_pad", "masking.answer is 'exact'"),
    ({"masking": {"window_rate": "uniform"}}, "masking.window_rate", "masking.answer is 'exact'"),
    ({"eval": {"masked_length": "window"}}, "eval.masked_length", "allowed with it: 'free', 'prior', 'given'"),
    ({"masking": {"answer": "window"}}, "eval.masked_length", "allowed with it: 'window', 'given'"),
    ({"masking": {"answer": "window"}, "eval": {"masked_length": "prior"}}, "eval.masked_length", "'window'"),
])
def test_refused_answer_length_configurations(changes, field, words):
    with pytest.raises(ConfigError) as err:
        from_dict(changes)
    assert str(err.value).startswith(field) and words in str(err.value)


WINDOW = {"masking__answer": "window", "masking__window_rate": "uniform", "eval": {"masked_length": "window"}}


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    config = root / "exact.yaml"
    config.write_text(yaml.safe_dump(single_study(backbones=["gbert"])))
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return root / "run"


def _levels(run):
    return {lv: dict(r) for lv, r in read_results(run).cell("single", "gbert").levels.items()}


def test_window_study_fine_tuned_from_saved_pretraining_equals_one_from_scratch(exact_run, tmp_path):
    """A tiny study fine-tuned with the window: trained, evaluated by the window, told the length beside it; started
    from another run's pretrained gbert (--pretrained-from), it trains the fine-tuning only and gives what the
    same config gives from scratch."""
    config = tmp_path / "window.yaml"
    config.write_text(yaml.safe_dump(single_study(backbones=["gbert"], **WINDOW)))
    assert main(["run", str(config), "--out", str(tmp_path / "reused"), "--pretrained-from", str(exact_run)]) == 0
    reused = _levels(tmp_path / "reused")
    assert list(reused) == [*MEMORIZATION_LEVELS, "qa_train", "qa_test", "qa_train_given", "qa_test_given"]
    assert all(0.0 <= reused[lv]["true_length"] <= 1.0 for lv in reused if lv.startswith("qa_"))
    exact = _levels(exact_run)
    assert {lv: reused[lv] for lv in MEMORIZATION_LEVELS} == {lv: exact[lv] for lv in MEMORIZATION_LEVELS}
    assert not (tmp_path / "reused/models/single/gbert/pretrain/checkpoints").exists()
    assert main(["run", str(config), "--out", str(tmp_path / "scratch")]) == 0
    assert _levels(tmp_path / "scratch") == reused
    assert read_results(tmp_path / "reused").config["masking"]["answer"] == "window"


@pytest.mark.parametrize(("changes", "words"), [({"model__layers": 2}, "its model.layers is 1"),
                                                ({"seed": 3}, "its seed is 0"),
                                                ({"backbones": ["gpt2-rope"]}, "that run has no gpt2-rope")])
def test_pretrained_from_refuses_other_pretraining_and_makes_no_folder(exact_run, tmp_path, capsys, changes, words):
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(single_study(**{"backbones": ["gbert"], **changes})))
    assert main(["run", str(config), "--out", str(tmp_path / "new"), "--pretrained-from", str(exact_run)]) == 2
    assert words in capsys.readouterr().out
    assert not (tmp_path / "new").exists()
