"""Reverse training (causal.reverse): the entity-preserving reversal of a bio and the causal stream that
holds each bio forward and reversed."""

from __future__ import annotations

from collections import Counter

from datasets import Dataset

from bidirect import study
from bidirect.config import from_dict
from bidirect.objectives import CausalLM, make_objective, reverse_bio, tokenize_bios
from bidirect.tokenizer import answer_ids, train_tokenizer

AUG = "multi3+permute+fullname"


def test_a_sentence_reversed_keeps_the_name_and_the_date_whole():
    text = "Anya Briar Forger was born on October 2, 1996."
    start = text.index("October")  # one value: the six attributes' spans all on the date
    bios = Dataset.from_dict({"id": [7], "text": [text], "value_start": [[start] * 6],
                              "value_end": [[start + len("October 2, 1996")] * 6]})
    tokenizer = train_tokenizer([text], "word")
    row = tokenize_bios(bios, tokenizer, values=True, names={7: "Anya Briar Forger"})[0]
    backwards = reverse_bio(row["input_ids"], row["word_ids"], row["value_ids"], row["name_ids"])
    assert tokenizer.decode(backwards).split() == [".", "October", "2,", "1996", "on", "born", "was", "Anya",
                                                   "Briar", "Forger"]


def _runs(ids: list[int], part: list[int]) -> int:
    return sum(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def test_every_bio_reversed_keeps_its_tokens_names_and_values(study_data, tokenizer):
    people = {p["id"]: p for p in study_data.individuals}
    names = {i: p["full_name"] for i, p in people.items()}
    bios = tokenize_bios(study_data.bios[AUG], tokenizer, values=True, names=names)
    opens_with_name = 0
    for row, text in zip(bios.select(range(0, len(bios), 7)), study_data.bios[AUG]["text"][::7]):
        ids = row["input_ids"]
        backwards = reverse_bio(ids, row["word_ids"], row["value_ids"], row["name_ids"])
        assert Counter(backwards) == Counter(ids) and backwards != ids
        name = answer_ids(tokenizer, names[row["id"]])
        assert _runs(backwards, name) == _runs(ids, name) == text.count(names[row["id"]]) >= 6  # fullname
        values = [[t for t, v in zip(ids, row["value_ids"]) if v == a] for a in range(6)]
        assert all(_runs(backwards, value) >= 1 for value in values)
        # The last word of the bio (its full stop) comes first; a bio that opens with the name ends with it.
        assert backwards[0] == ids[-1]
        assert (backwards[-len(name):] == name) == (ids[:len(name)] == name)
        opens_with_name += ids[:len(name)] == name
    assert 0 < opens_with_name < len(bios.select(range(0, len(bios), 7)))


def test_the_reverse_stream_holds_each_bio_forward_and_reversed(study_data, tokenizer):
    names = dict(zip(study_data.individuals["id"], study_data.individuals["full_name"]))
    bios = tokenize_bios(study_data.bios[AUG], tokenizer, values=True, names=names)
    eos = tokenizer.eos_token_id

    def documents(stream: Dataset) -> Counter:
        docs, doc = Counter(), []
        for window in stream["input_ids"]:
            for token in window:
                doc.append(token)
                if token == eos:
                    docs[tuple(doc)] += 1
                    doc = []
        return docs

    forward = Counter(tuple(ids) + (eos,) for ids in bios["input_ids"])
    backward = Counter(tuple(reverse_bio(*r)) + (eos,) for r in zip(bios["input_ids"], bios["word_ids"],
                                                                    bios["value_ids"], bios["name_ids"]))
    assert documents(CausalLM(tokenizer, 512).bio_examples(bios, seed=0)) == forward
    assert documents(CausalLM(tokenizer, 512, reverse=True).bio_examples(bios, seed=0)) == forward + backward


def test_a_study_with_reverse_trains_causal_models_on_both_and_masked_ones_on_bios_only(study_data, tokenizer):
    cfg = from_dict({"data": {"individuals": 60, "augmentations": [AUG]}, "causal": {"reverse": True},
                     "model": {"context": 512}})
    n, lengths = len(study_data.bios[AUG]), {}
    for kind in ("causal", "masked"):
        objective = make_objective(kind, tokenizer, 512, cfg.masking, 0, cfg.causal)
        streams = study.training_streams(cfg, objective, study_data, tokenizer, AUG)
        assert study.leak_check(list(streams.values()), tokenizer, study_data)["leaked"] == 0
        lengths[kind] = sum(len(w) for w in streams["pretrain"]["input_ids"])
    assert lengths["causal"] == 2 * (lengths["masked"] + n)  # each bio and its eos, twice
