"""The held-out-entity evaluator (STUDY.md, Evaluation): exact match of whole answers, per attribute.

- ``bio_recall``: did the model memorize the biographies? On each person's first biography,
  every token of an attribute value must be predicted from the true text before it: continued
  (causal), or, with the whole value masked, filled in left to right (masked), which is the
  masked analogue of the causal continuation. One-pass filling of a multi-word value asks more
  than memorization: each word without its neighbours, which whole-word masking rarely trains.
  This level is context-rich: the rest of the bio (other values, the template, for a masked
  model the text after the value) can give the value away without the name.
- ``name_tied``: the same reading after a name swap. In A's first bio, every mention of A's full
  name becomes B's (another individual, same pronoun where there is one) and the value read becomes
  B's; an item counts if the model writes B's value, which only the name can tell it. Items where
  A and B share the value are left out. Defined the same way for both kinds, but not the same
  information: the swapped bio keeps A's other values in view, the causal model those before the
  value, the masked model all of them.
- ``sentence_recall``: the same information for both kinds: the value read from one sentence of
  the person's own bio, alone, the full name before the value (`sentence_items`). The name is the only cue
  of the person.
- ``name_and_values`` and ``values_only`` tell the cues apart (`cue_items`): the same sentence read after the
  five other sentences of the person's first bio, so that both kinds see every other value before the value
  read; ``values_only`` puts a name the model never saw in place of every mention of the person's. Against
  sentence recall: what the other values add to the name, and what they give without it.
- ``qa_train``: was the QA format learned? ``qa_val``: people whose QA is never trained on, for
  tuning. ``qa_test``: is the knowledge extractable for people never seen in QA (the headline)?
  A masked model chooses the answer's length itself (``eval.masked_length: free``), as a causal
  one must decide where to stop; ``qa_train_given`` and ``qa_test_given`` are the paper's rule beside
  it, one mask per answer token, which tells the model the length.
- ``inverse_train`` / ``inverse_val`` / ``inverse_test`` (``data.inverse`` only): inverse search, the full
  name from birth date and birth city (or the date alone, ``data.inverse_from``), scored like QA (one
  number, under ``full_name`` and ``mean``).

Every level reduces to `Item`s: a sequence the model reads, the positions whose argmax is
read, and the token each must be. An item counts only if all of them are right.

Every accuracy comes with a 95% interval from a bootstrap over individuals, not over questions:
a person's six answers are not independent (a company and its city are nearly one fact).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from rich.console import Console
from rich.progress import track
from transformers import PreTrainedTokenizerFast

from bidirect.config import EvalConfig
from bidirect.data.generate import StudyData, first_bios
from bidirect.data.templates import question_attribute
from bidirect.protocol import (
    ALL_LEVELS,
    INVERSE_LEVELS,
    MEMORIZATION_LEVELS,
    PAIRED_LEVELS,
    RULES,
    TOLD,
    answer_window,
    cell_levels,
    lay_out,
    split_rule,
)
from bidirect.results import ATTRIBUTES, BASELINES
from bidirect.tokenizer import answer_ids, decode_answer, qa_ids, question_ids, value_token_span


@dataclass
class Item:
    ids: list[int]  # what the model reads
    where: list[int]  # positions whose argmax is read
    want: list[int]  # the token each of those must be
    attribute: int  # index into ATTRIBUTES; -1: inverse search (the answer is the full name)
    answer: str = ""  # QA only: beam search compares decoded text
    person: int = -1  # the individual's id: intervals resample individuals
    tokens: int = 0  # the answer's (value's) length in tokens, end-of-text not counted


BOOTSTRAP_RESAMPLES = 1000


# --------------------------------------------------------------------------- items


def _first_people(ids: Sequence[int], max_individuals: int) -> list[int]:
    return sorted(set(ids))[: max_individuals or None]


@dataclass
class FirstBio:
    """A person's first biography, tokenized as in training, with the tokens of each attribute's value."""

    person: int
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]  # each token's characters in ``text``
    spans: list[tuple[int, int]]  # per attribute (ATTRIBUTES order), its value's tokens: the answer's ids


def first_bio_spans(tokenizer: PreTrainedTokenizerFast, bios: Dataset, max_individuals: int = 0) -> list[FirstBio]:
    """Each person's first biography with its value spans (`tokenizer.value_token_span`), in id order: what bio
    recall, the probes and the capacity measure read."""
    rows = first_bios(bios)
    if max_individuals:
        rows = rows.select(range(min(max_individuals, len(rows))))
    enc = tokenizer(list(rows["text"]), add_special_tokens=False, return_offsets_mapping=True)
    return [FirstBio(person, text, list(ids), list(offsets),
                     [value_token_span(offsets, s, e) for s, e in zip(starts, ends, strict=True)])
            for person, text, ids, offsets, starts, ends in zip(rows["id"], rows["text"], enc["input_ids"],
                                                                enc["offset_mapping"], rows["value_start"],
                                                                rows["value_end"], strict=True)]


def _value_item(ids: list[int], span: tuple[int, int], kind: str, mask: int, attribute: int, person: int) -> Item:
    """Read the value at ``span`` of ``ids``: causal, continued from the true text before it; masked, with the
    whole value masked."""
    i, j = span
    if kind == "causal":
        return Item(ids, list(range(i - 1, j - 1)), ids[i:j], attribute, person=person, tokens=j - i)
    return Item(ids[:i] + [mask] * (j - i) + ids[j:], list(range(i, j)), ids[i:j], attribute, person=person,
                tokens=j - i)


def bio_items(tokenizer: PreTrainedTokenizerFast, bios: Dataset, kind: str, max_individuals: int = 0) -> list[Item]:
    """One item per attribute of each person's first biography."""
    return [_value_item(bio.ids, span, kind, tokenizer.mask_token_id, a, bio.person)
            for bio in first_bio_spans(tokenizer, bios, max_individuals) for a, span in enumerate(bio.spans)]


