"""Causal and masked models compared on equal terms (STUDY.md, "Equal terms across kinds"):
the same tokens for a name everywhere, masked QA without the answer's length, a memorization
level that needs the name, intervals over people, a validation split, and committed results
that reproduce from the config committed next to them."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset, concatenate_datasets

from bidirect import study
from bidirect.config import Augmentation, DataConfig, EvalConfig, MaskingConfig, from_dict, load
from bidirect.data.generate import StudyData, generate
from bidirect.evaluate import (
    Item,
    length_candidates,
    level_items,
    majority_baseline,
    name_partners,
    paired_difference,
    paired_differences,
    person_intervals,
    score_items,
    unseen_names,
)
from bidirect.objectives import encode_qa, make_objective
from bidirect.protocol import choose_length
from bidirect.results import ATTRIBUTES, Run
from bidirect.tokenizer import answer_ids, qa_text, train_tokenizer, value_token_span

ROOT = Path(__file__).resolve().parents[1]
AUGS = ["single", "single+fullname", "multi2+permute"]


def make_study(kind: str, p_val: float = 0.0):
    """A generated study and its tokenizer, trained as `bidirect run` trains it (bios and P_train QA)."""
    data = generate(DataConfig(individuals=40, p_val=p_val, augmentations=AUGS), [Augmentation.parse(a) for a in AUGS],
                    seed=3)
    corpus = [t for aug in data.bios for t in data.bios[aug]["text"]]
    corpus += [qa_text(q, a) for q, a in zip(data.qa_train["question"], data.qa_train["answer"], strict=True)]
    return data, train_tokenizer(corpus, kind, 700)


def name_ids(tokenizer, text: str, name: str) -> list[list[int]]:
    """The token ids of every mention of ``name`` in ``text``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out, at = [], text.find(name)
    while at >= 0:
        i, j = value_token_span(enc["offset_mapping"], at, at + len(name))
        out.append(enc["input_ids"][i:j])
        at = text.find(name, at + len(name))
    return out


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_a_name_is_the_same_tokens_in_every_bio_and_question(kind):
    """A bio starts with the name; a question has it after a space. Both must give the same ids,
    or a person is asked about with tokens their bios never trained (STUDY.md, pitfalls)."""
    data, tokenizer = make_study(kind)
    people = {p["id"]: p["full_name"] for p in data.individuals}
    want = {person: answer_ids(tokenizer, name) for person, name in people.items()}
    mentions = 0
    for aug in AUGS:
        for row in data.bios[aug]:
            found = name_ids(tokenizer, row["text"], people[row["id"]])
            assert found and all(ids == want[row["id"]] for ids in found), (aug, row["text"][:60])
            mentions += len(found)
    for qa in data.qa_sets().values():
        for row in qa:
            assert name_ids(tokenizer, row["question"], people[row["id"]]) == [want[row["id"]]], row["question"]
    assert mentions > 40 * 5  # every bio was looked at, fullname ones with six mentions


def test_no_p_test_question_has_an_unknown_word():
    data, tokenizer = make_study("word")
    for question in data.qa_test["question"]:
        assert tokenizer.unk_token_id not in tokenizer(question, add_special_tokens=False)["input_ids"], question


# --------------------------------------------------------------------------- free answer length


class ConfidentAt(torch.nn.Module):
    """A fake masked model: at each mask it says token 10 + (number of masks in the row), most
    confidently when the row has ``best`` masks."""

    def __init__(self, mask: int, best: int):
        super().__init__()
        self.mask, self.best = mask, best
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, 40)
        for r, row in enumerate(input_ids.tolist()):
            masks = [t for t, x in enumerate(row) if x == self.mask]
            logits[r, masks, 10 + len(masks)] = 6.0 if len(masks) == self.best else 2.0
        return SimpleNamespace(logits=logits)


def test_free_length_keeps_the_length_the_model_is_surest_of():
    mask, eos, pad = 1, 2, 0
    item = Item([5, 6, mask, mask, mask, eos], [2, 3, 4], [13, 13, 13], 0)  # the answer has 3 tokens
    cfg, cpu = EvalConfig(batch_size=4), torch.device("cpu")
    tokenizer = SimpleNamespace(eos_token_id=eos, pad_token_id=pad, mask_token_id=mask)
    for best, right in ((3, True), (2, False)):
        model = ConfidentAt(mask, best)
        assert choose_length(length_candidates(model, [item], mask, pad, cpu, "one_pass", 5)[0]) == [10 + best] * best
        free = score_items(model, "masked", tokenizer, [item], True, "free", cfg, cpu, False, "", longest=5)
        given = score_items(model, "masked", tokenizer, [item], True, "given", cfg, cpu, False, "")
        assert free == ([right], [best]) and given == ([True], [3])  # told the length, it is always right


