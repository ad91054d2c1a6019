"""Checks on the hand-written name/place pools and the sentence templates."""

import re
import string
from collections import Counter
from pathlib import Path

import pytest

import bidirect.data
from bidirect.data.templates import QUESTIONS, TEMPLATES

POOLS = Path(bidirect.data.__file__).parent / "pools"

USPS = set(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS "
    "MO MT NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY".split()
)
ATTRS = ("birth_date", "birth_city", "university", "major", "company", "company_city")
PERSON = {"Subj", "subj", "poss", "obj"}
ALLOWED = PERSON | {"value", "was", "has"}

NAME_RE = re.compile(r"[A-Z][a-z]+")
SURNAME_RE = re.compile(r"[A-Z][A-Za-z]+")
CITY_RE = re.compile(r"([A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*), ([A-Z]{2})")
PHRASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ,]*[A-Za-z0-9]")


def _lines(name: str) -> list[str]:
    text = (POOLS / name).read_text(encoding="ascii")
    assert text.endswith("\n") and not text.endswith("\n\n"), name
    return text[:-1].split("\n")


def _check_value(v: str) -> None:
    assert v.isascii(), v
    assert v == v.strip(), repr(v)
    assert v, "empty value"
    assert "  " not in v and "\t" not in v, repr(v)
    assert not v.endswith("."), v
    assert v[-1].isalnum(), v
    assert not any(c in v for c in "&()\"'{}"), v


def _check_city(c: str) -> None:
    _check_value(c)
    m = CITY_RE.fullmatch(c)
    assert m, c
    assert m.group(2) in USPS, c


@pytest.mark.parametrize(
    ("fname", "count"),
    [
        ("first_names.txt", 400),
        ("middle_names.txt", 400),
        ("last_names.txt", 1000),
        ("birth_cities.txt", 200),
        ("universities.txt", 300),
        ("majors.txt", 100),
        ("companies.txt", 263),
    ],
)
def test_counts_unique_and_clean(fname, count):
    lines = _lines(fname)
    assert len(lines) == count
    assert len(set(lines)) == count
    for line in lines:
        for part in line.split("\t"):
            _check_value(part)


def test_first_names():
    rows = [line.split("\t") for line in _lines("first_names.txt")]
    assert all(len(r) == 2 for r in rows)
    names = [r[0] for r in rows]
    assert len(set(names)) == 400
    assert all(NAME_RE.fullmatch(n) for n in names)
    genders = Counter(r[1] for r in rows)
    assert set(genders) == {"F", "M", "N"}
    assert 160 <= genders["F"] <= 200
    assert 160 <= genders["M"] <= 200
    assert 30 <= genders["N"] <= 50


def test_middle_and_last_names():
    for n in _lines("middle_names.txt"):
        assert NAME_RE.fullmatch(n), n
    for n in _lines("last_names.txt"):
        assert SURNAME_RE.fullmatch(n), n


def test_birth_cities():
    cities = _lines("birth_cities.txt")
    for c in cities:
        _check_city(c)
    assert len({c.rsplit(", ", 1)[1] for c in cities}) >= 40


def test_universities_and_majors():
    for u in _lines("universities.txt"):
        assert PHRASE_RE.fullmatch(u), u
        assert u[0].isupper(), u
    for m in _lines("majors.txt"):
        assert re.fullmatch(r"[A-Z][A-Za-z]*(?: [A-Za-z]+)*", m), m


def test_companies():
    rows = [line.split("\t") for line in _lines("companies.txt")]
    assert all(len(r) == 2 for r in rows)
    names = [r[0] for r in rows]
    assert len(set(names)) == 263
    for name, city in rows:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*(?: [A-Za-z0-9]+)*", name), name
        last = name.split()[-1].rstrip(".").lower()
        assert last not in {"inc", "corp", "corporation", "ltd", "llc", "co"}, name
        _check_city(city)
    cities = Counter(r[1] for r in rows)
    assert cities["New York, NY"] == 36
    assert cities.most_common(1)[0] == ("New York, NY", 36)
    assert abs(36 / 263 - 0.137) < 0.001