def _value_items(tokenizer: PreTrainedTokenizerFast, texts: list[list[tuple[str, tuple[int, int]]]],
                 people: list[int], kind: str) -> list[Item]:
    """Items reading a value in a text: per person, per attribute, a text and the value's characters."""
    flat = [(p, a, text, span) for p, person in zip(people, texts, strict=True)
            for a, (text, span) in enumerate(person) if text]
    enc = tokenizer([text for _, _, text, _ in flat], add_special_tokens=False, return_offsets_mapping=True)
    return [_value_item(ids, value_token_span(offsets, start, end), kind, tokenizer.mask_token_id, a, person)
            for (person, a, _, (start, end)), ids, offsets in zip(flat, enc["input_ids"], enc["offset_mapping"],
                                                                  strict=True)]


def name_partners(individuals: Dataset) -> dict[int, int]:
    """Each individual's partner for the name swap: the next one of the same pronoun, by id (so that
    no pronoun contradicts the swapped-in name); the next one at all where a pronoun is alone."""
    ids, pronouns = list(individuals["id"]), list(individuals["pronoun"])
    groups: dict[str, list[int]] = {}
    for person, pronoun in zip(ids, pronouns, strict=True):
        groups.setdefault(pronoun, []).append(person)
    order = sorted(ids)
    partner = {}
    for person, pronoun in zip(ids, pronouns, strict=True):
        group = sorted(groups[pronoun]) if len(groups[pronoun]) > 1 else order
        partner[person] = group[(group.index(person) + 1) % len(group)]
    return partner


def swap_name(text: str, span: tuple[int, int], name: str, new_name: str,
              new_value: str) -> tuple[str, tuple[int, int]]:
    """``text`` with every mention of ``name`` replaced by ``new_name`` and the value at ``span`` by
    ``new_value``; returns the new text and the new value's characters."""
    cuts = [(span[0], span[1], new_value, True)]
    at = text.find(name)
    while at >= 0:
        if at + len(name) <= span[0] or at >= span[1]:
            cuts.append((at, at + len(name), new_name, False))
        at = text.find(name, at + len(name))
    out, last, value = [], 0, (0, 0)
    for start, end, new, is_value in sorted(cuts):
        out.append(text[last:start])
        begin = sum(map(len, out))
        out.append(new)
        if is_value:
            value = (begin, begin + len(new))
        last = end
    out.append(text[last:])
    return "".join(out), value


def name_tied_items(tokenizer: PreTrainedTokenizerFast, bios: Dataset, individuals: Dataset, kind: str,
                    max_individuals: int = 0) -> list[Item]:
    """Bio recall after a name swap (see the module's docstring): the partner's value is wanted."""
    rows = first_bios(bios)
    if max_individuals:
        rows = rows.select(range(min(max_individuals, len(rows))))
    partner = name_partners(individuals)
    people = {p["id"]: p for p in individuals}
    texts = []
    for row in rows:
        me, other = people[row["id"]], people[partner[row["id"]]]
        person = []
        for a, (start, end) in enumerate(zip(row["value_start"], row["value_end"], strict=True)):
            if other[ATTRIBUTES[a]] == me[ATTRIBUTES[a]] or other["id"] == me["id"]:
                person.append(("", (0, 0)))  # the swap would not show which one the model read
                continue
            person.append(swap_name(row["text"], (start, end), me["full_name"], other["full_name"],
                                    other[ATTRIBUTES[a]]))
        texts.append(person)
    return _value_items(tokenizer, texts, list(rows["id"]), kind)


def sentence_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The characters of the sentence holding the value at ``start:end`` in a bio: every template is one sentence
    with its only full stop at its end, and no name or value has one, so sentences are cut at full stops."""
    begin = text.rfind(". ", 0, start)
    return (0 if begin < 0 else begin + 2), text.index(".", end) + 1


def _name_sentences(bios: Dataset, individuals: Dataset, people: list[int]) -> dict[int, list]:
    """Per person and attribute, the sentence sentence recall reads: the value's sentence from the person's first
    bio in which that sentence names the person before the value, with the space before it in the bio, and the
    value's characters in it; ("", (0, 0)) where no bio has one."""
    names = dict(zip(individuals["id"], individuals["full_name"], strict=True))
    wanted = set(people)
    found: dict[int, list] = {p: [("", (0, 0))] * len(ATTRIBUTES) for p in people}
    for person, text, starts, ends in zip(bios["id"], bios["text"], bios["value_start"], bios["value_end"],
                                          strict=True):
        if person not in wanted:
            continue
        for a, (start, end) in enumerate(zip(starts, ends, strict=True)):
            if found[person][a][0]:
                continue
            begin, stop = sentence_span(text, start, end)
            if names[person] in text[begin:start]:
                lead = max(begin - 1, 0)  # the space before it, as the bio has it
                found[person][a] = (text[lead:stop], (start - lead, end - lead))
    return found


