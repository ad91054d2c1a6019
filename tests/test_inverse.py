"""Inverse search (data.inverse): the generator's inverse QA, its evaluation levels, the
fine-tuning stream and the leak guard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from datasets import concatenate_datasets

from bidirect import study
from bidirect.config import Augmentation, ConfigError, DataConfig, EvalConfig, MaskingConfig, from_dict
from bidirect.data.generate import StudyData, generate, write_inverse_qa
from bidirect.evaluate import evaluate_model
from bidirect.objectives import encode_qa, make_objective
from bidirect.protocol import INVERSE_LEVELS
from bidirect.report import tables as report
from bidirect.results import Run
from bidirect.tokenizer import answer_ids, qa_text, question_ids, train_tokenizer


@pytest.fixture(scope="module")
def inverse_study():
    data = generate(DataConfig(individuals=40, p_train=0.5, inverse=True), [Augmentation.parse("single")], seed=0)
    corpus = list(data.bios["single"]["text"])
    corpus += [qa_text(q, a) for d in data.qa_sets().values() for q, a in zip(d["question"], d["answer"])]
    return data, train_tokenizer(corpus, vocab_size=1000)


def test_generator_writes_inverse_qa_of_each_split(inverse_study):
    data, _ = inverse_study
    people = {p["id"]: p for p in data.individuals}
    for split, qa in (("train", data.inverse_train), ("test", data.inverse_test)):
        assert len(qa) == sum(p["split"] == split for p in people.values())  # 40 people: no shared (date, city)
        for row in qa:
            person = people[row["id"]]
            assert person["split"] == split and row["attribute"] == "full_name"
            assert row["answer"] == person["full_name"]
            assert person["birth_date"] in row["question"] and person["birth_city"] in row["question"]
            assert person["full_name"] not in row["question"]
    assert not set(data.inverse_train["id"]) & set(data.inverse_test["id"])
    assert not set(data.inverse_train["question"]) & set(data.inverse_test["question"])
    plain = generate(DataConfig(individuals=40, p_train=0.5), [Augmentation.parse("single")], seed=0)
    assert plain.inverse_train is None and list(plain.qa_sets()) == ["qa_train", "qa_test"]
    assert plain.qa_train["question"] == data.qa_train["question"]  # the switch adds, changes nothing


def test_ambiguous_attribute_pairs_are_skipped():
    a = {"id": 0, "full_name": "A B C", "birth_date": "May 1, 1990", "birth_city": "Boston, MA"}
    b = {**a, "id": 1, "full_name": "D E F"}
    c = {**a, "id": 2, "full_name": "G H I", "birth_city": "Austin, TX"}
    assert [r["id"] for r in write_inverse_qa([a, c])] == [0, 2]
    assert [r["id"] for r in write_inverse_qa([a, c], population=[a, b, c])] == [2]  # b lives in the other split


def test_p_val_has_its_own_inverse_qa_held_out_like_p_test():
    cfg = DataConfig(individuals=60, p_train=0.5, p_val=0.2, inverse=True)
    data = generate(cfg, [Augmentation.parse("single")], seed=0)
    splits = {p["id"]: p["split"] for p in data.individuals}
    assert {splits[i] for i in data.inverse_val["id"]} == {"val"} and len(data.inverse_val) == 12
    assert list(data.qa_sets()) == ["qa_train", "qa_val", "qa_test", "inverse_train", "inverse_val", "inverse_test"]
    assert any(ds is data.inverse_val for ds in data.held_out_qa())  # the leak guard looks for it
    without = generate(DataConfig(individuals=60, p_train=0.5, p_val=0.2), [Augmentation.parse("single")], seed=0)
    assert without.qa_val["question"] == data.qa_val["question"]


def test_inverse_from_the_birth_date_alone():
    """The Factorization Curse's backward task: the birth date -> the full name; a date two people share has no
    single answer. The default question's data is the one written before inverse_from existed."""
    cfg = DataConfig(individuals=40, p_train=0.5, inverse=True, inverse_from=["birth_date"])
    data = generate(cfg, [Augmentation.parse("single")], seed=0)
    people = {p["id"]: p for p in data.individuals}
    for row in data.inverse_test:
        assert row["question"] == f"Who was born on {people[row['id']]['birth_date']}?"
    default = generate(DataConfig(individuals=40, p_train=0.5, inverse=True), [Augmentation.parse("single")], seed=0)
    assert default.inverse_test._fingerprint != data.inverse_test._fingerprint
    assert default.inverse_test["question"][0].endswith(f"in {people[default.inverse_test['id'][0]]['birth_city']}?")
    with pytest.raises(ConfigError, match=r"data.inverse_from: got \['birth_city'\]; allowed: \['birth_date', "):
        from_dict({"data": {"inverse": True, "inverse_from": ["birth_city"]}})


