"""The evaluation protocol, in one place: the levels a model is read at, the answer-length rules of masked QA,
and how each kind of backbone lays out an answer after its question.

Every other module follows from these tables: config validates ``eval.masked_length`` against `RULES`, the
objectives lay out QA for training with `lay_out`, the evaluator and `bidirect ask` lay out and decode answers
with it and the rules' `LengthRule.choose`, and the tables, captions and legends take their names and marks from
here. A new answer-length rule is one `LengthRule` in `RULES` (its levels ``qa_<split>_<rule>`` and
``inverse_<split>_<rule>``, its config value, its mark and legend follow); a new level is a name in a level
tuple and in `LEVEL_NAMES`, plus its items in bidirect.evaluate (`level_items`).

Torch-free and importing nothing of bidirect's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------- levels

# Read on the model that trained on the biographies (bidirect.evaluate's module docstring says what each asks).
MEMORIZATION_LEVELS = ("bio_recall", "name_tied", "sentence_recall", "name_and_values", "values_only")
# The QA sets: qa_val exists only with data.p_val > 0.
QA_SPLITS = ("train", "val", "test")
QA_LEVELS = tuple(f"qa_{split}" for split in QA_SPLITS)
# Inverse search, where the data has inverse QA (data.inverse; inverse_val only with P_val too).
INVERSE_LEVELS = tuple(f"inverse_{split}" for split in QA_SPLITS)
LEVELS = (*MEMORIZATION_LEVELS, *QA_LEVELS)

# How tables, figures and DataFrames' readers name each level; a rule's levels add its name or mark (`level_name`).
LEVEL_NAMES = {"bio_recall": "bio recall", "name_tied": "name-tied", "sentence_recall": "sentence",
               "name_and_values": "name+values", "values_only": "values only",
               "qa_train": "QA P_train", "qa_val": "QA P_val", "qa_test": "QA P_test",
               "inverse_train": "inverse P_train", "inverse_val": "inverse P_val", "inverse_test": "inverse P_test"}

# --------------------------------------------------------------------------- answer-length rules


def choose_length(candidates: Sequence[tuple[float, list[int]]], prior: dict[int, float] | None = None) -> list[int]:
    """The answer kept among an item's candidates (one per length, from 1): the best mean log-probability, plus
    the log-probability of the length under ``prior`` where given (every length from 1 to the longest P_train
    answer; one outside it is no candidate); the shorter on a tie."""
    best, answer = -math.inf, []
    for length, (score, tokens) in enumerate(candidates, start=1):
        if prior is not None:
            score = score + prior.get(length, -math.inf)
        if score > best:
            best, answer = score, tokens
    return answer


def read_window(tokens: list[int], eos: int) -> list[int]:
    """An answer window's reading: its tokens up to and with the first end-of-text (all of them without one)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@dataclass(frozen=True)
class LengthRule:
    """How a masked model's answer length is chosen at evaluation (``eval.masked_length``).

    ``reads`` is what the evaluator asks the model for, one of three readings bidirect.evaluate makes:
    ``lengths`` (the masks filled at every length from 1 to the longest P_train answer, each with its mean
    log-probability), ``window`` (the answer window filled in one reading) or ``told`` (the masks filled at the true
    length). ``choose(reading, prior, eos)`` turns the reading into the answer's tokens (``lengths``: the
    candidates; ``prior``: the length prior of the question's attribute, empty where the attribute is unknown).
    ``answers``: the ways of fine-tuning (masking.answer) whose models it decodes."""

    name: str
    reads: str
    answers: tuple[str, ...]
    choose: Callable[[list, dict[int, float], int], list[int]]
    mark: str  # after a level's short name on an 80-column table
    legend: str  # what the mark means, in a table's caption
    words: str  # "a masked model's QA rows choose the answer's length by ..."
    by_attribute: bool = False  # needs the question's attribute (`bidirect ask` refuses a question in no form)


# The order is the levels' order in every table (qa_test_free before qa_test_prior ...).
RULES = {rule.name: rule for rule in (
    LengthRule("free", "lengths", ("exact",), lambda candidates, prior, eos: choose_length(candidates), "~",
               "by the best mean log-probability", "the best mean log-probability over lengths"),
    LengthRule("prior", "lengths", ("exact",), lambda candidates, prior, eos: choose_length(candidates, prior), "^",
               "with P_train's length prior",
               "the best mean log-probability plus the log-probability of the length among P_train's answers",
               by_attribute=True),
    LengthRule("window", "window", ("window",), lambda tokens, prior, eos: read_window(tokens, eos), "=",
               "from its answer window", "where its answer window puts end-of-text"),
    LengthRule("given", "told", ("exact", "window"), lambda tokens, prior, eos: tokens, "*",
               "told the answer's length in tokens (the paper's masked QA rule)", "told (the paper's rule)"),
)}
# The paper's rule: the masked model is told the answer's length (`bidirect ask --length`; the majority baseline
# told the length goes with its levels).
TOLD = "given"
ANSWERS = ("exact", "window")  # masking.answer: one mask per answer token, or a fixed answer window