def test_length_aware_majority_knows_more_than_the_plain_one():
    rows = []
    for i in range(20):
        split = "train" if i < 10 else "test"
        # P_train majors: "Art" x4 (1 token), "Fine Arts Studies" x3 (3 tokens), others unique.
        major = "Art" if i in (0, 1, 2, 3, 10) else "Fine Arts Studies" if i in (4, 5, 6, 11, 12) else f"M{i} x"
        rows.append({"id": i, "split": split, **{a: f"{a}{i}" for a in ATTRIBUTES}, "major": major})
    data = StudyData(individuals=Dataset.from_list(rows), qa_train=None, qa_test=None, bios=None)
    tokenizer = train_tokenizer(["Art Fine Arts Studies M x"] + [r["major"] for r in rows], "word")
    assert majority_baseline(data)["major"] == pytest.approx(0.1)  # "Art": 1 of 10 P_test people
    # Told the length, the guess for a 3-token answer is "Fine Arts Studies" (2 more right), for a
    # 2-token one "M0 x" (P_train's first of that length: wrong, the values are unique).
    assert majority_baseline(data, tokenizer)["major"] == pytest.approx(0.3)


# --------------------------------------------------------------------------- name-tied memorization


def test_name_tied_items_swap_the_name_and_want_the_partners_value():
    data, tokenizer = make_study("bpe")
    people = {p["id"]: p for p in data.individuals}
    partner = name_partners(data.individuals)
    assert all(partner[i] != i and people[partner[i]]["pronoun"] == people[i]["pronoun"] for i in partner)
    for aug in ("single", "single+fullname"):
        items = level_items("name_tied", tokenizer, data, aug, "causal")
        assert items
        for it in items:
            me, other = people[it.person], people[partner[it.person]]
            value = ATTRIBUTES[it.attribute]
            text = tokenizer.decode(it.ids)
            assert other[value] != me[value]  # an item where both share the value says nothing
            assert other["full_name"] in text and me["full_name"] not in text
            assert it.want == answer_ids(tokenizer, other[value]) == [it.ids[t + 1] for t in it.where]
            # the rest of the bio is still the person's: only the name can tell the model whose value
            others = [a for a in ATTRIBUTES if a != value and me[a] != other[a] and me[a] not in other[value]]
            assert all(me[a] in text for a in others)
        n = {a: sum(it.attribute == ATTRIBUTES.index(a) for it in items) for a in ATTRIBUTES}
        assert n["birth_date"] == len(people)  # dates are all distinct; a shared company city is left out
        assert n["company_city"] < len(people)


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_sentence_recall_reads_one_sentence_of_the_persons_own_bio(kind):
    """Both kinds get the same input: the value's sentence alone, the full name before the value, none of the
    person's other values; a causal item reads nothing after the value, a masked one sees only that sentence.
    Expected texts are cut from the bio by hand (split at '. '), not by the code under test."""
    data, tokenizer = make_study("bpe")
    people = {p["id"]: p for p in data.individuals}
    mask = tokenizer.mask_token_id
    for aug in ("single+fullname", "single", "multi2+permute"):
        bios = data.bios[aug]
        items = level_items("sentence_recall", tokenizer, data, aug, kind)
        texts = {}
        for person, text in zip(bios["id"], bios["text"], strict=True):
            texts.setdefault(person, []).append(text)
        for it in items:
            me, value = people[it.person], ATTRIBUTES[it.attribute]
            assert it.want == answer_ids(tokenizer, me[value])
            read = tokenizer.decode([t for t in it.ids if t != mask]) if kind == "masked" else \
                tokenizer.decode(it.ids[: it.where[-1] + 1])  # what a causal model has seen at its last read
            # one of the person's bio sentences, whole, that names them before the value
            sentences = {s if s.endswith(".") else s + "." for text in texts[it.person] for s in text.split(". ")}
            full = tokenizer.decode(it.ids if kind == "causal" else
                                    [it.want[it.where.index(t)] if t in it.where else x for t, x in enumerate(it.ids)])
            assert full.strip() in sentences
            assert me["full_name"] in read.split(me[value])[0] if kind == "causal" else me["full_name"] in read
            others = [a for a in ATTRIBUTES if a != value and me[a] not in me[value] and me[value] not in me[a]]
            assert not any(me[a] in full for a in others)
            if kind == "causal":
                assert it.where[-1] + 1 < len(it.ids) and read.endswith(tokenizer.decode(it.want[:-1]).strip() or "")
            else:
                assert [it.ids[t] for t in it.where] == [mask] * len(it.want)
            # the same tokens as in the bio: the sentence's ids are a run of the bio's ids
            full_ids = it.ids if kind == "causal" else tokenizer(full, add_special_tokens=False)["input_ids"]
            assert any(bio[i:i + len(full_ids)] == full_ids for text in texts[it.person]
                       for bio in [tokenizer(text, add_special_tokens=False)["input_ids"]] for i in range(len(bio)))
        # an item for every (person, value) with a bio sentence naming the person before the value, by hand
        named = {(p, a) for p, ts in texts.items() for t in ts for s in t.split(". ") for a in ATTRIBUTES
                 if people[p][a] in s and people[p]["full_name"] in s.split(people[p][a])[0]}
        assert {(it.person, ATTRIBUTES[it.attribute]) for it in items} == named
        assert len(items) == len(named)
        if aug == "single":  # only the first sentence names the person: at most one value a person
            assert len(named) <= len(people)


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_cue_levels_read_the_value_last_after_the_other_values_with_and_without_the_name(kind):
    """name_and_values: the other five sentences of the first bio, then the sentence sentence recall reads;
    values_only: the same text with every mention of the person's name one no individual has. Expected texts are
    put together by hand from the bio (split at '. ') and the sentence-recall item's text."""
    data, tokenizer = make_study("bpe")
    people = {p["id"]: p for p in data.individuals}
    names = {p["full_name"] for p in people.values()}
    unseen = unseen_names(data.individuals)
    assert len(unseen) == len(people) and not set(unseen.values()) & names
    parts = {w for n in names for w in n.split()}
    assert all(set(u.split()) <= parts for u in unseen.values())  # words the tokenizer knows
    mask = tokenizer.mask_token_id
    aug = "multi2+permute"
    first = {}
    for person, text in zip(data.bios[aug]["id"], data.bios[aug]["text"], strict=True):
        first.setdefault(person, text)

    def full(it):  # the text with the value in place
        return tokenizer.decode(it.ids if kind == "causal" else
                                [it.want[it.where.index(t)] if t in it.where else x for t, x in enumerate(it.ids)])

    sentence = {(it.person, it.attribute): full(it).strip()
                for it in level_items("sentence_recall", tokenizer, data, aug, kind)}
    for level in ("name_and_values", "values_only"):
        items = level_items(level, tokenizer, data, aug, kind)
        assert {(it.person, it.attribute) for it in items} == set(sentence)
        for it in items:
            me, value = people[it.person], ATTRIBUTES[it.attribute]
            assert it.want == answer_ids(tokenizer, me[value])
            target = sentence[(it.person, it.attribute)]
            others = [s if s.endswith(".") else s + "." for s in first[it.person].split(". ")]
            others = [s for s in others if me[value] not in s]
            assert len(others) == 5
            expected = " ".join([*others, target])
            if level == "values_only":
                expected = expected.replace(me["full_name"], unseen[it.person])
            assert full(it).strip() == expected
            if kind == "masked":
                assert [it.ids[t] for t in it.where] == [mask] * len(it.want)
            # every other value of the person is read before the value; after it, only the end of its sentence
            before = tokenizer.decode(it.ids[: it.where[0] + (1 if kind == "causal" else 0)])
            after = tokenizer.decode(it.ids[it.where[-1] + (2 if kind == "causal" else 1):])
            assert all(me[a] in before for a in ATTRIBUTES if a != value and me[value] not in me[a])
            assert target.endswith(after.strip()) and after.count(".") == 1
            assert (me["full_name"] in full(it)) == (level == "name_and_values")


