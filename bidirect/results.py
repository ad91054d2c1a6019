"""The study's vocabulary, which every reader of a run shares: the attributes, the phases each protocol trains,
how a phase trained (`phase_mode`), and results.json's records (`Run`, `Cell`). The levels are the evaluation
protocol's (bidirect.protocol).

Torch-free, importing only the protocol: config validates with it, rundir reads results.json with it, and the
study, the analyses and the report name what they read with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bidirect.protocol import in_order

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "company", "company_city")

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


# --------------------------------------------------------------------------- the results file


def interval(scores: dict[str, Any], key: str = "mean") -> tuple[float, float] | tuple[None, None]:
    """A level's 95% interval over people for ``key`` (an attribute, ``mean``, or ``full_name``), as results.json
    keeps it under ``ci95``; (None, None) where it has none (results made before intervals, a column without
    items)."""
    bounds = (scores.get("ci95") or {}).get(key)
    return (bounds[0], bounds[1]) if bounds else (None, None)


# results.json's majority baselines, in the order it writes them: plain, and told the answer's length
BASELINES = ("majority_baseline", "majority_baseline_given_length")


@dataclass
class Cell:
    """One (augmentation, backbone) of a run: its levels (level -> scores: each attribute's accuracy, ``mean``,
    ``ci95``, counts, ``per_person``), a summary per phase it trained, its leak check and its parameter counts.
    A cell of a file cut down by hand may lack the last three (None): a resume evaluates it again."""

    augmentation: str
    backbone: str
    levels: dict[str, dict[str, Any]]
    phases: dict[str, dict[str, Any]] | None = None
    leak_check: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """Everything a run writes for a cell is here: a resume keeps it as it is."""
        return self.phases is not None and self.leak_check is not None and self.parameters is not None

    @property
    def finetune(self) -> dict[str, Any] | None:
        """The fine-tuning phase's summary, where the cell has one (how it fine-tuned: full or LoRA)."""
        return (self.phases or {}).get("finetune")

    def shown_levels(self) -> list[str]:
        """The cell's levels in the order of ALL_LEVELS."""
        return in_order(self.levels)


