"""The bioS generator does what STUDY.md says, and is deterministic to the byte."""

from __future__ import annotations

import filecmp
import re
from collections import Counter

import pytest

from bidirect.config import Augmentation, DataConfig
from bidirect.data.generate import PRONOUNS, draw_individuals, generate, write_bios
from bidirect.data.pools import load_pools
from bidirect.data.templates import TEMPLATES
from bidirect.results import ATTRIBUTES


def test_same_seed_same_bytes(tmp_path):
    cfg = DataConfig(individuals=50, augmentations=["multi2+permute"])
    augs = [Augmentation.parse("multi2+permute")]
    generate(cfg, augs, seed=3).save(tmp_path / "a")
    generate(cfg, augs, seed=3).save(tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    for rel in files_a:
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel


def test_other_seed_other_people():
    cfg = DataConfig(individuals=30)
    assert draw_individuals(cfg, 0) != draw_individuals(cfg, 1)


def test_split_is_disjoint_and_sized(study_data):
    split = dict(zip(study_data.individuals["id"], study_data.individuals["split"]))
    train = {i for i, s in split.items() if s == "train"}
    test = {i for i, s in split.items() if s == "test"}
    assert not train & test and len(train) == 30 and len(test) == 30
    assert set(study_data.qa_train["id"]) == train
    assert set(study_data.qa_test["id"]) == test


def test_no_p_test_qa_in_any_training_file(study_data):
    """QA of P_test is evaluation-only: none of its questions is in P_train QA."""
    test_questions = set(study_data.qa_test["question"])
    assert not test_questions & set(study_data.qa_train["question"])
    for aug in study_data.bios:
        assert not any("?" in t for t in study_data.bios[aug]["text"])


def test_names_unique_and_facts_fixed_per_person(study_data):
    names = study_data.individuals["full_name"]
    assert len(set(names)) == len(names)
    people = {r["id"]: r for r in study_data.individuals}
    # Every bio of a person, in every augmentation, states that person's one set of facts.
    for aug in study_data.bios:
        for bio in study_data.bios[aug]:
            person = people[bio["id"]]
            for a, start, end in zip(ATTRIBUTES, bio["value_start"], bio["value_end"]):
                assert bio["text"][start:end] == person[a]
                assert bio["text"][start - 1] == " "  # values always follow a space (tokenizer relies on it)


def test_every_answer_is_in_the_persons_bios(study_data):
    bios = {}
    for aug in study_data.bios:
        for bio in study_data.bios[aug]:
            bios.setdefault(bio["id"], []).append(bio["text"])
    for qa in list(study_data.qa_train) + list(study_data.qa_test):
        assert all(qa["answer"] in text for text in bios[qa["id"]])


def test_company_city_is_a_function_of_company(study_data):
    hq = dict(load_pools().companies)
    for person in study_data.individuals:
        assert person["company_city"] == hq[person["company"]]


def test_birth_dates_in_range(study_data):
    for d in study_data.individuals["birth_date"]:
        month, day, year = re.fullmatch(r"([A-Z][a-z]+) (\d+), (\d{4})", d).groups()
        assert 1 <= int(day) <= 28 and 1900 <= int(year) <= 2099


def test_single_keeps_one_template_set_and_not_only_the_first(study_data):
    """Pitfall: `single` draws templates once per person (not template 0 for everyone)."""
    bios = study_data.bios["single"]
    assert len(bios) == len(study_data.individuals)
    first_sentences = Counter(t.split(". ")[0].split(study_data.individuals[i]["full_name"])[-1]
                              for t, i in zip(bios["text"], bios["id"]))
    assert len(first_sentences) > 5  # many different birth-date templates across people
    # single+permute2 reuses one template set: the same sentences, reordered.
    people = {r["id"]: r for r in study_data.individuals}
    per_person = {}
    for bio in study_data.bios["single+permute2"]:
        per_person.setdefault(bio["id"], []).append(bio)
    for pid, (a, b) in per_person.items():
        pronouns = PRONOUNS[people[pid]["pronoun"]]
        norm = [sorted(_sentences(x["text"], people[pid]["full_name"], pronouns)) for x in (a, b)]
        assert len(norm[0]) >= 6
        assert norm[0] == norm[1]


def _sentences(text: str, name: str, pronouns: dict[str, str]) -> list[str]:
    # The first sentence names the person, later ones use the pronoun: map both to X.
    out = text.replace(name + "'s", "X").replace(name, "X")
    for k in ("Subj", "subj", "poss", "obj"):
        out = re.sub(rf"\b{pronouns[k]}\b", "X", out)
    out = re.sub(r"\bwere\b", "was", re.sub(r"\bhave\b", "has", out))
    return [s.strip().rstrip(".") for s in out.split(". ") if s.strip()]


def test_permute_really_reorders(study_data):
    orders = {tuple(o) for o in study_data.bios["single+permute2"]["order"]}
    assert len(orders) > 10
    assert {tuple(o) for o in study_data.bios["single"]["order"]} == {tuple(range(6))}


def test_fullname_leaves_no_pronoun(study_data):
    pronoun_words = re.compile(r"\b(he|she|they|his|her|their|him|them|He|She|They|His|Her|Their)\b")
    for bio in study_data.bios["multi3+permute+fullname"]:
        assert not pronoun_words.search(bio["text"]), bio["text"]


def test_pronouns_follow_the_first_sentence(study_data):
    people = {r["id"]: r for r in study_data.individuals}
    for bio in study_data.bios["single"]:
        name = people[bio["id"]]["full_name"]
        assert bio["text"].startswith(name) or name in bio["text"].split(". ")[0]
        assert bio["text"].count(name) == 1


def test_multi_gives_distinct_bios(study_data):
    per_person = Counter(study_data.bios["multi3+permute+fullname"]["id"])
    assert set(per_person.values()) == {3}
    by_person = {}
    for bio in study_data.bios["multi3+permute+fullname"]:
        by_person.setdefault(bio["id"], set()).add(bio["text"])
    assert all(len(texts) == 3 for texts in by_person.values())


def test_templates_vary_where_the_value_sits():
    person = draw_individuals(DataConfig(individuals=1), 0)[0]
    bios = write_bios([person] * 200, Augmentation.parse("multi1"), seed=0)
    ends = sum(b["text"][b["value_end"][0]] == "." for b in bios) / len(bios)
    assert 0.2 < ends < 0.8  # birth date ends its sentence only sometimes
    assert all(len(TEMPLATES[a]) >= 40 for a in ATTRIBUTES)


@pytest.mark.parametrize("spec,multi,permute,fullname,n", [
    ("single", 1, 0, False, 1), ("multi5", 5, 0, False, 5), ("multi5+permute", 5, 1, False, 5),
    ("single+permute5", 1, 5, False, 5), ("multi2+permute+fullname", 2, 1, True, 2),
])
def test_augmentation_notation(spec, multi, permute, fullname, n):
    aug = Augmentation.parse(spec)
    assert (aug.multi, aug.permute, aug.fullname, aug.bios_per_person) == (multi, permute, fullname, n)
    assert Augmentation.parse(aug.name) == aug