# --------------------------------------------------------------------------- intervals over people


def test_intervals_resample_people_not_questions():
    """Ten people, half right: all-or-nothing people make a wide interval; each person half right
    makes none, though the per-question counts are the same."""
    items = [Item([], [], [], a, person=p) for p in range(10) for a in range(6)]
    by_person = [p < 5 for p in range(10) for _ in range(6)]
    within = [a < 3 for _ in range(10) for a in range(6)]
    wide, narrow = person_intervals(items, by_person, ATTRIBUTES), person_intervals(items, within, ATTRIBUTES)
    assert wide["mean"][0] < 0.3 and wide["mean"][1] > 0.7
    assert narrow["mean"] == [0.5, 0.5]
    assert person_intervals(items, by_person, ATTRIBUTES) == wide  # deterministic


# --------------------------------------------------------------------------- P_val


def _level(hits_by_person: dict[int, list[int]], items: int = 1) -> dict:
    """A level as results.json keeps it, one column (birth date) with ``items`` questions a person."""
    people = sorted(hits_by_person)
    return {"per_person": {"id": people, "hits": [[hits_by_person[p][0]] + [0] * 5 for p in people],
                           "items": [[items] + [0] * 5 for _ in people]}}


def test_paired_difference_resamples_the_same_people_for_both():
    # half the people right on everything, half wrong: each level's own interval is wide (about 20 to 80)
    first = _level({p: [1 if p < 10 else 0] for p in range(20)})
    second = _level({p: [1 if p < 9 else 0] for p in range(20)})  # person 9 lost, nobody else changed
    paired = paired_difference(first, second)
    assert paired["difference"] == pytest.approx(0.05) and paired["people"] == 20
    # by hand: in a resample the difference is (how often person 9 is drawn) / 20, never below 0
    low, high = paired["ci95"]
    assert low == 0.0 and 0.05 <= high <= 0.2
    # a second implementation: draw people with replacement, 4,000 times, and take the percentiles
    rng = np.random.default_rng(7)
    draws = rng.integers(0, 20, size=(4000, 20))
    diffs = ((draws < 10).mean(1) - (draws < 9).mean(1))
    assert np.percentile(diffs, 97.5) == pytest.approx(high, abs=0.05)
    assert paired_difference(first, first) == {"difference": 0.0, "ci95": [0.0, 0.0], "people": 20}
    # only the people both scored: a level over people 0-9 against one over 5-19 compares 5-9
    assert paired_difference(_level({p: [1] for p in range(10)}), _level({p: [0] for p in range(5, 20)}))[
        "people"] == 5
    assert paired_difference({"mean": 0.5}, second) is None  # results made before per-person hits were kept


