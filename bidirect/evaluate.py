"""The held-out-entity evaluator (STUDY.md, Evaluation): exact match of whole answers, per attribute.

- ``bio_recall``: did the model memorize the biographies? On each person's first biography,
  every token of an attribute value must be predicted from the true text before it: continued
  (causal), or, with the whole value masked, filled in left to right (masked), which is the
  masked analogue of the causal continuation. One-pass filling of a multi-word value asks more
  than memorization: each word without its neighbours, which whole-word masking rarely trains.
- ``qa_train``: was the QA format learned? ``qa_test``: is the knowledge extractable for
  people never seen in QA (the headline)?
- ``inverse_train`` / ``inverse_test`` (``data.inverse`` only): inverse search, the full name
  from birth date and birth city, scored like QA (one number, under ``full_name`` and ``mean``).

Every level reduces to `Item`s: a sequence the model reads, the positions whose argmax is
read, and the token each must be. An item counts only if all of them are right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from rich.progress import track
from transformers import PreTrainedTokenizerFast

from bidirect.config import ATTRIBUTES, INVERSE_LEVELS, LEVELS, EvalConfig, MaskingConfig
from bidirect.data.generate import StudyData, first_bios
from bidirect.tokenizer import answer_ids, decode_answer, question_ids, value_token_span


@dataclass
class Item:
    ids: list[int]  # what the model reads
    where: list[int]  # positions whose argmax is read
    want: list[int]  # the token each of those must be
    attribute: int  # index into ATTRIBUTES; -1: inverse search (the answer is the full name)
    answer: str = ""  # QA only: beam search compares decoded text


# --------------------------------------------------------------------------- items


def _first_people(ids: Sequence[int], max_individuals: int) -> list[int]:
    return sorted(set(ids))[: max_individuals or None]


def bio_items(tokenizer: PreTrainedTokenizerFast, bios: Dataset, kind: str, max_individuals: int = 0) -> list[Item]:
    """One item per attribute of each person's first biography."""
    rows = first_bios(bios)
    if max_individuals:
        rows = rows.select(range(min(max_individuals, len(rows))))
    enc = tokenizer(list(rows["text"]), add_special_tokens=False, return_offsets_mapping=True)
    items = []
    spans = zip(rows["value_start"], rows["value_end"], strict=True)
    for ids, offsets, (starts, ends) in zip(enc["input_ids"], enc["offset_mapping"], spans, strict=True):
        for a, (start, end) in enumerate(zip(starts, ends, strict=True)):
            i, j = value_token_span(offsets, start, end)  # the value's answer_ids, space included
            span = list(range(i, j))
            want = ids[i:j]
            if kind == "causal":
                items.append(Item(ids, [t - 1 for t in span], want, a))
            else:
                hidden = set(span)
                masked = [tokenizer.mask_token_id if t in hidden else x for t, x in enumerate(ids)]
                items.append(Item(masked, span, want, a))
    return items


def qa_items(tokenizer: PreTrainedTokenizerFast, questions: Sequence[str], answers: Sequence[str],
             attributes: Sequence[int], kind: str) -> list[Item]:
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    items = []
    for question, answer, a in zip(questions, answers, attributes, strict=True):
        q, ans = question_ids(tokenizer, question), answer_ids(tokenizer, answer)
        if kind == "causal":
            # Teacher forcing reads the argmax after every correct prefix, and greedy decoding
            # emits the answer then eos iff each of those argmaxes is right: this is greedy
            # exact match, in one batched forward pass instead of len(answer) + 1 decoding steps.
            items.append(Item(q + ans + [eos], list(range(len(q) - 1, len(q) + len(ans))), ans + [eos], a, answer))
        else:
            # The paper's rule: the answer's length is revealed by the number of masks.
            items.append(Item(q + [mask] * len(ans) + [eos], list(range(len(q), len(q) + len(ans))), ans, a, answer))
    return items