def _fields(template: str) -> list[str]:
    out = []
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is not None:
            assert spec == "" and conv is None, template
            out.append(field)
    return out


def test_template_keys():
    assert tuple(TEMPLATES) == ATTRS
    assert tuple(QUESTIONS) == ATTRS
    assert QUESTIONS == {
        "birth_date": "What is the birth date of {name}?",
        "birth_city": "What is the birth city of {name}?",
        "university": "Which university did {name} study?",
        "major": "What major did {name} study?",
        "company": "Which company did {name} work for?",
        "company_city": "Where did {name} work?",
    }


@pytest.mark.parametrize("attr", ATTRS)
def test_templates_structure(attr):
    temps = TEMPLATES[attr]
    assert isinstance(temps, tuple)
    assert len(temps) >= 45
    assert len(set(temps)) == len(temps)
    value_last = 0
    for t in temps:
        fields = _fields(t)
        assert set(fields) <= ALLOWED, t
        assert fields.count("value") == 1, t
        assert PERSON & set(fields), t
        assert t.isascii() and "  " not in t and t == t.strip(), t
        i = t.index("{value}")
        assert i > 0 and t[i - 1] == " " and t[i - 2] != " ", t
        after = t[i + len("{value}")]
        assert after in ".," + " " and not after.isalnum(), t
        assert t.endswith(".") and not t.endswith(".."), t
        assert t.count(".") == 1, t
        assert t.startswith("{Subj}") or (t[0].isupper() and t[0] != "{"), t
        assert "{Subj}" not in t[1:], t
        # {poss}, {obj} and {subj} only mid-sentence
        assert not t.startswith(("{subj}", "{poss}", "{obj}")), t
        if t.endswith("{value}."):
            value_last += 1
    share = value_last / len(temps)
    assert 0.3 <= share <= 0.7, share


# present-tense verbs that must not follow a subject placeholder directly
BAD_AFTER_SUBJ = re.compile(r"\{[Ss]ubj\} (?:is|are|was|were|has|have|\w+s)\b")
ADVERBS_OK = {"always", "sometimes", "perhaps"}


@pytest.mark.parametrize("attr", ATTRS)
def test_templates_verb_agreement(attr):
    for t in TEMPLATES[attr]:
        for m in BAD_AFTER_SUBJ.finditer(t):
            assert m.group(0).split()[-1] in ADVERBS_OK, t


SAMPLE_VALUES = {
    "birth_date": "October 2, 1996",
    "birth_city": "Princeton, NJ",
    "university": "Massachusetts Institute of Technology",
    "major": "Communications",
    "company": "Meta Platforms",
    "company_city": "Menlo Park, CA",
}
PERSON_SETS = [
    {"Subj": "She", "subj": "she", "poss": "her", "obj": "her", "was": "was", "has": "has"},
    {"Subj": "They", "subj": "they", "poss": "their", "obj": "them", "was": "were", "has": "have"},
    {
        "Subj": "Anya Briar Forger",
        "subj": "Anya Briar Forger",
        "poss": "Anya Briar Forger's",
        "obj": "Anya Briar Forger",
        "was": "was",
        "has": "has",
    },
]


@pytest.mark.parametrize("attr", ATTRS)
@pytest.mark.parametrize("person", PERSON_SETS, ids=["she", "they", "name"])
def test_templates_format(attr, person):
    for t in TEMPLATES[attr]:
        s = t.format(value=SAMPLE_VALUES[attr], **person)
        assert "{" not in s and "}" not in s, s
        assert "  " not in s, s
        assert s[0].isupper() and s.endswith("."), s
        assert SAMPLE_VALUES[attr] in s, s


def test_all_pool_values_fit_templates():
    # every pool value must be safe to drop into a template
    for c in _lines("birth_cities.txt"):
        assert "{" not in c
    for line in _lines("companies.txt"):
        for part in line.split("\t"):
            assert "{" not in part and "}" not in part
