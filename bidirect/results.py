"""The study's vocabulary, which every reader of a run shares: the attributes, the evaluation levels, the phases
each protocol trains, and how a phase trained (`phase_mode`).

Torch-free and importing nothing of bidirect's: config validates with it, rundir reads results.json with it,
and the study, the analyses and the report name what they read with it.
"""

from __future__ import annotations

from typing import Any

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "company", "company_city")
# The evaluation levels (bidirect.evaluate), in the order tables show them. qa_val exists only with
# data.p_val > 0, the answer-length rules' levels (qa_test_given, ...: RULE_LEVELS) only for masked backbones,
# the inverse ones only where the data has inverse QA (inverse_val only with P_val too).
LEVELS = ("bio_recall", "name_tied", "sentence_recall", "qa_train", "qa_val", "qa_test")
INVERSE_LEVELS = ("inverse_train", "inverse_val", "inverse_test")
# The headline rule of masked QA (eval.masked_length) scores qa_train, qa_val and qa_test; each other rule
# that the fine-tuning allows (config.LENGTH_RULES) scores the same people as qa_<split>_<rule>.
QA_SPLITS = ("train", "val", "test")
RULE_LEVELS = tuple(f"qa_{split}_{rule}" for rule in ("free", "prior", "window", "given") for split in QA_SPLITS)
ALL_LEVELS = (*LEVELS, *RULE_LEVELS, *INVERSE_LEVELS)
# The headline: people whose QA was never trained on, by each answer-length rule.
HELD_OUT_LEVELS = ("qa_test", *(lv for lv in RULE_LEVELS if lv.startswith("qa_test_")), "inverse_test")

# --------------------------------------------------------------------------- phases

# The phases each protocol trains, in order; each is a folder models/AUG/BACKBONE/PHASE and a summary in
# results.json. Every question about phases is answered from this table.
PHASES = {"pretrain_finetune": ("pretrain", "finetune"), "mixed": ("mixed",)}


def phases(protocol: str) -> tuple[str, ...]:
    """The phases ``protocol`` trains, in order."""
    return PHASES[protocol]


def bio_phase(protocol: str) -> str:
    """The phase that trained on the biographies: memorization is read on its model (QA fine-tuning is free
    to overwrite the bios' wording), and the analyses (probe, capacity) read it unless told another."""
    return phases(protocol)[0]


def final_phase(protocol: str) -> str:
    """The phase whose model answers questions: the one the QA levels are read on."""
    return phases(protocol)[-1]


def train_section(phase: str) -> str:
    """The config section (``pretrain`` or ``finetune``) that sets how ``phase`` trains: the mixed stream
    trains as pretraining does."""
    return "finetune" if phase == "finetune" else "pretrain"


def phase_mode(phase: dict[str, Any]) -> str:
    """How a phase trained (its summary in results.json), spelled the same in every table: ``full`` or
    ``lora (r=4)``."""
    return f"lora (r={phase['lora_rank']})" if phase.get("mode") == "lora" else "full"