@dataclass
class Run:
    """A run's results.json: its cells in the order the study trains them, both majority baselines, the
    paired differences between backbones per augmentation, and what the run was (config, data hash, seed,
    torch threads, wall time). Keys a reader does not know are kept (``extra``) and written back."""

    study: str | None = None
    seed: int | None = None
    protocol: str | None = None
    data_sha256: str | None = None
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    config: dict[str, Any] | None = None
    torch_threads: int | None = None
    wall_seconds: float | None = None
    paired: dict[str, list[dict[str, Any]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cell(self, augmentation: str, backbone: str) -> Cell | None:
        return next((c for c in self.cells if (c.augmentation, c.backbone) == (augmentation, backbone)), None)

    def by_augmentation(self) -> dict[str, list[Cell]]:
        """The cells grouped by augmentation, in the run's order: a table per augmentation."""
        groups: dict[str, list[Cell]] = {}
        for c in self.cells:
            groups.setdefault(c.augmentation, []).append(c)
        return groups

    @property
    def majority(self) -> dict[str, float]:
        """The plain majority baseline (each attribute's accuracy and ``mean``); empty where the file has none."""
        return self.baselines.get(BASELINES[0]) or {}

    def levels_present(self) -> set[str]:
        return {lv for c in self.cells for lv in c.levels}

    @property
    def masked_length(self) -> str:
        """The answer-length rule of a masked model's plain QA rows; runs before the choice used ``free``."""
        return ((self.config or {}).get("eval") or {}).get("masked_length", "free")

    @classmethod
    def of(cls, results: Run | dict[str, Any]) -> Run:
        """``results`` as a Run: a Run as it is, a parsed results.json read (`from_json`)."""
        return results if isinstance(results, Run) else cls.from_json(results)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Run:
        """A parsed results.json of any version (one `shape_error` accepts): older files lack the data hash,
        the torch threads, the paired differences or the baseline told the length, and those cut down by hand
        a cell's training, leak check or parameters."""
        training, leaks, params = (d.get(k) or {} for k in ("training", "leak_check", "parameters"))
        cells = [Cell(aug, backbone, levels, (training.get(aug) or {}).get(backbone),
                      (leaks.get(aug) or {}).get(backbone), params.get(backbone))
                 for aug, by_backbone in d["results"].items() for backbone, levels in by_backbone.items()]
        known = {"study", "seed", "protocol", "data_sha256", *BASELINES, "results", "training", "parameters",
                 "leak_check", "config", "torch_threads", "wall_seconds", "paired"}
        return cls(study=d.get("study"), seed=d.get("seed"), protocol=d.get("protocol"),
                   data_sha256=d.get("data_sha256"), baselines={k: d[k] for k in BASELINES if k in d},
                   cells=cells, config=d.get("config"), torch_threads=d.get("torch_threads"),
                   wall_seconds=d.get("wall_seconds"), paired=d.get("paired"),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        """The file as bidirect writes it (`rundir.json_text`): the cells split by key, levels under ``results``,
        phases under ``training``, then ``parameters`` (per backbone) and ``leak_check``. What the run does not
        know (None: a file of an older version, or `bidirect eval` of a run that had none) is left out."""
        results: dict[str, Any] = {}
        training: dict[str, Any] = {}
        parameters: dict[str, Any] = {}
        leak_check: dict[str, Any] = {}
        for c in self.cells:
            results.setdefault(c.augmentation, {})[c.backbone] = c.levels
            if c.phases is not None:
                training.setdefault(c.augmentation, {})[c.backbone] = c.phases
            if c.parameters is not None:
                parameters[c.backbone] = c.parameters
            if c.leak_check is not None:
                leak_check.setdefault(c.augmentation, {})[c.backbone] = c.leak_check
        trained = any(c.phases is not None for c in self.cells)
        out = {"study": self.study, "seed": self.seed, "protocol": self.protocol, "data_sha256": self.data_sha256,
               **self.baselines, "results": results,
               **({"training": training, "parameters": parameters, "leak_check": leak_check} if trained else {}),
               "config": self.config, "torch_threads": self.torch_threads, "wall_seconds": self.wall_seconds,
               "paired": self.paired}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


def run_or_none(value: Any) -> Run | None:
    """A parsed JSON value as a Run, or None where it is not a results.json as bidirect writes it
    (`shape_error`): for readers that decide what a file is rather than refuse it."""
    if not isinstance(value, dict) or "results" not in value or shape_error(value) is not None:
        return None
    return Run.from_json(value)


def shape_error(results: dict[str, Any]) -> str | None:
    """What in a parsed results.json is not as bidirect writes it (the parts the commands read), or None."""
    cells = results["results"]
    if not isinstance(cells, dict):
        return f"results: expected a mapping of augmentation -> backbone -> level -> scores, got {type(cells).__name__}"
    for aug, backbones in cells.items():
        if not isinstance(backbones, dict):
            return f"results.{aug}: expected a mapping of backbone -> level -> scores"
        for backbone, levels in backbones.items():
            if not isinstance(levels, dict) or not all(isinstance(v, dict) for v in levels.values()):
                return f"results.{aug}.{backbone}: expected a mapping of level -> scores"
    for key in ("training", "parameters", "leak_check", "config", "majority_baseline"):
        if key in results and not isinstance(results[key], dict):
            return f"{key}: expected a mapping, got {type(results[key]).__name__}"
    seconds = results.get("wall_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return f"wall_seconds: expected a number, got {type(seconds).__name__}"
    if not isinstance(results.get("data_sha256", ""), (str, type(None))):
        return "data_sha256: expected a text"
    return None