def rules_for(answer: str) -> tuple[str, ...]:
    """The rules that decode a model fine-tuned with ``masking.answer: answer``."""
    return tuple(name for name, rule in RULES.items() if answer in rule.answers)


# The headline rule (eval.masked_length) scores qa_train, qa_val and qa_test (and the inverse levels); each other
# rule the fine-tuning allows scores the same people as qa_<split>_<rule> (inverse_<split>_<rule>: told the full
# name's length, ...), so that a masked model's inverse search is shown on the same information as its forward QA.
QA_RULE_LEVELS = tuple(f"{lv}_{rule}" for rule in RULES for lv in QA_LEVELS)
INVERSE_RULE_LEVELS = tuple(f"{lv}_{rule}" for rule in RULES for lv in INVERSE_LEVELS)
RULE_LEVELS = (*QA_RULE_LEVELS, *INVERSE_RULE_LEVELS)
ALL_LEVELS = (*LEVELS, *QA_RULE_LEVELS, *INVERSE_LEVELS, *INVERSE_RULE_LEVELS)
# The headline: people whose QA was never trained on, by each answer-length rule.
HELD_OUT_LEVELS = ("qa_test", *(lv for lv in QA_RULE_LEVELS if lv.startswith("qa_test_")), "inverse_test",
                   *(lv for lv in INVERSE_RULE_LEVELS if lv.startswith("inverse_test_")))
# What two backbones are compared on, person by person (the second's other rules against the first's qa_test too).
PAIRED_LEVELS = ("name_tied", "sentence_recall", "name_and_values", "values_only", "qa_test")


def in_order(levels: Iterable[str]) -> list[str]:
    """``levels`` in the order of ALL_LEVELS, the order every table shows them in."""
    present = set(levels)
    return [lv for lv in ALL_LEVELS if lv in present]


def split_rule(level: str) -> tuple[str, str | None]:
    """A QA level's QA set and answer-length rule: ``qa_test_given`` -> (``qa_test``, ``given``); a headline level
    (``qa_test``, ``inverse_test``) has no rule of its own (None: the study's eval.masked_length)."""
    if level in RULE_LEVELS:
        split, rule = level.rsplit("_", 1)
        return split, rule
    return level, None


def level_name(level: str, short: bool = False) -> str:
    """A level as tables name it; a rule's level by the rule's name (``short``: its mark), the paper's by ``*``."""
    qa_set, rule = split_rule(level)
    if rule is None:
        return LEVEL_NAMES[level]
    mark = RULES[rule].mark
    return f"{LEVEL_NAMES[qa_set]}{mark if short or rule == TOLD else f' ({rule})'}"


def cell_levels(kind: str, answer: str, masked_length: str, qa_sets: Sequence[str]) -> list[str]:
    """The QA levels a cell reports, in the order of ALL_LEVELS: the headline ones (qa_train, qa_val, qa_test by
    the study's rule), for a masked model every other answer-length rule its fine-tuning allows on the same people
    (qa_test_given, ...), and inverse search where the data has it, with the same rules beside it
    (inverse_test_given: told the full name's length)."""
    def allowed(level: str) -> bool:
        qa_set, rule = split_rule(level)
        return qa_set in qa_sets and (rule is None or (kind == "masked" and answer in RULES[rule].answers
                                                       and rule != masked_length))
    return [lv for lv in ALL_LEVELS if lv not in MEMORIZATION_LEVELS and allowed(lv)]


# --------------------------------------------------------------------------- the answer's layout


def answer_window(answer: str, longest: int) -> int:
    """The answer window's length for ``masking.answer: answer``: the longest P_train answer in tokens plus its
    end-of-text (``window``), or 0 where each answer gets one mask per token (``exact``). Training, scoring,
    `bidirect ask` and the context check all read it here."""
    return longest + 1 if answer == "window" else 0


def lay_out(kind: str, question: list[int], answer: list[int], eos: int, mask: int,
            window: int = 0) -> tuple[list[int], list[int], list[int]]:
    """A QA example as a model of ``kind`` reads it: (token ids, the positions read, the token each must be).
    Training puts those tokens as labels at those positions (and, in an answer window, its filler after them);
    the evaluator reads the argmax there.

    Causal: the question, the answer and end-of-text, read from the last question token on (teacher forcing; its
    exact match is greedy decoding's). Masked: one mask per answer token, then end-of-text (the paper's layout;
    ``answer`` may be any tokens of the length asked); with ``window`` > 0, that many masks, whose reading must be
    the answer then end-of-text."""
    q = len(question)
    if kind == "causal":
        return question + answer + [eos], list(range(q - 1, q + len(answer))), answer + [eos]
    if window:
        return question + [mask] * window, list(range(q, q + window)), answer + [eos]
    return question + [mask] * len(answer) + [eos], list(range(q, q + len(answer))), answer