def sentence_items(tokenizer: PreTrainedTokenizerFast, bios: Dataset, individuals: Dataset, kind: str,
                   max_individuals: int = 0) -> list[Item]:
    """Sentence recall (see the module's docstring): per person and attribute, the value's sentence from the
    person's first bio in which that sentence names the person before the value, read alone. Both kinds get the
    same input: the full name and the template's words, no other value of the person; a causal model continues it,
    a masked model fills the value's masks (told its length, as in bio recall) with the sentence's end in view.
    The sentence keeps the space before it in the bio, so its tokens are the bio's own. A person whose bios never
    name them before a value (no ``fullname``, the attribute never first) has no item for it."""
    people = sorted(set(bios["id"]))[: max_individuals or None]
    found = _name_sentences(bios, individuals, people)
    return _value_items(tokenizer, [found[p] for p in people], people, kind)


def unseen_names(individuals: Dataset) -> dict[int, str]:
    """Per individual, a full name no individual of the study has, made of other individuals' name parts so that
    every word of it is one the tokenizer knows: the first name of the next individual of the same pronoun (as
    `name_partners` picks it), the middle name of the one after, the last name of the one after that."""
    partner = name_partners(individuals)
    names = dict(zip(individuals["id"], individuals["full_name"], strict=True))
    taken = set(names.values())
    order = sorted(names)
    unseen = {}
    for person in order:
        for shift in range(1, len(order) + 1):
            middle, last = (names[order[(order.index(person) + shift * k) % len(order)]] for k in (2, 3))
            parts = [names[partner[person]].split()[0], *middle.split()[1:-1], last.split()[-1]]
            candidate = " ".join(parts)
            if candidate not in taken and candidate != names[person]:
                unseen[person] = candidate
                break
        else:
            raise ValueError("every combination of the study's name parts is someone's name")
    return unseen


def cue_items(tokenizer: PreTrainedTokenizerFast, bios: Dataset, individuals: Dataset, kind: str, named: bool,
              max_individuals: int = 0) -> list[Item]:
    """``name_and_values`` (``named``) and ``values_only`` (see the module's docstring): per person and attribute,
    the other five sentences of the person's first bio in its order, then the sentence sentence recall reads, the
    value in it read as there. Every other value of the person is before the value, so a causal model sees what a
    masked one sees but the sentence's end. ``named`` False: every mention of the person's full name is another
    (`unseen_names`), so only the other values (and the template) can tell the model whose value it reads."""
    people = sorted(set(bios["id"]))[: max_individuals or None]
    target = _name_sentences(bios, individuals, people)
    names = dict(zip(individuals["id"], individuals["full_name"], strict=True))
    values = {p["id"]: p for p in individuals}
    unseen = unseen_names(individuals) if not named else {}
    texts = []
    for row in first_bios(bios).select(range(len(people))):
        person = row["id"]
        spans = [sentence_span(row["text"], s, e) for s, e in zip(row["value_start"], row["value_end"], strict=True)]
        cues = []
        for a, (sentence, (start, end)) in enumerate(target[person]):
            if not sentence:
                cues.append(("", (0, 0)))
                continue
            others = " ".join(row["text"][b:e] for i, (b, e) in sorted(enumerate(spans), key=lambda x: x[1][0])
                              if i != a)
            if not sentence.startswith(" "):  # the bio's first sentence: the space a later one has before it
                sentence, start, end = f" {sentence}", start + 1, end + 1
            text, span = f"{others}{sentence}", (len(others) + start, len(others) + end)
            if not named:  # the value's characters move with the names replaced before it
                text, span = swap_name(text, span, names[person], unseen[person], values[person][ATTRIBUTES[a]])
            cues.append((text, span))
        texts.append(cues)
    return _value_items(tokenizer, texts, people, kind)


def qa_items(tokenizer: PreTrainedTokenizerFast, questions: Sequence[str], answers: Sequence[str],
             attributes: Sequence[int], kind: str, people: Sequence[int] | None = None, window: int = 0) -> list[Item]:
    """QA items, laid out as the model was fine-tuned (`protocol.lay_out`): causal, the answer and end-of-text read
    after the question; masked, one mask per answer token (the rules that choose the length put other numbers of
    masks there, `_with_length`), or, with ``window`` > 0, an answer window whose reading must be the answer, then
    end-of-text."""
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    people = people if people is not None else [-1] * len(questions)
    items = []
    for question, answer, a, person in zip(questions, answers, attributes, people, strict=True):
        ans = answer_ids(tokenizer, answer)
        ids, where, want = lay_out(kind, question_ids(tokenizer, question), ans, eos, mask, window)
        items.append(Item(ids, where, want, a, answer, person, len(ans)))
    return items