def test_paired_differences_compare_the_masked_rules_with_the_causal_headline():
    right, wrong = _level({p: [1] for p in range(6)}), _level({p: [0] for p in range(6)})
    cell = {"gpt2-rope": {"name_tied": right, "qa_test": right},
            "gbert": {"name_tied": wrong, "qa_test": wrong, "qa_test_given": right, "qa_test_prior": wrong}}
    got = {tuple(r["levels"]): r["difference"] for r in paired_differences(cell)}
    assert got == {("name_tied", "name_tied"): 1.0, ("qa_test", "qa_test"): 1.0, ("qa_test", "qa_test_given"): 0.0,
                   ("qa_test", "qa_test_prior"): 1.0}
    assert all(r["first"] == "gpt2-rope" and r["second"] == "gbert" for r in paired_differences(cell))


def test_p_val_people_are_held_out_like_p_test():
    data, tokenizer = make_study("bpe", p_val=0.25)
    splits = list(data.individuals["split"])
    assert splits.count("val") == 10 and splits.count("train") == 20 and splits.count("test") == 10
    assert set(data.qa_val["id"]).isdisjoint(data.qa_train["id"]) and set(data.qa_val["id"]).isdisjoint(
        data.qa_test["id"])
    # P_train is the same people as without P_val: adding a validation split moves no one out of training
    no_val = generate(DataConfig(individuals=40, augmentations=AUGS), [Augmentation.parse(a) for a in AUGS], seed=3)
    assert no_val.qa_train["id"] == data.qa_train["id"]
    # a P_val question in the fine-tuning stream is a leak
    leaky = concatenate_datasets([data.qa_train, data.qa_val.select([0])])
    objective = make_objective("causal", tokenizer, 256, MaskingConfig())
    guard = study.leak_check(objective.qa_examples(encode_qa(leaky, tokenizer), 0), tokenizer, data)
    assert guard["leaked"] == 1 and guard["examples"] == [data.qa_val[0]["question"]]


