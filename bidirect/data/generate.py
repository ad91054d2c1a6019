"""The bioS generator: individuals with fixed attributes, their biographies and QA.

Everything is a pure function of (config, seed): the individuals are drawn once, so a
person's facts never change between biographies, augmentations or runs, and every row
of every dataset carries the individual's ``id``.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

from bidirect.config import Augmentation, DataConfig
from bidirect.data.pools import Pools, load_pools
from bidirect.data.templates import INVERSE_QUESTIONS, QUESTIONS, TEMPLATES
from bidirect.integrity import DATA_SHA, check_manifest, data_advice, write_manifest
from bidirect.results import ATTRIBUTES
from bidirect.rundir import RunDirError

MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

PRONOUNS = {
    "he": {"Subj": "He", "subj": "he", "poss": "his", "obj": "him", "was": "was", "has": "has"},
    "she": {"Subj": "She", "subj": "she", "poss": "her", "obj": "her", "was": "was", "has": "has"},
    "they": {"Subj": "They", "subj": "they", "poss": "their", "obj": "them", "was": "were", "has": "have"},
}
GENDER_PRONOUN = {"F": "she", "M": "he", "N": "they"}

INDIVIDUAL_FEATURES = Features(
    {
        "id": Value("int32"),
        "full_name": Value("string"),
        "pronoun": Value("string"),
        "split": Value("string"),
        **{a: Value("string") for a in ATTRIBUTES},
    }
)
BIO_FEATURES = Features(
    {
        "id": Value("int32"),
        "text": Value("string"),
        # Character span of each attribute value in `text`, in ATTRIBUTES order: the
        # generator knows where each fact is, so nothing downstream has to search for it.
        "value_start": Sequence(Value("int32")),
        "value_end": Sequence(Value("int32")),
        "order": Sequence(Value("int8")),  # attribute index of each sentence, in text order
    }
)
QA_FEATURES = Features(
    {
        "id": Value("int32"),
        "attribute": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
    }
)


PERSON_FIELDS = ("Subj", "subj", "poss", "obj")


def saved_sha256(directory: str | Path) -> str | None:
    """The hash `StudyData.save` wrote into a data folder (None for folders saved before it did)."""
    path = Path(directory) / DATA_SHA
    return path.read_text().strip() if path.is_file() else None


@cache
def _parse(template: str) -> tuple[tuple[str, str | None], ...]:
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))


def _fill(template: str, person: dict, value: str, named: bool) -> tuple[str, int]:
    """Format one sentence; return it and where the value starts in it.

    ``named``: the person's first mention in this sentence is the full name (the first
    sentence of a bio, or every mention under ``fullname``); later mentions in the same
    sentence are pronouns unless ``named`` applies to them too via ``fullname``.
    ``{was}``/``{has}`` agree with the subject just before them.
    """
    name, pronoun = person["full_name"], PRONOUNS[person["pronoun"]]
    out, start, use_name, subject_is_name = [], -1, named, False
    for literal, field in _parse(template):
        out.append(literal)
        if field is None:
            continue
        if field == "value":
            start = sum(map(len, out))
            out.append(value)
        elif field in PERSON_FIELDS:
            said = (name + "'s" if field == "poss" else name) if use_name else pronoun[field]
            if field in ("Subj", "subj"):
                subject_is_name = use_name
            use_name = person.get("_fullname", False)
            out.append(said)
        else:  # was / has
            out.append(field if subject_is_name else pronoun[field])
    return "".join(out), start


def draw_individuals(cfg: DataConfig, seed: int, pools: Pools | None = None) -> list[dict]:
    """Draw N individuals with unique full names and uniformly drawn attributes."""
    pools = pools or load_pools()
    rng = random.Random(f"bidirect-individuals-{seed}")
    seen: set[tuple[int, int, int]] = set()
    people = []
    while len(people) < cfg.individuals:
        key = (rng.randrange(len(pools.first)), rng.randrange(len(pools.middle)), rng.randrange(len(pools.last)))
        if key in seen:
            continue
        seen.add(key)
        first, gender = pools.first[key[0]]
        company, company_city = pools.companies[rng.randrange(len(pools.companies))]
        people.append(
            {
                "id": len(people),
                "full_name": f"{first} {pools.middle[key[1]]} {pools.last[key[2]]}",
                "pronoun": GENDER_PRONOUN[gender],
                "birth_date": f"{MONTHS[rng.randrange(12)]} {rng.randint(1, 28)}, {rng.randint(1900, 2099)}",
                "birth_city": rng.choice(pools.birth_cities),
                "university": rng.choice(pools.universities),
                "major": rng.choice(pools.majors),
                "company": company,
                "company_city": company_city,  # a function of the employer, as in the paper
            }
        )
    n_train, n_val = round(cfg.individuals * cfg.p_train), round(cfg.individuals * cfg.p_val)
    train_ids = set(rng.sample(range(cfg.individuals), n_train))
    # Drawn after P_train, and only when asked for: with p_val 0 the split is what it always was.
    val_ids = set(rng.sample(sorted(set(range(cfg.individuals)) - train_ids), n_val)) if n_val else set()
    for person in people:
        person["split"] = "train" if person["id"] in train_ids else "val" if person["id"] in val_ids else "test"
    return [{k: p[k] for k in INDIVIDUAL_FEATURES} for p in people]


def write_bio(person: dict, templates: list[str], order: list[int], fullname: bool) -> dict:
    """One biography: the sentences of ``templates`` (one per attribute) in ``order``.

    The first sentence names the person in full; later ones use the pronoun, or the
    full name again under the ``fullname`` augmentation.
    """
    person = {**person, "_fullname": fullname}
    text, starts, ends = "", [0] * len(ATTRIBUTES), [0] * len(ATTRIBUTES)
    for position, a in enumerate(order):
        value = person[ATTRIBUTES[a]]
        sentence, start = _fill(templates[a], person, value, named=position == 0 or fullname)
        if text:
            text += " "
        starts[a] = len(text) + start
        ends[a] = starts[a] + len(value)
        text += sentence
    return {"id": person["id"], "text": text, "value_start": starts, "value_end": ends, "order": list(order)}


def write_bios(people: list[dict], aug: Augmentation, seed: int) -> list[dict]:
    """All biographies of one augmentation. Templates are drawn once per person and draw
    (``single`` keeps one draw for good), then each draw is written ``permute`` times."""
    rng = random.Random(f"bidirect-bios-{seed}-{aug.name}")
    canonical = list(range(len(ATTRIBUTES)))
    pools = [TEMPLATES[a] for a in ATTRIBUTES]
    bios = []
    for person in people:
        for _ in range(aug.multi):
            templates = [rng.choice(pool) for pool in pools]
            for _ in range(max(aug.permute, 1)):
                order = canonical
                if aug.permute:
                    order = canonical[:]
                    rng.shuffle(order)
                bios.append(write_bio(person, templates, order, aug.fullname))
    return bios


def write_qa(people: list[dict]) -> list[dict]:
    return [
        {"id": p["id"], "attribute": a, "question": QUESTIONS[a].format(name=p["full_name"]), "answer": p[a]}
        for p in people
        for a in ATTRIBUTES
    ]


def write_inverse_qa(people: list[dict], population: list[dict] | None = None,
                     key: tuple[str, ...] = ("birth_date", "birth_city")) -> list[dict]:
    """Inverse search QA of ``people``: the attributes ``key`` (birth date and birth city, or the birth date
    alone) -> their full name.

    Values shared by two individuals of ``population`` (default: ``people``) have no single answer; those
    individuals get no inverse question."""
    counts = Counter(tuple(p[k] for k in key) for p in population or people)
    return [
        {"id": p["id"], "attribute": "full_name", "answer": p["full_name"],
         "question": INVERSE_QUESTIONS[key].format(**{k: p[k] for k in key})}
        for p in people
        if counts[tuple(p[k] for k in key)] == 1
    ]


def first_bios(bios: Dataset) -> Dataset:
    """Each individual's first biography, in id order: what bio recall, probing and capacity read."""
    first: dict[int, int] = {}
    for row, person in enumerate(bios["id"]):
        first.setdefault(person, row)
    return bios.select([first[p] for p in sorted(first)])