def level_items(level: str, tokenizer: PreTrainedTokenizerFast, data: StudyData, augmentation: str, kind: str,
                max_individuals: int = 0, window: int = 0) -> list[Item]:
    """The items of a level; ``window`` > 0: masked QA read from an answer window of that many masks."""
    if level == "bio_recall":
        return bio_items(tokenizer, data.bios[augmentation], kind, max_individuals)
    if level == "name_tied":
        return name_tied_items(tokenizer, data.bios[augmentation], data.individuals, kind, max_individuals)
    if level == "sentence_recall":
        return sentence_items(tokenizer, data.bios[augmentation], data.individuals, kind, max_individuals)
    if level in ("name_and_values", "values_only"):
        return cue_items(tokenizer, data.bios[augmentation], data.individuals, kind, level == "name_and_values",
                         max_individuals)
    qa = data.qa_sets()[split_rule(level)[0]]
    keep = set(_first_people(qa["id"], max_individuals))
    qa = qa.select([row for row, person in enumerate(qa["id"]) if person in keep])
    attributes = [ATTRIBUTES.index(a) if a in ATTRIBUTES else -1 for a in qa["attribute"]]
    return qa_items(tokenizer, qa["question"], qa["answer"], attributes, kind, list(qa["id"]), window)


def _train_answers(tokenizer: PreTrainedTokenizerFast, data: StudyData) -> list[tuple[int, int]]:
    """(attribute, length in tokens) of every P_train answer (inverse ones: attribute -1): what a model could
    know about answer lengths from its training, never from the held-out answers."""
    out = []
    for name, ds in data.qa_sets().items():
        if name.endswith("_train"):
            lengths = [len(ids) for ids in qa_ids(tokenizer, [], list(ds["answer"]))[1]]
            out += [(ATTRIBUTES.index(a) if a in ATTRIBUTES else -1, n) for a, n in zip(ds["attribute"], lengths)]
    return out


def max_answer_tokens(tokenizer: PreTrainedTokenizerFast, data: StudyData) -> int:
    """The longest P_train answer in tokens: free-length decoding tries every length up to it, and the answer
    window (masking.answer: window) is one longer, for the end-of-text."""
    return max(n for _, n in _train_answers(tokenizer, data))


def length_prior(tokenizer: PreTrainedTokenizerFast, data: StudyData) -> dict[int, dict[int, float]]:
    """Per attribute (-1: inverse search), the log-probability of each answer length from 1 to the longest P_train
    answer, counted among P_train's answers for that attribute, add-one smoothed (a length P_train never gave that
    attribute stays possible, made unlikely): the ``prior`` rule's length distribution, predicted from the
    question's attribute alone."""
    return _length_prior(_train_answers(tokenizer, data))


def _length_prior(answers: list[tuple[int, int]]) -> dict[int, dict[int, float]]:
    longest = max(n for _, n in answers)
    counts: dict[int, Counter] = {}
    for attribute, n in answers:
        counts.setdefault(attribute, Counter())[n] += 1
    return {a: {n: math.log((c[n] + 1) / (sum(c.values()) + longest)) for n in range(1, longest + 1)}
            for a, c in counts.items()}


# --------------------------------------------------------------------------- running the model


def pad_rows(rows: Sequence[list[int]], pad: int, device: torch.device,
             left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded into one batch (right, or left for generation) and its attention mask, on ``device``."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(n - len(r), n) if left else slice(0, len(r))
        ids[i, cols], attention[i, cols] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), attention.to(device)


def score_forward(model, rows: Sequence[list[int]] | tuple[torch.Tensor, torch.Tensor], pad: int,
                  device: torch.device, **kwargs: Any) -> Any:
    """The one forward pass every reading of a trained model makes (evaluation, probes, capacity): rows right-padded
    (or already padded: ``pad_rows``'s ids and mask), masked, with positions counted from each row's first token as
    in training. ``kwargs`` go to the model (``output_hidden_states=True``)."""
    ids, attention = rows if isinstance(rows, tuple) else pad_rows(rows, pad, device)
    positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
    return model(input_ids=ids, attention_mask=attention, position_ids=positions, **kwargs)


def _argmax(model, rows: Sequence[list[int]], where: Sequence[list[int]], pad: int,
            device: torch.device) -> tuple[list[list[int]], list[list[float]]]:
    """Per row, the argmax token at each of its ``where`` positions and its log-probability. Only the read
    positions leave the device, in one transfer."""
    width = max(len(w) for w in where)
    index = torch.tensor([w + [w[-1]] * (width - len(w)) for w in where], device=device)  # repeat to a rectangle
    logits = score_forward(model, rows, pad, device).logits
    read = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1])).float().log_softmax(-1).max(-1)
    tokens, logp = read.indices.tolist(), read.values.tolist()
    return [t[: len(w)] for t, w in zip(tokens, where)], [p[: len(w)] for p, w in zip(logp, where)]