def test_inverse_data_saves_and_loads(inverse_study, tmp_path):
    data, _ = inverse_study
    data.save(tmp_path / "inv")
    loaded = StudyData.load(tmp_path / "inv")
    assert loaded.inverse_test["question"] == data.inverse_test["question"]
    generate(DataConfig(individuals=10, p_train=0.5), [Augmentation.parse("single")], seed=0).save(tmp_path / "plain")
    assert StudyData.load(tmp_path / "plain").inverse_test is None


class Table(torch.nn.Module):
    """Most mass on ``rule(ids)[t]`` at each position t of each (unpadded) row; a row the rule does
    not know (None: a length free-length decoding tries that is not the answer's) leans towards unk."""

    def __init__(self, vocab_size: int, rule, unk: int = 0):
        super().__init__()
        self.vocab_size, self.rule, self.unk = vocab_size, rule, unk
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for r, (ids, keep) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            n = sum(keep)
            out = self.rule(ids[:n])
            logits[r, torch.arange(n), torch.tensor(out or [self.unk] * n)] = 10.0 if out else 0.5
        return SimpleNamespace(logits=logits)


def _rules(data, tokenizer):
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    truths = [question_ids(tokenizer, q) + answer_ids(tokenizer, a) + [eos]
              for d in (data.inverse_train, data.inverse_test) for q, a in zip(d["question"], d["answer"])]

    def masked(ids):  # looks the masked sequence up: the evaluator never shows the name
        fits = [t for t in truths if len(t) == len(ids) and all(x in (mask, y) for x, y in zip(ids, t))]
        assert len(fits) <= 1
        return fits[0] if fits else None

    return {"causal": lambda ids: ids[1:] + [eos], "masked": masked}


KINDS_AND_FILLS = [("causal", "one_pass"), ("masked", "one_pass"), ("masked", "left_to_right"),
                   ("masked", "confidence")]


@pytest.mark.parametrize(("kind", "fill"), KINDS_AND_FILLS)
def test_perfect_and_wrong_predictors_on_inverse_levels(inverse_study, kind, fill):
    data, tokenizer = inverse_study
    cfg = EvalConfig(batch_size=16, fill=fill)
    perfect = evaluate_model(Table(len(tokenizer), _rules(data, tokenizer)[kind], tokenizer.unk_token_id), kind,
                             tokenizer, data, "single", cfg, levels=INVERSE_LEVELS)
    sizes = {"inverse_train": len(data.inverse_train), "inverse_test": len(data.inverse_test)}
    # one question a person: as many people as items, and an interval that cannot move off 100%
    ci = {"full_name": [1.0, 1.0], "mean": [1.0, 1.0]}
    # a masked model also says how many of its answers have the true length: all of them, here
    length = {"true_length": 1.0} if kind == "masked" else {}
    kept = {lv: {k: v for k, v in r.items() if k != "per_person"} for lv, r in perfect.items()}
    assert kept == {lv: {"full_name": 1.0, "mean": 1.0, "n": n, "people": n, "ci95": ci, **length}
                    for lv, n in sizes.items()}
    for lv, r in perfect.items():  # each person's one question, right, kept for paired comparisons
        assert r["per_person"]["hits"] == r["per_person"]["items"] == [[1]] * sizes[lv]
    wrong = evaluate_model(Table(len(tokenizer), lambda ids: [tokenizer.unk_token_id] * len(ids)), kind, tokenizer,
                           data, "single", cfg, levels=INVERSE_LEVELS)
    assert {lv: wrong[lv]["mean"] for lv in wrong} == {"inverse_train": 0.0, "inverse_test": 0.0}  # no P_val here