def _dataset(rows: list[dict], features: Features, tag: str) -> Dataset:
    columns = {k: [r[k] for r in rows] for k in features}
    ds = Dataset.from_dict(columns, features=features)
    # datasets gives in-memory tables a random fingerprint; a content hash keeps the
    # saved files byte-identical across runs of the same config.
    digest = hashlib.sha256(tag.encode())
    for row in rows:
        digest.update(repr(sorted(row.items())).encode())
    ds._fingerprint = digest.hexdigest()[:16]
    return ds


@dataclass
class StudyData:
    """The generated data of one study, as saved under ``RUN_DIR/data``."""

    individuals: Dataset
    qa_train: Dataset  # QA of P_train: fine-tuning data
    qa_test: Dataset  # QA of P_test: evaluation only, never trained on
    bios: DatasetDict  # augmentation name -> biographies of every individual
    # data.inverse only (else None): inverse search QA of P_train (fine-tuning) and P_test (evaluation)
    inverse_train: Dataset | None = None
    inverse_test: Dataset | None = None
    qa_val: Dataset | None = None  # data.p_val > 0 only: QA of P_val, evaluation only, for tuning
    inverse_val: Dataset | None = None  # data.inverse and data.p_val > 0: P_val's inverse QA, evaluation only

    def qa_sets(self) -> dict[str, Dataset]:
        """Every QA dataset there is, by name: qa_train, qa_val, qa_test and the inverse ones, when written."""
        sets = {"qa_train": self.qa_train, "qa_val": self.qa_val, "qa_test": self.qa_test,
                "inverse_train": self.inverse_train, "inverse_val": self.inverse_val, "inverse_test": self.inverse_test}
        return {name: ds for name, ds in sets.items() if ds is not None}

    def held_out_qa(self) -> list[Dataset]:
        """The QA no training step may see: P_val's and P_test's, inverse search included."""
        return [ds for name, ds in self.qa_sets().items() if not name.endswith("_train")]

    def sha256(self) -> str:
        """One hash of every dataset's content, from the content fingerprints `_dataset` gives freshly
        generated data (loading from disk gives new ones, so `save` writes this hash beside the data):
        the same config must give the same hash on any machine, ever."""
        parts = [f"individuals:{self.individuals._fingerprint}"]
        parts += [f"{name}:{ds._fingerprint}" for name, ds in self.qa_sets().items()]
        parts += [f"bios/{aug}:{self.bios[aug]._fingerprint}" for aug in sorted(self.bios)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / DATA_SHA).write_text(self.sha256() + "\n")
        self.individuals.save_to_disk(directory / "individuals")
        for name, ds in self.qa_sets().items():
            ds.save_to_disk(directory / name)
        self.bios.save_to_disk(directory / "bios")
        write_manifest(directory)  # checked by `load` before any file is memory-mapped

    @classmethod
    def load(cls, directory: str | Path) -> StudyData:
        """The data saved in ``directory``, each file checked against the hash `save` recorded (folders saved
        before it recorded one are not): a damaged arrow file is memory-mapped as it is and segfaulted the reader."""
        directory = Path(directory)
        check_manifest(directory, "the run's data", data_advice(directory))
        try:
            inverse = {name: load_from_disk(str(directory / name)) if (directory / name).is_dir() else None
                       for name in ("inverse_train", "inverse_val", "inverse_test", "qa_val")}
            return cls(
                individuals=load_from_disk(str(directory / "individuals")),
                qa_train=load_from_disk(str(directory / "qa_train")),
                qa_test=load_from_disk(str(directory / "qa_test")),
                bios=load_from_disk(str(directory / "bios")),
                **inverse,
            )
        except FileNotFoundError:
            raise
        except Exception as err:  # datasets' and pyarrow's errors alike (a corrupt dataset_dict.json, a cut file)
            raise RunDirError(f"{directory}: cannot be read ({type(err).__name__}: {str(err)[:120]}); "
                              f"{data_advice(directory)}") from None