def read_masks(model, items: list[Item], pad: int, device: torch.device,
               fill: str) -> tuple[list[list[int]], list[float]]:
    """The model's tokens at each item's read positions, and their mean log-probability. ``fill``: every position
    in one pass (``one_pass``), or one pass per position, each committing its argmax so that the later ones are
    predicted knowing it: the first still-masked position (``left_to_right``), or the one the model is surest of
    (``confidence``, the order of masked-diffusion samplers and MaskGIT)."""
    if fill == "one_pass":
        tokens, logp = _argmax(model, [it.ids for it in items], [it.where for it in items], pad, device)
        return tokens, [sum(p) / len(p) for p in logp]
    rows = [list(it.ids) for it in items]
    left = [list(it.where) for it in items]  # still masked, in order
    sums = [0.0] * len(items)
    for _ in range(max(len(it.where) for it in items)):
        at = [positions if fill == "confidence" else positions[:1] for positions in left]
        tokens, logp = _argmax(model, rows, [a or it.where[-1:] for a, it in zip(at, items, strict=True)], pad, device)
        for i, (row, positions) in enumerate(zip(rows, left, strict=True)):
            if positions:
                k = max(range(len(at[i])), key=logp[i].__getitem__)  # left_to_right: the only one read
                row[positions.pop(k)] = tokens[i][k]
                sums[i] += logp[i][k]
    return ([[row[t] for t in it.where] for row, it in zip(rows, items, strict=True)],
            [total / len(it.where) for total, it in zip(sums, items, strict=True)])


def _with_length(item: Item, length: int, mask: int) -> Item:
    """A masked QA item with ``length`` masks where the answer goes (the rest as it was)."""
    q = item.where[0]
    tail = item.ids[q + len(item.where):]  # the end-of-text after the masks
    return replace(item, ids=item.ids[:q] + [mask] * length + tail, where=list(range(q, q + length)))


def length_candidates(model, items: list[Item], mask: int, pad: int, device: torch.device, fill: str,
                      longest: int) -> list[list[tuple[float, list[int]]]]:
    """Masked QA without the answer's length: per item, for every length from 1 to ``longest``, the filled
    tokens and their mean log-probability (the reading of the rules that read ``lengths``: free, prior)."""
    out: list[list[tuple[float, list[int]]]] = [[] for _ in items]
    for length in range(1, longest + 1):
        got, score = read_masks(model, [_with_length(it, length, mask) for it in items], pad, device, fill)
        for i, (tokens, s) in enumerate(zip(got, score, strict=True)):
            out[i].append((s, tokens))
    return out


def generate_answers(model, tokenizer: PreTrainedTokenizerFast, items: list[Item], num_beams: int,
                     device: torch.device) -> list[list[int]]:
    """Causal decoding from each question; the new tokens up to and with the first eos."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, attention = pad_rows([it.ids[: it.where[0] + 1] for it in items], pad, device, left=True)
    out = model.generate(input_ids=ids, attention_mask=attention, num_beams=num_beams, do_sample=False, use_cache=True,
                         max_new_tokens=max(len(it.want) for it in items), eos_token_id=eos, pad_token_id=pad)
    rows = out[:, ids.shape[1]:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def _batches(items: list[Item], batch_size: int, show: bool, label: str) -> Iterator[list[int]]:
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))  # similar lengths: little padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    yield from track(batches, description=label, transient=True) if show and len(batches) > 1 else batches


def score_items(model, kind: str, tokenizer: PreTrainedTokenizerFast, items: list[Item], qa: bool, rule: str | None,
                cfg: EvalConfig, device: torch.device, show: bool, label: str, longest: int = 0,
                prior: dict[int, dict[int, float]] | None = None,
                cache: dict[int, list] | None = None) -> tuple[list[bool], list[int | None]]:
    """Per item: right or wrong, and the length in tokens of the answer the model gave (None where not read).
    ``rule``: for masked QA (``qa``) the answer-length rule (`protocol.RULES`), read as it says (``lengths``,
    ``window`` or ``told``) and decoded by its ``choose``. ``cache`` keeps each item's candidate fills (by its index
    in ``items``), which the rules that read ``lengths`` share."""
    correct: list[bool] = [False] * len(items)
    lengths: list[int | None] = [None] * len(items)
    # A masked model fills a memorized value left to right (the masked analogue of the causal continuation) and
    # a QA answer as eval.fill says; a causal model reads every position of its teacher-forced row in one pass.
    fill = "one_pass" if kind == "causal" else cfg.fill if qa else "left_to_right"
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    cache = {} if cache is None else cache
    reads = RULES[rule].reads if rule is not None else None
    for batch in _batches(items, cfg.batch_size, show, label):
        its = [items[i] for i in batch]
        if kind == "causal" and qa and cfg.num_beams > 1:
            got = generate_answers(model, tokenizer, its, cfg.num_beams, device)
            ok = [g[-1:] == [eos] and decode_answer(tokenizer, g) == it.answer for g, it in zip(got, its, strict=True)]
        elif reads == "lengths":
            todo = [i for i in batch if i not in cache]
            if todo:
                found = length_candidates(model, [items[i] for i in todo], tokenizer.mask_token_id, pad, device,
                                          fill, longest)
                cache.update(zip(todo, found, strict=True))
            got = [RULES[rule].choose(cache[i], (prior or {}).get(items[i].attribute, {}), eos) for i in batch]
            ok = [g == it.want for g, it in zip(got, its, strict=True)]
        elif reads == "window":
            got = [RULES[rule].choose(g, {}, eos) for g in read_masks(model, its, pad, device, fill)[0]]
            ok = [g == it.want for g, it in zip(got, its, strict=True)]
            got = [g[:-1] if g[-1:] == [eos] else None for g in got]  # no end-of-text: no length chosen
        elif reads == "told" and its[0].want[-1:] == [eos]:  # a window model told the length: stop not asked
            got = [g[: it.tokens] for g, it in zip(read_masks(model, its, pad, device, fill)[0], its, strict=True)]
            ok = [g == it.want[:-1] for g, it in zip(got, its, strict=True)]
        else:
            got = read_masks(model, its, pad, device, fill)[0]
            ok = [g == it.want for g, it in zip(got, its, strict=True)]
        for i, c, g in zip(batch, ok, got, strict=True):
            correct[i] = c
            lengths[i] = None if g is None or rule is None else len(g)
    return correct, lengths


def _per_person(items: list[Item], correct: list[bool], columns: Sequence[str]) -> dict[str, list]:
    """Each individual's right answers and items per column (attribute, or the one inverse column): what every
    interval resamples, kept in results.json so that two backbones' levels can be compared person by person."""
    people = sorted({it.person for it in items})
    row = {p: i for i, p in enumerate(people)}
    hits = [[0] * len(columns) for _ in people]
    count = [[0] * len(columns) for _ in people]
    for it, c in zip(items, correct, strict=True):
        col = max(it.attribute, 0) if len(columns) > 1 else 0
        hits[row[it.person]][col] += int(c)
        count[row[it.person]][col] += 1
    return {"id": people, "hits": hits, "items": count}