def test_p_val_bounds():
    with pytest.raises(Exception, match="data.p_train"):
        from_dict({"data": {"individuals": 10, "p_train": 0.5, "p_val": 0.5}})
    with pytest.raises(Exception, match="data.p_val"):
        from_dict({"data": {"individuals": 10, "p_val": 0.01}})


# --------------------------------------------------------------------------- committed results


def committed_runs() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "runs").rglob("results.json") if (p.parent / "config.yaml").is_file())


def test_every_config_pins_the_tokenizer_kind():
    """A default that changes must not change what a committed config means."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "accelerate" in path.name or "rungs" in raw:  # an accelerate config, a GPU ladder: not studies
            continue
        assert (raw.get("tokenizer") or {}).get("kind") in ("word", "bpe"), path.name


@pytest.mark.parametrize("run_dir", committed_runs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_run_data_reproduces_from_its_config(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    if results.get("data_sha256") is None:
        pytest.skip("measured before runs recorded their data hash: re-run it to check it")
    cfg = load(run_dir / "config.yaml", saved=True)
    data = generate(cfg.data, cfg.augmentations(), cfg.seed)
    assert data.sha256() == results["data_sha256"]


def config_run_pairs() -> list[tuple[Path, Path]]:
    """(configs/X.yaml, runs/Y) for every config whose header says `bidirect run|sweep configs/X.yaml
    --out runs/Y` and whose run is committed."""
    pairs = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        m = re.search(rf"bidirect (?:run|sweep) configs/{re.escape(path.name)} --out (runs/[\w.-]+)", path.read_text())
        if m and (ROOT / m.group(1)).is_dir():
            pairs.append((path, ROOT / m.group(1)))
    return pairs


@pytest.mark.parametrize("config,run_dir", config_run_pairs(), ids=lambda p: p.name)
def test_committed_config_is_the_one_its_run_was_made_with(config, run_dir):
    """Editing a config or a default without re-running what it made is caught here: the study a
    committed config describes today equals the one saved in its committed run (every sweep cell)."""
    from bidirect import sweep

    if "sweep:" in config.read_text():
        # a sweep run across sessions is committed cell by cell as each finishes: every committed cell is checked
        cells = [c for c in sweep.load(config).cells if (run_dir / c.name / "config.yaml").is_file()]
        assert cells
        for cell in cells:
            assert cell.config.to_dict() == load(run_dir / cell.name / "config.yaml", saved=True).to_dict(), cell.name
    else:
        assert load(config).to_dict() == load(run_dir / "config.yaml", saved=True).to_dict()


def test_every_committed_run_has_its_config():
    """The other direction: no committed run without a config that names it."""
    named = {run.name for _, run in config_run_pairs()}
    # runs/bench (`bidirect bench`) and runs/mutants (scripts/mutants.py) hold measurements of the package, not studies
    committed = {p.name for p in (ROOT / "runs").iterdir() if p.is_dir() and p.name not in ("bench", "mutants")}
    assert not committed - named, f"committed runs without a config naming them: {sorted(committed - named)}"


def test_headline_table_puts_the_interval_and_both_baselines_beside_p_test():
    from bidirect.report.tables import headline_markdown

    def level(mean, lo=None, hi=None):
        return {"mean": mean, "ci95": {"mean": [lo, hi]} if lo is not None else {}}

    results = {"results": {"single": {
        "gpt2-rope": {"bio_recall": level(0.9), "name_tied": level(0.8), "qa_train": level(1.0),
                      "qa_test": level(0.5, 0.42, 0.58)},
        "gbert": {"bio_recall": level(0.95), "name_tied": level(0.3), "qa_train": level(1.0),
                  "qa_test": level(0.1, 0.05, 0.16), "qa_test_given": level(0.2, 0.12, 0.27)}}},
        "majority_baseline": {"mean": 0.021}, "majority_baseline_given_length": {"mean": 0.029}}
    lines = headline_markdown(Run.from_json(results)).splitlines()
    assert lines[0] == "| augmentation | backbone | bio recall | name-tied | QA P_train | QA P_test | QA P_test* |"
    assert lines[2] == "| single | gpt2-rope | 90.0 | 80.0 | 100.0 | **50.0** (42-58) | - |"
    assert lines[3] == "| single | gbert | 95.0 | 30.0 | 100.0 | **10.0** (5-16) | **20.0** (12-27) |"
    assert lines[4] == "| | majority |  |  |  | 2.1 | 2.9 |"


def test_runs_table_gives_every_held_out_mean_its_interval_and_both_baselines():
    from bidirect.report.tables import comparison_tables, runs_markdown

    def level(mean, lo=None, hi=None):
        return {"mean": mean, "ci95": {"mean": [lo, hi]} if lo is not None else {}}

    a = {"results": {"multi5+permute+fullname": {
        "gpt2-rope": {"name_tied": level(0.95), "qa_train": level(1.0), "qa_val": level(0.8, 0.7, 0.9),
                      "qa_test": level(0.85, 0.8, 0.9)}}},
        "majority_baseline": {"mean": 0.029}, "majority_baseline_given_length": {"mean": 0.039}}
    b = {"results": {"single": {"gbert": {"name_tied": level(0.0), "qa_test": level(0.0, 0.0, 0.0),
                                          "qa_test_given": level(0.02, 0.0, 0.05)}}},
         "majority_baseline": {"mean": 0.021}}
    a, b = Run.from_json(a), Run.from_json(b)
    lines = runs_markdown({"runs/quick": a, "runs/quick80": b}).splitlines()
    assert lines[0] == ("| study | augmentation | backbone | name-tied | QA P_train | QA P_val | QA P_test "
                        "| QA P_test* | majority |")
    assert lines[2] == ("| quick | multi5+permute+fullname | gpt2-rope | 95.0 | 100.0 | 80.0 (70-90) | "
                        "**85.0** (80-90) | - | 2.9 / 3.9 |")
    assert lines[3] == "| quick80 | single | gbert | 0.0 | - | - | **0.0** (0-0) | **2.0** (0-5) | 2.1 |"
    (table,) = comparison_tables({"runs/quick": a})
    by_level = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert by_level["QA P_test"] == "85.0 (80-90)" and by_level["QA P_val"] == "80.0 (70-90)"
    assert by_level["majority"] == "2.9" and by_level["majority*"] == "3.9"


def test_default_study_tables_fit_80_columns_without_cutting_anything():
    """The default study's own table and a comparison of runs, rendered on an 80-column terminal."""
    import io

    from rich.console import Console

    from bidirect.report.tables import comparison_tables, print_results

    raw = json.loads((ROOT / "runs" / "quick" / "results.json").read_text())
    results = Run.from_json(raw)
    for render in (lambda c: print_results(c, results),
                   lambda c: [c.print(t) for t in comparison_tables({"runs/quick": results, "runs/q2": results}, 80)]):
        out = io.StringIO()
        render(Console(width=80, file=out))
        text = out.getvalue()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
        for levels in raw["results"]["multi5+permute+fullname"].values():  # the headline numbers, whole
            assert f"{100 * levels['qa_test']['mean']:.1f}" in text