def test_masked_inverse_search_told_the_names_length(inverse_study):
    """Inverse search on the same information as forward QA: a masked model's other answer-length rules are
    levels beside its inverse headline (inverse_test_given: told the full name's length), a causal model gets
    none. The model below is surer of a one-token name than of the right one, so choosing the length by
    log-probability it is always wrong, and told the length always right."""
    from bidirect.protocol import cell_levels

    data, tokenizer = inverse_study
    qa_sets = list(data.qa_sets())
    assert cell_levels("causal", "exact", "free", qa_sets) == ["qa_train", "qa_test", "inverse_train", "inverse_test"]
    assert cell_levels("masked", "exact", "free", qa_sets)[-6:] == [
        "inverse_train", "inverse_test", "inverse_train_prior", "inverse_test_prior", "inverse_train_given",
        "inverse_test_given"]
    assert cell_levels("masked", "window", "window", qa_sets)[-4:] == ["inverse_train", "inverse_test",
                                                                        "inverse_train_given", "inverse_test_given"]
    mask, unk = tokenizer.mask_token_id, tokenizer.unk_token_id
    lookup = _rules(data, tokenizer)["masked"]

    class SureOfOneToken(Table):  # one mask after the question: a wrong name, surer than any right one
        def forward(self, input_ids, attention_mask, position_ids=None):
            out = super().forward(input_ids, attention_mask, position_ids)
            for r, ids in enumerate(input_ids.tolist()):
                if ids.count(mask) == 1:
                    out.logits[r, :, unk] = 20.0
            return out

    levels = ("inverse_test", "inverse_test_prior", "inverse_test_given")
    got = evaluate_model(SureOfOneToken(len(tokenizer), lookup, unk), "masked", tokenizer, data, "single",
                         EvalConfig(batch_size=16), levels=levels)
    assert list(got) == list(levels)
    assert (got["inverse_test"]["mean"], got["inverse_test"]["true_length"]) == (0.0, 0.0)
    assert (got["inverse_test_given"]["mean"], got["inverse_test_given"]["true_length"]) == (1.0, 1.0)
    assert got["inverse_test_given"]["full_name"] == 1.0 and "by_length" not in got["inverse_test_given"]
    assert got["inverse_test_prior"]["mean"] > 0.5  # P_train's names are never one token long
    assert report.LEVEL_NAMES["inverse_test_given"] == "inverse P_test*"
    causal = evaluate_model(Table(len(tokenizer), _rules(data, tokenizer)["causal"], unk), "causal", tokenizer, data,
                            "single", EvalConfig(batch_size=16), levels=levels)
    assert list(causal) == ["inverse_test"]


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_finetune_stream_has_p_train_inverse_qa_and_no_leak(inverse_study, kind):
    data, tokenizer = inverse_study
    cfg = from_dict({"data": {"individuals": 40, "inverse": True, "augmentations": ["single"]},
                     "model": {"context": 256}})
    objective = make_objective(kind, tokenizer, 256, cfg.masking)
    streams = study.training_streams(cfg, objective, data, tokenizer, "single")
    guard = study.leak_check(list(streams.values()), tokenizer, data)
    assert guard["leaked"] == 0
    assert guard["qa_documents_checked"] == len(data.qa_train) + len(data.inverse_train)
    assert guard["p_test_questions"] == len(data.qa_test) + len(data.inverse_test)


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_leak_guard_catches_a_p_test_inverse_qa(inverse_study, kind):
    data, tokenizer = inverse_study
    objective = make_objective(kind, tokenizer, 256, MaskingConfig())
    leaky = concatenate_datasets([data.qa_train, data.inverse_train, data.inverse_test.select([2])])
    guard = study.leak_check(objective.qa_examples(encode_qa(leaky, tokenizer), 0), tokenizer, data)
    assert guard["leaked"] == 1 and guard["examples"] == [data.inverse_test[2]["question"]]
    # A P_test name as the answer is a leak whatever the question (causal streams hold the answer).
    if kind == "causal":
        row = {**data.inverse_test[2], "question": "Who was born on a day nobody knows?"}
        odd = concatenate_datasets([data.qa_train, data.qa_train.from_list([row], features=data.qa_train.features)])
        assert study.leak_check(objective.qa_examples(encode_qa(odd, tokenizer), 0), tokenizer, data)["leaked"] == 1


def test_report_shows_inverse_levels_only_when_present():
    scores = {a: 0.5 for a in ("birth_date", "birth_city", "university", "major", "company", "company_city", "mean")}
    plain = Run.from_json({"study": "s", "results": {"single": {"gbert": {"qa_train": scores, "qa_test": scores}}}})
    inverse = Run.from_json({"study": "s", "results": {"single": {"gbert": {
        "qa_train": scores, "qa_test": scores, "inverse_test": {"full_name": 0.25, "mean": 0.25, "n": 4}}}}})
    assert "inverse" not in report.markdown(plain)
    assert "| single | gbert | inverse P_test | - | - | - | - | - | - | **25.0** |" in report.markdown(inverse)
    assert list(report.comparison_tables({"a": plain})[0].columns[0].cells)[-3] == "QA P_test"
    assert list(report.comparison_tables({"a": plain, "b": inverse})[0].columns[0].cells)[-3] == "inverse P_test"
    assert len(report.results_tables(inverse)[0].rows) == 3