def generate(cfg: DataConfig, augmentations: list[Augmentation], seed: int) -> StudyData:
    people = draw_individuals(cfg, seed)
    train = [p for p in people if p["split"] == "train"]
    val = [p for p in people if p["split"] == "val"]
    test = [p for p in people if p["split"] == "test"]
    bios = DatasetDict(
        {
            aug.name: _dataset(write_bios(people, aug, seed), BIO_FEATURES, f"bios-{seed}-{aug.name}")
            for aug in augmentations
        }
    )
    inverse = {}
    if cfg.inverse:
        key = tuple(cfg.inverse_from)
        # The default question keeps its old tag: the data (and hash) of runs made before inverse_from stay the same.
        tag = "" if key == ("birth_date", "birth_city") else "-" + "+".join(key)
        inverse = {f"inverse_{split}": _dataset(write_inverse_qa(group, people, key), QA_FEATURES,
                                                f"inverse_{split}-{seed}{tag}")
                   for split, group in (("train", train), ("val", val), ("test", test)) if group}
    return StudyData(
        individuals=_dataset(people, INDIVIDUAL_FEATURES, f"individuals-{seed}"),
        qa_train=_dataset(write_qa(train), QA_FEATURES, f"qa_train-{seed}"),
        qa_test=_dataset(write_qa(test), QA_FEATURES, f"qa_test-{seed}"),
        bios=bios,
        qa_val=_dataset(write_qa(val), QA_FEATURES, f"qa_val-{seed}") if val else None,
        **inverse,
    )