def test_summary_markdown_keeps_the_backbones_asked_for(capsys):
    from bidirect.cli import main

    assert main(["summary", str(ROOT / "runs" / "quick80"), str(ROOT / "runs" / "quick"), "--markdown",
                 "--backbone", "gbert"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| quick")]
    assert [r.split(" | ")[:3] for r in rows] == [["| quick80", "single", "gbert"],
                                                  ["| quick80", "single+fullname", "gbert"],
                                                  ["| quick", "multi5+permute+fullname", "gbert"]]


def test_paired_runs_pairs_only_runs_made_from_the_same_data(capsys):
    """scripts/paired_runs.py, which the README's cross-run comparisons quote: quick's gbert against the paper
    masking's on the same 300 people (name-tied 70.1 and 70.0: a paired 0.0), refused across seeds (other people)."""
    spec = importlib.util.spec_from_file_location("paired_runs", ROOT / "scripts" / "paired_runs.py")
    paired_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired_runs)
    runs = ROOT / "runs"
    assert paired_runs.main([f"{runs}/quick:gbert:name_tied", f"{runs}/cpu_paper_masking:gbert:name_tied"]) == 0
    assert "+0.0 points (95% CI -2.5 to +2.8, 300 people)" in capsys.readouterr().out
    assert paired_runs.main([f"{runs}/cpu_study:gbert:qa_test", f"{runs}/cpu_study_seed1:gbert:qa_test"]) == 2
    assert "not made from the same data" in capsys.readouterr().err