def level_items(level: str, tokenizer: PreTrainedTokenizerFast, data: StudyData, augmentation: str, kind: str,
                max_individuals: int = 0) -> list[Item]:
    if level == "bio_recall":
        return bio_items(tokenizer, data.bios[augmentation], kind, max_individuals)
    qa = data.qa_sets()[level]
    keep = set(_first_people(qa["id"], max_individuals))
    qa = qa.select([row for row, person in enumerate(qa["id"]) if person in keep])
    attributes = [ATTRIBUTES.index(a) if a in ATTRIBUTES else -1 for a in qa["attribute"]]
    return qa_items(tokenizer, qa["question"], qa["answer"], attributes, kind)


# --------------------------------------------------------------------------- running the model


def _pad(rows: Sequence[list[int]], pad: int, device: torch.device, left: bool = False):
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(n - len(r), n) if left else slice(0, len(r))
        ids[i, cols], attention[i, cols] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), attention.to(device)


def _argmax(model, rows: Sequence[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    ids, attention = _pad(rows, pad, device)
    positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
    return model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.argmax(-1).cpu()


def _read(model, items: list[Item], pad: int, device: torch.device, left_to_right: bool) -> list[list[int]]:
    """The model's tokens at each item's read positions."""
    if not left_to_right:
        pred = _argmax(model, [it.ids for it in items], pad, device)
        return [pred[i, it.where].tolist() for i, it in enumerate(items)]
    # Each pass commits the argmax at the first still-masked position, so later masks are
    # predicted knowing the earlier answer tokens.
    rows = [list(it.ids) for it in items]
    for step in range(max(len(it.where) for it in items)):
        pred = _argmax(model, rows, pad, device)
        for row, it, p in zip(rows, items, pred, strict=True):
            if step < len(it.where):
                row[it.where[step]] = int(p[it.where[step]])
    return [[row[t] for t in it.where] for row, it in zip(rows, items, strict=True)]


def _generate(model, tokenizer: PreTrainedTokenizerFast, items: list[Item], num_beams: int,
              device: torch.device) -> list[list[int]]:
    """Causal decoding from each question; the new tokens up to and with the first eos."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, attention = _pad([it.ids[: it.where[0] + 1] for it in items], pad, device, left=True)
    out = model.generate(input_ids=ids, attention_mask=attention, num_beams=num_beams, do_sample=False, use_cache=True,
                         max_new_tokens=max(len(it.want) for it in items), eos_token_id=eos, pad_token_id=pad)
    rows = out[:, ids.shape[1]:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def _batches(items: list[Item], batch_size: int, show: bool, label: str) -> Iterator[list[int]]:
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))  # similar lengths: little padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    yield from track(batches, description=label, transient=True) if show and len(batches) > 1 else batches


def _score(model, kind: str, tokenizer: PreTrainedTokenizerFast, items: list[Item], qa: bool, cfg: EvalConfig,
           masking: MaskingConfig, device: torch.device, show: bool, label: str) -> list[bool]:
    correct = [False] * len(items)
    left_to_right = kind == "masked" and (not qa or masking.fill == "left_to_right")
    eos = tokenizer.eos_token_id
    for batch in _batches(items, cfg.batch_size, show, label):
        its = [items[i] for i in batch]
        if kind == "causal" and qa and cfg.num_beams > 1:
            got = _generate(model, tokenizer, its, cfg.num_beams, device)
            ok = [g[-1:] == [eos] and decode_answer(tokenizer, g) == it.answer for g, it in zip(got, its, strict=True)]
        else:
            got = _read(model, its, tokenizer.pad_token_id, device, left_to_right)
            ok = [g == it.want for g, it in zip(got, its, strict=True)]
        for i, c in zip(batch, ok, strict=True):
            correct[i] = c
    return correct


def _accuracy(items: list[Item], correct: list[bool], inverse: bool = False) -> dict[str, float]:
    if inverse:
        acc = sum(correct) / len(correct) if correct else float("nan")
        return {"full_name": acc, "mean": acc, "n": len(items)}
    out: dict[str, float] = {}
    for a, name in enumerate(ATTRIBUTES):
        hits = [c for it, c in zip(items, correct, strict=True) if it.attribute == a]
        out[name] = sum(hits) / len(hits) if hits else float("nan")
    out["mean"] = sum(out[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
    out["n"] = len(items)
    return out


# --------------------------------------------------------------------------- public API


def evaluate_model(model, kind: str, tokenizer: PreTrainedTokenizerFast, data: StudyData, augmentation: str,
                   cfg: EvalConfig, masking: MaskingConfig, accelerator: Accelerator | None = None,
                   levels: Sequence[str] = LEVELS) -> dict[str, dict[str, float]]:
    """Per level, per attribute exact-match accuracy, plus "mean" (of the six) and "n" (items);
    inverse levels have "full_name" (= "mean") and "n".

    With several processes each scores a share of the items and every process returns the
    same numbers."""
    if accelerator is not None:
        model, device = accelerator.unwrap_model(model), accelerator.device
        model.to(device)
    else:
        device = next(model.parameters()).device
    main = accelerator is None or accelerator.is_main_process
    split = accelerator is not None and accelerator.num_processes > 1
    was_training = model.training
    model.eval()
    results = {}
    try:
        with torch.no_grad():
            for level in levels:
                items = level_items(level, tokenizer, data, augmentation, kind, cfg.max_individuals)
                mine = list(range(len(items)))
                if split:
                    with accelerator.split_between_processes(mine) as share:
                        mine = list(share)
                scored = _score(model, kind, tokenizer, [items[i] for i in mine], level != "bio_recall", cfg, masking,
                                device, main, f"eval {level}")
                pairs = list(zip(mine, scored, strict=True))
                done = dict(gather_object(pairs) if split else pairs)  # a dict: an index counts once
                if sorted(done) != list(range(len(items))):
                    raise RuntimeError(f"{level}: scored {len(done)} distinct items of {len(items)}")
                results[level] = _accuracy(items, [done[i] for i in range(len(items))], level in INVERSE_LEVELS)
    finally:
        model.train(was_training)
    return results


def majority_baseline(data: StudyData) -> dict[str, float]:
    """Accuracy on P_test of always answering the most common value among P_train individuals."""
    people = data.individuals
    split = people["split"]
    out = {}
    for a in ATTRIBUTES:
        values = people[a]
        guess = Counter(v for v, s in zip(values, split, strict=True) if s == "train").most_common(1)[0][0]
        test = [v for v, s in zip(values, split, strict=True) if s == "test"]
        out[a] = sum(v == guess for v in test) / len(test)
    out["mean"] = sum(out[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
    return out


def predict(model, kind: str, tokenizer: PreTrainedTokenizerFast, questions: list[str], answers: list[str],
            cfg: EvalConfig, masking: MaskingConfig) -> list[str]:
    """The model's decoded answers, for showing examples. Masked models get as many masks as the
    true answer has tokens (the paper's rule); causal ones decode greedily (or with beams) up to
    one token more than the true answer."""
    device = next(model.parameters()).device
    items = qa_items(tokenizer, questions, answers, [0] * len(questions), kind)
    tokens: list[list[int]] = [[] for _ in items]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(items, cfg.batch_size, False, "predict"):
                its = [items[i] for i in batch]
                if kind == "causal":
                    got = _generate(model, tokenizer, its, cfg.num_beams, device)
                else:
                    got = _read(model, its, tokenizer.pad_token_id, device, masking.fill == "left_to_right")
                for i, g in zip(batch, got, strict=True):
                    tokens[i] = g
    finally:
        model.train(was_training)
    return [decode_answer(tokenizer, t) for t in tokens]
