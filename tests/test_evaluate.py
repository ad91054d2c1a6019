"""The evaluator against predictors whose answers are known: perfect, wrong, and wrong only at
the last answer token; the teacher-forced causal path against `generate`."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from bidirect.config import Augmentation, DataConfig, EvalConfig
from bidirect.data.generate import StudyData, generate
from bidirect.evaluate import (
    Item,
    by_length,
    evaluate_model,
    generate_answers,
    level_items,
    majority_baseline,
    qa_items,
    read_masks,
    score_items,
)
from bidirect.protocol import ALL_LEVELS
from bidirect.results import ATTRIBUTES
from bidirect.tokenizer import answer_ids, decode_answer, qa_text, question_ids, train_tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models here are tiny: a second thread only adds contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study():
    data = generate(DataConfig(individuals=40, p_train=0.5), [Augmentation.parse("single")], seed=0)
    qa = [qa_text(q, a) for d in (data.qa_train, data.qa_test) for q, a in zip(d["question"], d["answer"], strict=True)]
    tokenizer = train_tokenizer(list(data.bios["single"]["text"]) + qa, vocab_size=1000)
    return data, tokenizer


class Table(torch.nn.Module):
    """Puts most mass on ``rule(ids)[t]`` at each position t of each (unpadded) row. A rule that
    does not know the row returns None: the row then leans a little towards unk everywhere, so
    free-length decoding prefers the length the rule knows."""

    def __init__(self, vocab_size: int, rule, unk: int = 0):
        super().__init__()
        self.vocab_size, self.rule, self.unk = vocab_size, rule, unk
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for r, (ids, keep) in enumerate(zip(input_ids.tolist(), attention_mask.tolist(), strict=True)):
            n = sum(keep)
            out = self.rule(ids[:n])
            logits[r, torch.arange(n), torch.tensor(out or [self.unk] * n)] = 10.0 if out else 0.5
        return SimpleNamespace(logits=logits)


def causal_rule(tokenizer, break_last: bool = False):
    eos, unk = tokenizer.eos_token_id, tokenizer.unk_token_id

    def rule(ids):
        out = ids[1:] + [eos]  # the next token, always
        if break_last:  # the position predicting the token just before eos: the last answer token
            out = [unk if t + 2 < len(ids) and ids[t + 2] == eos else x for t, x in enumerate(out)]
        return out

    return rule


def masked_rule(tokenizer, data: StudyData, break_last: bool = False):
    """Looks up the sequence the masks were cut from: the evaluator never shows the truth."""
    eos, mask, unk = tokenizer.eos_token_id, tokenizer.mask_token_id, tokenizer.unk_token_id
    truths = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in data.bios["single"]["text"]]
    # sentence recall reads single sentences: the first as it starts a bio, the others after their space
    sentences = {s + "." if i < len(t.split(". ")) - 1 else s for t in data.bios["single"]["text"]
                 for i, s in enumerate(t.split(". "))}
    truths += [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    truths += [tokenizer(" " + s, add_special_tokens=False)["input_ids"] for s in sentences]
    for d in (data.qa_train, data.qa_test):
        for q, a in zip(d["question"], d["answer"], strict=True):
            truths.append(question_ids(tokenizer, q) + answer_ids(tokenizer, a) + [eos])

    by_length: dict[int, list[list[int]]] = {}
    for t in map(list, dict.fromkeys(map(tuple, truths))):  # a pronoun sentence can be several people's
        by_length.setdefault(len(t), []).append(t)

    def rule(ids):
        # unk: a broken last token that left-to-right filling has put into the input
        fits = [t for t in by_length.get(len(ids), []) if all(x in (mask, unk, y) for x, y in zip(ids, t, strict=True))]
        if not fits:  # free-length decoding tries lengths that are not the answer's
            return None
        assert len(fits) == 1, "ambiguous input"
        out = list(fits[0])
        if break_last:
            out = [unk if x == mask and t + 1 < len(ids) and ids[t + 1] == eos else y for t, (x, y) in
                   enumerate(zip(ids, out, strict=True))]
        return out

    return rule


def run(study, kind, rule, levels=ALL_LEVELS, fill="one_pass", **eval_kw):
    data, tokenizer = study
    cfg = EvalConfig(**{"batch_size": 16, "max_individuals": 12, **eval_kw})  # 12 people: the fake is slow
    model = Table(len(tokenizer), rule, tokenizer.unk_token_id)
    return evaluate_model(model, kind, tokenizer, data, "single", replace(cfg, fill=fill), levels=levels)


def accuracies(results, expected):
    """Per level: is every attribute that has items (sentence recall: only those a sentence names the person
    before), and their mean, at ``expected``?"""
    return {level: {a: r[a] for a in (*ATTRIBUTES, "mean") if r[a] is not None} ==
            {a: expected for a in (*ATTRIBUTES, "mean") if r[a] is not None} and r["mean"] is not None
            for level, r in results.items()}


def test_bio_value_tokens_are_the_answer_ids(study):
    """Bio recall checks the same token ids that QA asks for, leading space included."""
    data, tokenizer = study
    items = level_items("bio_recall", tokenizer, data, "single", "causal")
    people = {p["id"]: p for p in data.individuals}
    assert len(items) == 6 * 40
    for i, it in enumerate(items):
        value = people[i // 6][ATTRIBUTES[it.attribute]]
        assert tokenizer.decode(it.want).strip() == value
        assert it.want == answer_ids(tokenizer, value)
        assert it.want == [it.ids[t + 1] for t in it.where]


KINDS_AND_FILLS = [("causal", "one_pass"), ("masked", "one_pass"), ("masked", "left_to_right"),
                   ("masked", "confidence")]


@pytest.mark.parametrize(("kind", "fill"), KINDS_AND_FILLS)
def test_perfect_wrong_and_last_token_wrong(study, kind, fill):
    data, tokenizer = study

    def rule(break_last=False):
        return causal_rule(tokenizer, break_last) if kind == "causal" else masked_rule(tokenizer, data, break_last)

    perfect = run(study, kind, rule(), fill=fill)
    # The masked fake only knows the true texts: it reads a value from the rest of its bio, never from
    # the name, which is what the name-tied level must not count; nor from a bio's sentences put in another
    # order (the cue levels: the value's sentence last), which is no text it knows. The causal one copies the
    # next token, so it reads every level.
    texts_only = ("name_tied", "name_and_values", "values_only")
    expected_tied = 1.0 if kind == "causal" else 0.0
    assert accuracies(perfect, 1.0) == {**dict.fromkeys(perfect, True),
                                        **dict.fromkeys(texts_only, expected_tied == 1.0)}, perfect
    assert all(accuracies({lv: perfect[lv] for lv in texts_only}, expected_tied).values())
    qa_levels = ["qa_train", "qa_test", *(["qa_train_prior", "qa_test_prior", "qa_train_given", "qa_test_given"]
                                          if kind == "masked" else [])]
    sentences = ("sentence_recall", "name_and_values", "values_only")  # one item per sentence naming the person
    assert list(perfect) == ["bio_recall", "name_tied", *sentences, *qa_levels]  # none of P_val here
    assert {level: r["n"] for level, r in perfect.items() if level not in ("name_tied", *sentences)} == \
        dict.fromkeys(["bio_recall", *qa_levels], 72)
    # sentence recall: the people among the 12 whose first sentence names them before their birth date (by hand)
    people = {p["id"]: p for p in data.individuals}
    named = sum(people[b["id"]]["full_name"] in b["text"].split(people[b["id"]]["birth_date"])[0]
                for b in data.bios["single"] if b["id"] < 12)
    assert 0 < named < 12
    assert {lv: (r["ci95"]["mean"], r["people"]) for lv, r in perfect.items()} == {
        lv: ([expected_tied] * 2 if lv in texts_only else [1.0, 1.0], named if lv in sentences else 12)
        for lv in perfect}

    for level, r in perfect.items():  # the answer-length split covers every item once
        assert sum(g["n"] for g in r["by_length"].values()) == r["n"], level
        if level not in texts_only or kind == "causal":
            assert all(g["accuracy"] == 1.0 for g in r["by_length"].values()), level

    wrong = run(study, kind, lambda ids: [tokenizer.unk_token_id] * len(ids), fill=fill)
    assert all(accuracies(wrong, 0.0).values()), wrong
    assert all(g["accuracy"] == 0.0 for r in wrong.values() for g in r["by_length"].values())

    last_wrong = run(study, kind, rule(break_last=True), levels=("qa_train", "qa_test"), fill=fill)
    assert all(accuracies(last_wrong, 0.0).values()), last_wrong


def test_max_individuals_scores_the_first_people(study):
    results = run(study, "causal", causal_rule(study[1]), max_individuals=7, batch_size=5)
    assert [results[level]["n"] for level in ("bio_recall", "qa_train", "qa_test")] == [42, 42, 42]
    assert "qa_val" not in results  # no P_val in this study
    data, tokenizer = study
    items = level_items("qa_test", tokenizer, data, "single", "causal", max_individuals=7)
    first = sorted(set(data.qa_test["id"]))[:7]
    assert [it.answer for it in items] == [q["answer"] for q in data.qa_test if q["id"] in first]


def test_majority_baseline():
    rows = []
    for i in range(20):
        split = "train" if i < 10 else "test"
        # P_train: "New York" 7 of 10; P_test: 6 of 10. Other attributes are all distinct.
        city = "New York, NY" if (i < 7 or 10 <= i < 16) else f"City {i}"
        rows.append({"id": i, "split": split, **{a: f"{a} {i}" for a in ATTRIBUTES}, "company_city": city})
    people = Dataset.from_list(rows)
    base = majority_baseline(StudyData(individuals=people, qa_train=None, qa_test=None, bios=None))
    assert base["company_city"] == pytest.approx(0.6)
    assert base["birth_date"] == 0.0
    assert base["mean"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def gpt2(study):
    """A tiny GPT-2 trained a little on the QA of 8 P_train people: right on some items, wrong on others."""
    data, tokenizer = study
    torch.manual_seed(0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    model = GPT2LMHeadModel(config)
    seqs = [question_ids(tokenizer, q) + answer_ids(tokenizer, a) + [eos]
            for q, a in zip(data.qa_train["question"][:48], data.qa_train["answer"][:48], strict=True)]
    n = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (n - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (n - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_teacher_forcing_agrees_with_greedy_generate(study, gpt2):
    data, tokenizer = study
    eos = tokenizer.eos_token_id
    items = [*level_items("qa_train", tokenizer, data, "single", "causal", max_individuals=8),
             *level_items("qa_test", tokenizer, data, "single", "causal", max_individuals=3)]
    with torch.no_grad():
        scored = score_items(gpt2, "causal", tokenizer, items, True, None, EvalConfig(batch_size=16),
                             torch.device("cpu"), False, "")[0]
        batched = generate_answers(gpt2, tokenizer, items, 1, torch.device("cpu"))  # left-padded, as beams use
        for it, tf, got in zip(items, scored, batched, strict=True):
            prompt = torch.tensor([it.ids[: it.where[0] + 1]])
            out = gpt2.generate(prompt, do_sample=False, use_cache=True, max_new_tokens=len(it.want),
                                eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
            reference = out[0, prompt.shape[1]:].tolist()
            assert tf == (reference == it.want), (it.answer, reference)
            # the batch decodes up to its longest answer + 1, the reference up to this one's
            assert got[: len(reference)] == reference[: len(got)], (got, reference)
    assert 0 < sum(scored) < len(items), "needs right and wrong items to mean anything"


def test_beam_search_scores_what_generate_decodes(study, gpt2):
    """num_beams > 1: an item counts iff transformers' beam search, from the question alone, writes the answer
    and then end-of-text."""
    data, tokenizer = study
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    cfg = EvalConfig(batch_size=64, num_beams=2, max_individuals=5)  # one batch: one max_new_tokens for all
    results = evaluate_model(gpt2, "causal", tokenizer, data, "single", cfg, levels=("qa_train",))
    items = level_items("qa_train", tokenizer, data, "single", "causal", 5)
    longest = max(len(it.want) for it in items)
    right = []
    for it in items:
        prompt = torch.tensor([it.ids[: it.where[0] + 1]])
        out = gpt2.generate(prompt, num_beams=2, do_sample=False, use_cache=True, max_new_tokens=longest,
                            eos_token_id=eos, pad_token_id=pad)[0, prompt.shape[1]:].tolist()
        said = out[: out.index(eos) + 1] if eos in out else out
        right.append(said[-1:] == [eos] and decode_answer(tokenizer, said) == it.answer)
    assert results["qa_train"]["n"] == len(items) == 30
    assert results["qa_train"]["mean"] == pytest.approx(sum(right) / 30)  # 5 items per attribute: mean == overall
    assert 0 < sum(right) < 30, "needs right and wrong items to mean anything"


def test_accuracy_split_by_the_answers_length_in_tokens(study):
    """one_token / several_tokens: each item in the group of its answer's token count (end-of-text not counted),
    counted the same for both kinds."""
    data, tokenizer = study
    qa = data.qa_train.select(range(60))
    lengths = [len(answer_ids(tokenizer, a)) for a in qa["answer"]]
    for kind in ("causal", "masked"):
        assert [it.tokens for it in qa_items(tokenizer, qa["question"], qa["answer"], [0] * 60, kind)] == lengths
    items = [Item([], [], [], 0, tokens=n) for n in (1, 1, 2, 3, 1)]
    assert by_length(items, [True, False, True, True, True]) == {"one_token": {"accuracy": 2 / 3, "n": 3},
                                                                 "several_tokens": {"accuracy": 1.0, "n": 2}}
    assert by_length(items[2:4], [False, False]) == {"several_tokens": {"accuracy": 0.0, "n": 2}}


class CountsCommitted(torch.nn.Module):
    """A fake masked model: at every position it says 100 + (answer tokens already filled in), more confidently the
    later the position: the order in which a decoding commits the masks shows in the answer it writes."""

    def __init__(self, mask: int):
        super().__init__()
        self.mask = mask
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, 120)
        for r, row in enumerate(input_ids.tolist()):
            filled = sum(1 for x in row[2:5] if x != self.mask)
            logits[r, torch.arange(len(row)), 100 + filled] = torch.arange(len(row), dtype=torch.float)
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize(("fill", "written"), [("one_pass", [100, 100, 100]), ("left_to_right", [100, 101, 102]),
                                               ("confidence", [102, 101, 100])])
def test_masked_fill_orders(fill, written):
    """one_pass reads every mask at once; left_to_right commits the first mask, then the next; confidence commits
    the mask the model is surest of first (here the last one), as masked-diffusion samplers do."""
    mask, eos = 1, 2
    item = Item([5, 6, mask, mask, mask, eos], [2, 3, 4], written, 0)
    model = CountsCommitted(mask)
    assert read_masks(model, [item, item], 0, torch.device("cpu"), fill)[0] == [written, written]


def test_results_text_keeps_lists_of_numbers_on_one_line_and_reads_back_the_same():
    from bidirect.rundir import json_text

    results = {"qa_test": {"mean": 0.5, "ci95": {"mean": [0.25, 0.75], "major": None},
                           "per_person": {"id": [3, 7], "hits": [[1, 0, 0, 1, 1, 0], [0] * 6],
                                          "items": [[1] * 6, [1] * 6]}},
               "names": ["a", "b"], "empty": [], "nan": float("nan")}
    text = json_text(results)
    assert json.loads(text) == {**results, "nan": None}
    assert '"hits": [[1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]]' in text and '"mean": [0.25, 0.75]' in text
    assert '"names": [\n' in text  # only numbers are packed