def _resampled_accuracy(hits: np.ndarray, count: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample (a row of ``weights``: how often each person is drawn) and column, the accuracy."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ hits) / (weights @ count)


def _weights(people: int, resamples: int, seed: int) -> np.ndarray:
    # One multinomial draw per resample: how often each person is drawn, so an interval over 10,000
    # people costs two matrix products instead of a copy of every item per resample.
    return np.random.default_rng(seed).multinomial(people, [1 / people] * people, size=resamples)


def person_intervals(items: list[Item], correct: list[bool], columns: Sequence[str],
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, list[float] | None]:
    """95% percentile intervals of each column's accuracy and of their mean, resampling individuals
    with replacement (all of a person's items go together). Deterministic in ``seed``."""
    return _intervals(_per_person(items, correct, columns), columns, resamples, seed)


def _intervals(table: dict[str, list], columns: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
               seed: int = 0) -> dict[str, list[float] | None]:
    """`person_intervals` from a `_per_person` table."""
    if not table["id"]:
        return dict.fromkeys([*columns, "mean"])
    hits, count = np.array(table["hits"], dtype=float), np.array(table["items"], dtype=float)
    acc = _resampled_accuracy(hits, count, _weights(len(table["id"]), resamples, seed))
    present = count.sum(0) > 0
    out: dict[str, list[float] | None] = {}
    for j, name in enumerate(columns):
        out[name] = np.nanpercentile(acc[:, j], [2.5, 97.5]).tolist() if present[j] else None
    means = np.nanmean(acc[:, present], axis=1) if present.any() else None
    out["mean"] = np.percentile(means, [2.5, 97.5]).tolist() if means is not None else None
    return out


def paired_difference(first: dict[str, Any], second: dict[str, Any], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict[str, Any] | None:
    """The difference of two levels' means (``first`` minus ``second``, each a level of results.json with its
    ``per_person``) over the individuals both scored, with a 95% interval from one bootstrap that resamples the
    same people for both: two backbones answer the same people, so the difference is paired, and its interval is
    not read from whether two intervals overlap. The mean is over the attributes both have items for. None
    where either level has no ``per_person`` (results made before it was kept) or no person is shared."""
    a, b = first.get("per_person"), second.get("per_person")
    if not a or not b:
        return None
    shared = sorted(set(a["id"]) & set(b["id"]))
    if not shared:
        return None
    rows = []
    for table in (a, b):
        at = {p: i for i, p in enumerate(table["id"])}
        rows.append((np.array([table["hits"][at[p]] for p in shared], dtype=float),
                     np.array([table["items"][at[p]] for p in shared], dtype=float)))
    present = (rows[0][1].sum(0) > 0) & (rows[1][1].sum(0) > 0)
    point = [(h.sum(0)[present] / c.sum(0)[present]).mean() for h, c in rows]
    weights = _weights(len(shared), resamples, seed)
    diffs = [np.nanmean(_resampled_accuracy(h, c, weights)[:, present], axis=1) for h, c in rows]
    return {"difference": float(point[0] - point[1]), "ci95": np.percentile(diffs[0] - diffs[1], [2.5, 97.5]).tolist(),
            "people": len(shared)}


def paired_differences(cell: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of backbones of one augmentation (``cell``: backbone -> its levels, in the study's order),
    compared on the same people (`paired_difference`): memorization (name-tied, sentence recall) and P_test,
    the second backbone's other answer-length rules (qa_test_given, ...) against the first's P_test."""
    out = []
    names = list(cell)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            pairs = [(lv, lv) for lv in PAIRED_LEVELS]
            pairs += [(lv if lv in cell[first] else "qa_test", lv) for lv in cell[second] if lv.startswith("qa_test_")]
            for a, b in pairs:
                if a in cell[first] and b in cell[second]:
                    diff = paired_difference(cell[first][a], cell[second][b])
                    if diff is not None:
                        out.append({"first": first, "second": second, "levels": [a, b], **diff})
    return out


def _accuracy(items: list[Item], correct: list[bool], inverse: bool = False) -> dict:
    """Accuracy per attribute, their mean, the number of items and of people, and the 95% intervals."""
    people = len({it.person for it in items})
    if inverse:
        acc = sum(correct) / len(correct) if correct else float("nan")
        table = _per_person(items, correct, ["full_name"])
        return {"full_name": acc, "mean": acc, "n": len(items), "people": people,
                "ci95": _intervals(table, ["full_name"]), "per_person": table}
    out: dict = {}
    for a, name in enumerate(ATTRIBUTES):
        hits = [c for it, c in zip(items, correct, strict=True) if it.attribute == a]
        out[name] = sum(hits) / len(hits) if hits else None  # null in results.json, as written
    # The mean over the attributes that have items (sentence recall has none for a value no sentence names its
    # person before; every other level has all six).
    present = [out[a] for a in ATTRIBUTES if out[a] is not None]
    out["mean"] = sum(present) / len(present) if present else float("nan")
    out["n"] = len(items)
    out["people"] = people
    table = _per_person(items, correct, ATTRIBUTES)
    out["ci95"] = _intervals(table, ATTRIBUTES)
    out["per_person"] = table
    out["by_length"] = by_length(items, correct)
    return out


def by_length(items: list[Item], correct: list[bool]) -> dict[str, dict[str, float | int]]:
    """Accuracy over the items whose answer is one token and over those of several (the paper: a masked model
    extracts standalone words only), each with its item count; a group with no items is left out."""
    out = {}
    for name, keep in (("one_token", lambda n: n == 1), ("several_tokens", lambda n: n > 1)):
        hits = [c for it, c in zip(items, correct, strict=True) if keep(it.tokens)]
        if hits:
            out[name] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
    return out


# --------------------------------------------------------------------------- public API


def evaluate_model(model, kind: str, tokenizer: PreTrainedTokenizerFast, data: StudyData, augmentation: str,
                   cfg: EvalConfig, accelerator: Accelerator | None = None, levels: Sequence[str] = ALL_LEVELS,
                   answer: str = "exact") -> dict[str, dict[str, float]]:
    """Per level, per attribute exact-match accuracy, plus "mean" (of the six), "n" (items), "people"
    and "ci95" (per-person bootstrap intervals); inverse levels have "full_name" (= "mean"); masked QA
    levels have "true_length", the share of answers given at the true length in tokens.
    Levels the data, the kind or the fine-tuning (``answer``: masking.answer) does not have (qa_val
    without P_val, qa_test_given for a causal model, the headline rule again) are left out.

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
    available = {*MEMORIZATION_LEVELS, *cell_levels(kind, answer, cfg.masked_length, list(data.qa_sets()))}
    answers = _train_answers(tokenizer, data) if kind == "masked" else []  # tokenized once for both
    longest = max(n for _, n in answers) if answers else 0  # as max_answer_tokens
    window = answer_window(answer, longest)
    prior = _length_prior(answers) if answers else None
    candidates: dict[str, dict[int, list]] = {}  # per QA set: the free and prior rules read the same fills
    live = Console().is_terminal
    try:
        with torch.no_grad():
            for level in (lv for lv in levels if lv in available):
                started = time.perf_counter()
                qa = level not in MEMORIZATION_LEVELS
                qa_set, rule = split_rule(level)
                rule = (rule or cfg.masked_length) if qa and kind == "masked" else None
                items = level_items(level, tokenizer, data, augmentation, kind, cfg.max_individuals,
                                    window if qa else 0)
                mine = list(range(len(items)))
                if split:
                    with accelerator.split_between_processes(mine) as share:
                        mine = list(share)
                correct, lengths = score_items(model, kind, tokenizer, [items[i] for i in mine], qa, rule, cfg,
                                               device, main, f"eval {level}", longest, prior,
                                               candidates.setdefault(qa_set, {}))
                pairs = list(zip(mine, zip(correct, lengths, strict=True), strict=True))
                done = dict(gather_object(pairs) if split else pairs)  # a dict: an index counts once
                if sorted(done) != list(range(len(items))):
                    raise RuntimeError(f"{level}: scored {len(done)} distinct items of {len(items)}")
                results[level] = _accuracy(items, [done[i][0] for i in range(len(items))], qa_set in INVERSE_LEVELS)
                if rule is not None:
                    given = [done[i][1] for i in range(len(items))]
                    results[level]["true_length"] = sum(n == it.tokens for n, it in zip(given, items)) / len(items)
                if main and not live:  # a log file sees each level as it ends, as the trainer's steps
                    print(f"eval {level}: {len(items)} items, {100 * results[level]['mean']:.1f}% "
                          f"in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        model.train(was_training)
    return results


def answer_room(tokenizer: PreTrainedTokenizerFast, data: StudyData, length: int | None = None) -> int:
    """The tokens `answer_questions` puts after a question, whatever the model's kind and rule: one past the longest
    P_train answer (or the told ``length``), and end-of-text. The question and these must fit the model's context."""
    return max(max(n for _, n in _train_answers(tokenizer, data)), length or 0) + 1


def answer_questions(model, kind: str, tokenizer: PreTrainedTokenizerFast, data: StudyData, questions: Sequence[str],
                     cfg: EvalConfig, answer: str = "exact", length: int | None = None) -> list[str]:
    """Each question's answer as the evaluator decodes it, where no answer is known to score (`bidirect ask`).
    Causal: greedy (eval.num_beams beams: beam search) until end-of-text, at most one token past the longest P_train
    answer; the evaluator's teacher-forced exact match is this greedy decoding, scored. Masked: the masks filled by
    eval.fill and the length chosen by eval.masked_length, as `score_items` does; with ``length``, told the length
    (the paper's rule, `protocol.TOLD`). ``answer``: how the model was fine-tuned (masking.answer). A rule by the
    attribute (prior) reads it from the question's form (`question_attribute`); one in no form of the study gets no
    prior (an empty answer)."""
    device = next(model.parameters()).device
    eos, mask, pad = tokenizer.eos_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id
    answers = _train_answers(tokenizer, data)
    longest = max(n for _, n in answers)
    rule = RULES[TOLD if length is not None else cfg.masked_length]
    asked = [question_ids(tokenizer, q) for q in questions]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if kind == "causal":  # want: only its length is read, the most new tokens
                asking = [Item(q, [len(q) - 1], [eos] * (longest + 1), -1) for q in asked]
                got = generate_answers(model, tokenizer, asking, cfg.num_beams, device)
            elif answer == "window":  # the answer window, as fine-tuned (`level_items`)
                items = [Item(*lay_out(kind, q, [], eos, mask, answer_window(answer, longest)), -1) for q in asked]
                read = read_masks(model, items, pad, device, cfg.fill)[0]
                got = [g[:length] if rule.reads == "told" else rule.choose(g, {}, eos) for g in read]
            else:  # one mask per answer token; the rules that read ``lengths`` try every length (`_with_length`)
                attributes = [question_attribute(q) for q in questions]
                items = [Item(*lay_out(kind, q, [mask] * (length or 1), eos, mask),
                              ATTRIBUTES.index(a) if a in ATTRIBUTES else -1) for q, a in zip(asked, attributes)]
                if rule.reads == "told":
                    got = read_masks(model, items, pad, device, cfg.fill)[0]
                else:  # a question in no form of the study has no attribute, so no length prior
                    prior = _length_prior(answers)
                    found = length_candidates(model, items, mask, pad, device, cfg.fill, longest)
                    got = [rule.choose(c, {} if a is None else prior.get(it.attribute, {}), eos)
                           for c, it, a in zip(found, items, attributes, strict=True)]
    finally:
        model.train(was_training)
    return [decode_answer(tokenizer, g) for g in got]


def majority_baseline(data: StudyData, tokenizer: PreTrainedTokenizerFast | None = None) -> dict[str, float]:
    """Accuracy on P_test of always answering the most common value among P_train individuals.

    With ``tokenizer``: the baseline that knows the answer's length, as masked QA with the paper's
    given-length rule does: the most common P_train value of the true answer's length in tokens."""
    people = data.individuals
    split = people["split"]
    out = {}
    for a in ATTRIBUTES:
        values = people[a]
        length = (lambda v: len(answer_ids(tokenizer, v))) if tokenizer is not None else (lambda v: 0)
        counts: dict[int, Counter] = {}
        for v, s in zip(values, split, strict=True):
            if s == "train":
                counts.setdefault(length(v), Counter())[v] += 1
        test = [v for v, s in zip(values, split, strict=True) if s == "test"]
        hits = 0
        for v in test:
            guess = counts.get(length(v))
            hits += guess is not None and guess.most_common(1)[0][0] == v
        out[a] = hits / len(test)
    out["mean"] = sum(out[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
    return out


def majority_baselines(data: StudyData, tokenizer: PreTrainedTokenizerFast) -> dict[str, dict[str, float]]:
    """Both baselines, under the keys results.json and the tables use (`results.BASELINES`: plain, then told
    the answer's length)."""
    return dict(zip(BASELINES, (majority_baseline(data), majority_baseline(data, tokenizer)), strict=True))
