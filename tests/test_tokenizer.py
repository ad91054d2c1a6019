"""One tokenizer for every backbone: exact round trips and the same answer ids everywhere."""

from __future__ import annotations

import pytest

from bidirect.data.pools import load_pools
from bidirect.results import ATTRIBUTES
from bidirect.tokenizer import (
    answer_ids,
    decode_answer,
    load_tokenizer,
    qa_text,
    question_ids,
    train_tokenizer,
    value_token_span,
)


def _pool_values():
    pools = load_pools()
    values = [f for f, _ in pools.first] + list(pools.middle) + list(pools.last)
    for a in ATTRIBUTES[1:]:
        values += list(pools.values(a))
    return values + ["October 2, 1996", "January 28, 1900", "December 1, 2099"]


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_every_pool_value_round_trips(kind, study_data):
    corpus = [t for aug in study_data.bios for t in study_data.bios[aug]["text"]] + [" ".join(_pool_values())]
    tok = train_tokenizer(corpus, kind, vocab_size=2000)
    for value in _pool_values():
        ids = answer_ids(tok, value)
        assert tok.unk_token_id not in ids, value
        assert decode_answer(tok, ids) == value


def test_answer_ids_same_in_qa_and_bio(study_data, tokenizer):
    """Pitfall: the answer must be the same token ids inside the QA string, alone and in the bio."""
    people = {r["id"]: r for r in study_data.individuals}
    bios = {b["id"]: b for b in study_data.bios["single"]}
    for qa in study_data.qa_train:
        ans = answer_ids(tokenizer, qa["answer"])
        full = tokenizer(qa_text(qa["question"], qa["answer"]), add_special_tokens=False)["input_ids"]
        assert full == question_ids(tokenizer, qa["question"]) + ans  # no merge across the "? " join
        bio = bios[qa["id"]]
        enc = tokenizer(bio["text"], add_special_tokens=False, return_offsets_mapping=True)
        a = list(ATTRIBUTES).index(qa["attribute"])
        i, j = value_token_span(enc["offset_mapping"], bio["value_start"][a], bio["value_end"][a])
        assert enc["input_ids"][i:j] == ans, (qa["answer"], people[qa["id"]]["full_name"])


def test_specials_and_save_load(tmp_path, tokenizer):
    for token in (tokenizer.pad_token, tokenizer.mask_token, tokenizer.eos_token):
        assert token is not None
    assert len({tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.eos_token_id}) == 3  # pad != eos
    tokenizer.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    text = "Anya Briar Forger was born on October 2, 1996."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer(text)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_load_missing_tokenizer_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nope")
