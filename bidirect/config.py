"""Experiment configuration: typed dataclasses loaded from YAML and validated on load.

Every field's default lives here, in one place. A YAML file only states what differs.
Loading rejects unknown keys, wrong types and out-of-range values with a `ConfigError`
that names the field (``pretrain.lr``) and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import math
import os
import re
import reprlib
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bidirect.protocol import ANSWERS, RULES, rules_for
from bidirect.results import phases

RULE_NAMES = tuple(RULES)  # eval.masked_length: every rule of the protocol

# Sizes of the shipped pools; kept here so that validation needs no file access.
N_FIRST, N_MIDDLE, N_LAST = 400, 400, 1000
MAX_INDIVIDUALS = N_FIRST * N_MIDDLE * N_LAST
# Upper bounds on sizes: far above anything this package's studies use (the paper: multi5, GPT-2
# small, context 512), low enough that a typo stops with a message instead of running until memory
# runs out (or a Rust panic in the tokenizer trainer).
MAX_AUGMENT = 100  # multiM, permuteP
MAX_BIOS = 50_000_000  # individuals x bios per person, per augmentation (about 5e9 tokens)
MAX_SIZE = {"layers": 256, "heads": 256, "width": 16_384, "mlp_width": 65_536, "context": 32_768}
MAX_VOCAB = 262_144
MAX_BEAMS = 64
# Training bounds: a learning rate past 10 is a typo for any optimizer here (AdamW's step is about lr in size; the
# studies use 1e-4 to 3e-3); a batch past 2**20 sequences, or 4,096 micro-batches per step, would sit for hours
# without a line printed before the first step ends (2**62 passed the divisibility checks and hung).
MAX_LR = 10.0
MAX_BATCH = 2**20
MAX_GRAD_ACCUM = 4096
# A YAML file's shape: a study is 4 levels deep and a few hundred values; past these it is a mistake or an alias
# bomb (an alias of an alias ... expands exponentially, and every message or copy of the value would expand it).
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000

# The attributes an inverse search question may give (data.inverse_from); data.templates words each.
INVERSE_FROM = (("birth_date", "birth_city"), ("birth_date",))
# A field that only QA fine-tuning reads (``field(..., metadata=FINETUNE)``): a run may reuse another's pretraining
# whatever it is (study.check_reuse compares everything else).
FINETUNE = {"scope": "finetune"}


def finetune_only(cls: type) -> set[str]:
    """The fields of the config dataclass ``cls`` marked `FINETUNE`."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("scope") == "finetune"}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, for messages: a bad value is shown, never echoed whole
    (reprlib stops at a few levels and items, so a huge or self-containing value costs nothing to show)."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augmentation:
    """How the biographies of one person are written (STUDY.md, Data).

    ``multi`` template draws per person; each draw is written ``max(permute, 1)`` times,
    with the sentence order shuffled when ``permute > 0``; ``fullname`` puts the full
    name where a pronoun would be. So ``multi5+permute`` is 5 bios, ``single+permute5``
    is one template set shuffled 5 times.
    """

    multi: int = 1
    permute: int = 0
    fullname: bool = False

    @property
    def bios_per_person(self) -> int:
        return self.multi * max(self.permute, 1)

    @property
    def name(self) -> str:
        parts = ["single" if self.multi == 1 else f"multi{self.multi}"]
        if self.permute == 1:
            parts.append("permute")
        elif self.permute > 1:
            parts.append(f"permute{self.permute}")
        if self.fullname:
            parts.append("fullname")
        return "+".join(parts)

    @classmethod
    def parse(cls, spec: str, where: str = "data.augmentations") -> Augmentation:
        """Parse the study's own notation, e.g. ``multi5+permute+fullname``."""
        allowed = "single, multiM (M >= 1), permute, permuteP (P >= 1), fullname joined by '+'"
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{where}: expected a string like 'multi5+permute', got {shown(spec)}; "
                              f"allowed: {allowed}")
        multi, permute, fullname = 1, 0, False
        seen: dict[str, str] = {}
        for part in spec.split("+"):
            # Each of the three a part sets at most once: `fullname+fullname` or `multi2+multi5` would
            # otherwise be read as something the user did not write.
            kind = "multi" if part == "single" or part.startswith("multi") else re.sub(r"\d+$", "", part)
            if kind in seen:
                raise ConfigError(f"{where}: {shown(seen[kind])} and {shown(part)} both set {kind} in {shown(spec)}; "
                                  "give it once")
            seen[kind] = part
            if part == "single":
                multi = 1
            elif m := re.fullmatch(r"multi(\d+)", part):
                multi = int(m.group(1))
            elif m := re.fullmatch(r"permute(\d*)", part):
                permute = int(m.group(1) or 1)
            elif part == "fullname":
                fullname = True
            else:
                raise ConfigError(f"{where}: unknown augmentation {shown(part)} in {shown(spec)}; allowed: {allowed}")
        if multi < 1:
            raise ConfigError(f"{where}: multi must be >= 1 in {shown(spec)}")
        if "permute" in spec and permute < 1:
            raise ConfigError(f"{where}: permuteP needs P >= 1 in {shown(spec)}")
        if multi > MAX_AUGMENT or permute > MAX_AUGMENT:
            raise ConfigError(f"{where}: at most multi{MAX_AUGMENT} and permute{MAX_AUGMENT} in {shown(spec)} "
                              "(the paper's richest is multi5+permute)")
        return cls(multi=multi, permute=permute, fullname=fullname)


# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """The bioS population and its split (STUDY.md, Data)."""

    # A few hundred people: enough that a per-person 95% interval on P_test is a few points wide.
    individuals: int = 300  # N
    p_train: float = 0.5  # p: share of individuals whose QA is fine-tuning data (P_train)
    # Share of individuals whose QA is neither trained nor in P_test (P_val): where recipes are tuned.
    # The rest is P_test. 0 gives the split of runs made before P_val existed; the quick study sets 0.1.
    p_val: float = 0.0
    # The paper's augmentation under which the causal model extracts (its 96.2%); the quick study
    # before this default, plain and fullname bios of 80 people, is configs/quick80.yaml.
    augmentations: list[str] = field(default_factory=lambda: ["multi5+permute+fullname"])
    # Inverse search (STUDY.md, Part 3.2): also write "Who was born on <date> in <city>?" -> full name
    # QA; P_train's is fine-tuning data, P_val's and P_test's are evaluated (levels inverse_train /
    # inverse_val / inverse_test).
    inverse: bool = False
    # The attributes the inverse question gives: birth date and city (Part 3.2), or the birth date alone
    # (the Factorization Curse's name <- birth date). Read only under inverse: true.
    inverse_from: list[str] = field(default_factory=lambda: ["birth_date", "birth_city"])


@dataclass
class TokenizerConfig:
    # Word-level by default: every name is one token, so a small model memorizes a person in
    # fewer exposures than with names split into BPE pieces (the quick study's budget).
    kind: Literal["bpe", "word"] = "word"
    vocab_size: int = 4096  # BPE only; a word-level vocabulary is every word of the corpus


@dataclass
class ModelSize:
    """Size spec shared by every backbone of a study, so that only the architecture differs."""

    layers: int = 2
    heads: int = 4
    width: int = 128
    mlp_width: int = 512
    context: int = 128  # longest sequence (packed window) in tokens; must hold the longest bio (fullname: 109)
    dropout: float = 0.0


@dataclass
class TrainConfig:
    """One training phase. Paper values are in configs/paper.yaml."""

    steps: int = 2000
    batch_size: int = 16  # sequences per optimizer step, summed over processes and accumulation
    grad_accum: int = 1
    lr: float = 2e-3
    min_lr: float = 2e-4  # cosine decays to this
    warmup_steps: int = 50
    weight_decay: float = 0.1
    adam_eps: float = 1e-6
    adam_betas: tuple[float, float] = (0.9, 0.98)
    clip_norm: float = 1.0
    checkpoint_every: int = 0  # 0: only at the end of the phase
    log_every: int = 50
    compile: bool = False  # torch.compile; batches then padded to a few lengths (objectives.STATIC_BUCKET)
    # The LM head only where there is a label (trainer.LabelledHead): the same loss, less work. On the CPU only
    # (see trainer.use_labelled_head): on CUDA choosing the rows would make the host wait at every micro-batch.
    labelled_logits_only: bool = True
    finetune_mode: Literal["full", "lora"] = "full"  # fine-tuning only
    lora_rank: int = 8


@dataclass
class MaskingConfig:
    """Masked-LM objective (STUDY.md, Objectives)."""

    probability: float = 0.15
    replace_mask: float = 0.8
    replace_random: float = 0.1
    # MLM variants: ``uniform`` draws each bio's mask probability t from U(0, 1) (MLM-U; ``probability``
    # is then unused); ``diffusion`` draws it the same way and weights the bio's loss by 1/t (masked diffusion,
    # MDLM/SMDM); ``attribute`` masks a whole attribute value when any of its words is chosen.
    rate: Literal["fixed", "uniform", "diffusion"] = "fixed"
    span: Literal["word", "attribute"] = "word"
    # The share of bios in which every attribute value is masked at once (all mask tokens) and nothing else, so that
    # the name and the template words are the only cues to each value: a masked model that ties values to one another
    # must tie them to the name there. The other bios are masked as above.
    all_values: float = 0.0
    # QA fine-tuning of masked models. ``exact``: the paper's rule, the question then one mask per answer token (the
    # length is given away, and no length is learned). ``window``: the question then a fixed window of masks, as long
    # as the longest P_train answer plus one; its targets are the answer, end-of-text, then ``window_pad`` (LLaDA's
    # fine-tuning), so the model learns where its answer ends and decodes in one pass.
    answer: Literal[ANSWERS] = field(default="exact", metadata=FINETUNE)
    # What the window's positions after the end-of-text are trained to predict: end-of-text again (LLaDA), the pad
    # token (one distinct filler, the single-token case of Rainbow Padding), or nothing (no loss there).
    window_pad: Literal["eos", "pad", "none"] = field(default="pad", metadata=FINETUNE)
    # Which of the window's positions are masked in a training example: all (as at evaluation), or each with a
    # probability t drawn per example from U(0, 1), at least one (masked diffusion's fine-tuning); the others show
    # their target.
    window_rate: Literal["all", "uniform"] = field(default="all", metadata=FINETUNE)

    @property
    def needs_values(self) -> bool:
        """Whether bios carry ``value_ids`` (which tokens belong to which attribute value) for this masking."""
        return self.span == "attribute" or self.all_values > 0


@dataclass
class CausalConfig:
    """Causal-LM objective (STUDY.md, Objectives)."""

    # Reverse training, the usual remedy for the reversal curse: every bio is also trained on reversed, the
    # word order turned around with the full name and each attribute value kept as units ("Anya Briar Forger was
    # born on October 2, 1996." -> ". October 2, 1996 on born was Anya Briar Forger"), forward and reversed bios
    # shuffled together. At equal steps each forward bio is seen half as often. Causal backbones only.
    reverse: bool = False


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_individuals: int = 0  # 0: every individual; else a deterministic subsample per level
    num_beams: int = 1  # causal decoding; the paper used 4 and saw little difference
    # Masked QA, how the answer's length is chosen (the headline levels qa_train, qa_val, qa_test; every other rule
    # the fine-tuning allows is a level beside them): "free" keeps the length of the best mean log-probability,
    # "prior" adds P_train's length prior of the question's attribute, "given" is the paper's rule (told the
    # length), "window" reads a window-fine-tuned model's end-of-text. What each reads, and which masking.answer it
    # decodes: bidirect.protocol.RULES.
    masked_length: Literal[RULE_NAMES] = "free"
    # Masked QA: the answer's masks filled in one forward pass, or one pass per token, committing the first
    # still-masked one (left_to_right) or the one the model is surest of (confidence, as masked-diffusion samplers).
    fill: Literal["one_pass", "left_to_right", "confidence"] = "one_pass"


# The experiment trackers accelerate can send to (accelerate.tracking), when installed.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrackingConfig:
    """Experiment tracking through accelerate's trackers (``Accelerator(log_with=...)``): each phase's loss,
    learning rate and tokens/s at its logging steps, and every evaluation level's mean. None by default:
    nothing leaves the machine. Local trackers (TensorBoard) write under RUN_DIR/trackers/."""

    log_with: list[str] = field(default_factory=list)


# The backbones by name and kind; models.BACKBONES builds each (it imports torch, so the names a config may use
# live here, and a test keeps the two equal). The objective follows the kind: causal -> next token, masked -> MLM.
BACKBONE_KINDS: dict[str, Literal["causal", "masked"]] = {
    "gpt2": "causal", "gpt2-rope": "causal", "gbert": "masked", "llama": "causal",
    "bert": "masked", "deberta": "masked", "modernbert": "masked",
}


@dataclass
class BackboneConfig:
    """A backbone in the study with optional per-backbone training overrides."""

    name: str = "gpt2"
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)


def _quick_backbones() -> list[BackboneConfig]:
    # The paper's causal model and its bidirectional twin. The causal one learns from every token of
    # a bio, the masked one from the values its masks hide: it gets twice the steps (2x the FLOPs).
    causal = BackboneConfig(
        "gpt2-rope",
        pretrain={"steps": 1500, "lr": 3e-3, "min_lr": 3e-4},
        finetune={"steps": 300, "lr": 3e-4, "min_lr": 3e-5},
    )
    return [causal, BackboneConfig("gbert", pretrain={"steps": 3000})]


def _quick_data() -> DataConfig:
    # 30 people in P_val: enough to choose a recipe on without looking at P_test.
    return DataConfig(p_val=0.1)


def _quick_masking() -> MaskingConfig:
    # Not the paper's 15% of words: at the quick study's budget that memorizes nothing (bio recall 35%
    # after 4,000 steps). Whole attribute values at 40% tie the most to the name in 3,000 steps (70%
    # name-tied, against 59% for single words at 40%); configs/quick_word_masking.yaml is the other.
    return MaskingConfig(probability=0.4, span="attribute")


@dataclass
class StudyConfig:
    """The defaults are the quick study (configs/quick.yaml): 300 people on multi5+permute+fullname,
    gpt2-rope and gbert of 2 layers x 128, on a 2-core CPU."""

    name: str = "quick"
    seed: int = 0
    protocol: Literal["pretrain_finetune", "mixed"] = "pretrain_finetune"
    qa_share: float = 0.8  # protocol mixed only: the share of the one stream's examples that are P_train QA
    # One precision for the whole run (every phase and evaluation): bf16 where the GPU has it under "auto".
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    data: DataConfig = field(default_factory=_quick_data)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelSize = field(default_factory=ModelSize)
    backbones: list[BackboneConfig] = field(default_factory=_quick_backbones)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=300, lr=1e-3, min_lr=1e-4, warmup_steps=0, weight_decay=0.01)
    )
    masking: MaskingConfig = field(default_factory=_quick_masking)
    causal: CausalConfig = field(default_factory=CausalConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def augmentations(self) -> list[Augmentation]:
        return [Augmentation.parse(a, f"data.augmentations[{i}]") for i, a in enumerate(self.data.augmentations)]

    def train_config(self, backbone: BackboneConfig, phase: Literal["pretrain", "finetune"]) -> TrainConfig:
        """The phase's settings with the backbone's overrides applied (validated)."""
        base = getattr(self, phase)
        overrides = getattr(backbone, phase)
        merged = {**dataclasses.asdict(base), **overrides}
        return _build(TrainConfig, merged, f"backbones.{backbone.name}.{phase}")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------- loading


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: got {shown(value)}; allowed: {', '.join(repr(a) for a in args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {shown(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {shown(value)}")
        # NaN passes every range check (each comparison is false) and is no valid JSON in results.json.
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}")
        return value
    return value


# Fields that had a narrower section than the code reads, and where they live now: (section, key) -> (new key, why).
MOVED = {
    ("TrainConfig", "mixed_precision"): ("mixed_precision", "one precision for the whole run, at the top level"),
    ("TrainConfig", "qa_share"): ("qa_share", "the mixed protocol's setting, at the top level beside protocol"),
    ("MaskingConfig", "fill"): ("eval.fill", "how masked answers are decoded at evaluation"),
}


def migrate_saved(raw: Any) -> Any:
    """A run folder's config.yaml written before MOVED: the values the code read moved to their new keys (the
    pretraining phase's precision and share, which were the only ones read), the ignored copies dropped."""
    if not isinstance(raw, dict):
        return raw
    raw = copy.deepcopy(raw)
    sections = [raw.get("pretrain"), raw.get("finetune")]
    sections += [b.get(p) for b in raw.get("backbones") or [] if isinstance(b, dict) for p in ("pretrain", "finetune")]
    for key in ("mixed_precision", "qa_share"):
        if isinstance(raw.get("pretrain"), dict) and key in raw["pretrain"]:
            raw.setdefault(key, raw["pretrain"][key])
        for section in sections:
            if isinstance(section, dict):
                section.pop(key, None)
    if isinstance(raw.get("masking"), dict) and "fill" in raw["masking"]:
        fill = raw["masking"].pop("fill")
        if isinstance(raw.get("eval"), dict):
            raw["eval"].setdefault("fill", fill)
        else:
            raw["eval"] = {"fill": fill}
    return raw


def _build(cls: type, raw: Any, where: str) -> Any:
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of {cls.__name__} fields, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)  # key=str: YAML keys may be numbers beside names
    if unknown:
        prefix = f"{where}." if where else ""
        key = unknown[0] if isinstance(unknown[0], str) and len(unknown[0]) <= 80 else shown(unknown[0])
        moved = MOVED.get((cls.__name__, unknown[0]))
        if moved:
            raise ConfigError(f"{prefix}{key}: moved to {moved[0]} ({moved[1]}); write it there")
        raise ConfigError(f"unknown key {prefix}{key}; allowed keys: {', '.join(names)}")
    raw = dict(raw)
    for f in dataclasses.fields(cls):
        # A partial section starts from the study's default for that section, not from the
        # section class's: `finetune: {steps: 300}` keeps the fine-tuning defaults above.
        if f.name in raw and isinstance(raw[f.name], dict) and dataclasses.is_dataclass(hints[f.name]):
            if f.default_factory is not dataclasses.MISSING:
                raw[f.name] = {**dataclasses.asdict(f.default_factory()), **raw[f.name]}
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def _backbone(raw: Any, where: str) -> BackboneConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    if isinstance(raw, dict) and "name" not in raw:  # else the dataclass default, gpt2, would train unasked
        raise ConfigError(f"{where}: a backbone mapping needs name: (e.g. {{name: gbert, pretrain: {{lr: 1e-3}}}}), "
                          f"got {shown(raw)}")
    return _build(BackboneConfig, raw, where)


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: StudyConfig) -> StudyConfig:
    """Range checks that types alone cannot express. Returns ``cfg`` for chaining."""
    if not cfg.name.isprintable():  # a newline split the report's heading in two; control codes reach terminals
        raise ConfigError(f"name: one line of printable text, got {shown(cfg.name)}")
    if not 0 <= cfg.seed < 2**32:  # numpy's range, which set_seed seeds too
        raise ConfigError(f"seed: must be in [0, 2**32), got {cfg.seed}")
    if not 0.0 < cfg.qa_share < 1.0:
        raise ConfigError(f"qa_share: must be strictly between 0 and 1, got {cfg.qa_share}")
    # Section by section, in the order they have always run: a config with several errors is told the same first.
    for check in (_validate_data, _validate_model, _validate_backbones, _validate_masking, _validate_eval):
        check(cfg)
    return cfg


def _validate_data(cfg: StudyConfig) -> None:
    d = cfg.data
    _positive("data.individuals", d.individuals)
    if d.individuals > MAX_INDIVIDUALS:
        raise ConfigError(
            f"data.individuals: {d.individuals} is more than the {MAX_INDIVIDUALS} distinct full names "
            f"the pools allow ({N_FIRST} first x {N_MIDDLE} middle x {N_LAST} last)"
        )
    if not 0.0 < d.p_train < 1.0:
        raise ConfigError(f"data.p_train: must be strictly between 0 and 1, got {d.p_train}")
    if not 0.0 <= d.p_val < 1.0:
        raise ConfigError(f"data.p_val: must be in [0, 1), got {d.p_val}")
    n_train, n_val = round(d.individuals * d.p_train), round(d.individuals * d.p_val)
    if n_train < 1 or n_train + n_val >= d.individuals:
        raise ConfigError(
            f"data.p_train: {d.p_train} (with data.p_val {d.p_val}) of {d.individuals} individuals leaves "
            "P_train or P_test empty"
        )
    if d.p_val > 0 and n_val < 1:
        raise ConfigError(f"data.p_val: {d.p_val} of {d.individuals} individuals is no one; raise it or set 0")
    if tuple(d.inverse_from) not in INVERSE_FROM:
        raise ConfigError(f"data.inverse_from: got {d.inverse_from}; allowed: "
                          + " or ".join(str(list(keys)) for keys in INVERSE_FROM))
    if not d.augmentations:
        raise ConfigError("data.augmentations: needs at least one, e.g. ['single', 'multi5+permute']")
    augmentations = cfg.augmentations()
    names = [a.name for a in augmentations]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.augmentations: listed twice: {names}")
    for i, a in enumerate(augmentations):
        if d.individuals * a.bios_per_person > MAX_BIOS:
            raise ConfigError(f"data.augmentations[{i}]: {a.name} writes {a.bios_per_person} bios for each of "
                              f"{d.individuals} individuals, more than the {MAX_BIOS:,} one study can hold in memory")


def _validate_model(cfg: StudyConfig) -> None:
    _positive("tokenizer.vocab_size", cfg.tokenizer.vocab_size)
    if cfg.tokenizer.vocab_size > MAX_VOCAB:
        raise ConfigError(f"tokenizer.vocab_size: at most {MAX_VOCAB:,}, got {cfg.tokenizer.vocab_size:,}")
    m = cfg.model
    for k in ("layers", "heads", "width", "mlp_width", "context"):
        _positive(f"model.{k}", getattr(m, k))
        if getattr(m, k) > MAX_SIZE[k]:
            raise ConfigError(f"model.{k}: at most {MAX_SIZE[k]:,}, got {getattr(m, k):,} "
                              "(GPT-2 small is 12 layers, 12 heads, 768 wide, mlp 3072, context 1024)")
    if m.width % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.width {m.width}")
    if (m.width // m.heads) % 2:
        raise ConfigError(f"model.width / model.heads = {m.width // m.heads} must be even for rotary positions")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")


def _validate_backbones(cfg: StudyConfig) -> None:
    if not cfg.backbones:
        raise ConfigError(f"backbones: needs at least one of {', '.join(BACKBONE_KINDS)}")
    # The study-wide phases first: an error in them is named where the user wrote it (pretrain.lr),
    # not under the first backbone that inherits it.
    validate_train(cfg.pretrain, "pretrain", cfg.model.width)
    validate_train(cfg.finetune, "finetune", cfg.model.width)
    seen = set()
    for i, b in enumerate(cfg.backbones):
        if b.name not in BACKBONE_KINDS:
            raise ConfigError(f"backbones[{i}]: unknown backbone {shown(b.name)}; known: {', '.join(BACKBONE_KINDS)}")
        if b.name in seen:
            raise ConfigError(f"backbones[{i}]: {shown(b.name)} listed twice")
        seen.add(b.name)
        for phase in ("pretrain", "finetune"):
            train = cfg.train_config(b, phase)
            validate_train(train, f"backbones.{b.name}.{phase}", cfg.model.width)
            # LoRA is a way to fine-tune; nothing else reads the field
            if train.finetune_mode == "lora" and not (phase == "finetune" and phase in phases(cfg.protocol)):
                where = phase if getattr(cfg, phase).finetune_mode == "lora" else f"backbones.{b.name}.{phase}"
                raise ConfigError(f"{where}.finetune_mode: 'lora' applies to the fine-tuning phase of protocol "
                                  "pretrain_finetune only; pretraining and the mixed stream train every weight")


def _validate_masking(cfg: StudyConfig) -> None:
    """Masking, reverse training and the answer-length rule, which the masking's QA layout decides."""
    if cfg.causal.reverse and not any(BACKBONE_KINDS[b.name] == "causal" for b in cfg.backbones):
        raise ConfigError("causal.reverse: true, but no causal backbone in backbones (it changes only what causal "
                          f"ones train on; causal: {', '.join(k for k, v in BACKBONE_KINDS.items() if v == 'causal')})")
    mk = cfg.masking
    if not 0.0 < mk.probability < 1.0:
        raise ConfigError(f"masking.probability: must be strictly between 0 and 1, got {mk.probability}")
    if mk.replace_mask < 0 or mk.replace_random < 0 or mk.replace_mask + mk.replace_random > 1:
        raise ConfigError("masking.replace_mask + masking.replace_random: each >= 0 and together <= 1")
    if not 0 <= mk.all_values <= 1:
        raise ConfigError(f"masking.all_values: a share of bios, from 0 to 1, got {mk.all_values}")
    masked = [b.name for b in cfg.backbones if BACKBONE_KINDS[b.name] == "masked"]
    if mk.answer == "window" and not masked:
        raise ConfigError("masking.answer: 'window' is how masked backbones are fine-tuned on QA, and no backbone is "
                          f"masked (masked: {', '.join(k for k, v in BACKBONE_KINDS.items() if v == 'masked')}); "
                          "a causal model already learns where to stop from its end-of-text")
    if mk.answer == "exact" and (mk.window_pad, mk.window_rate) != ("pad", "all"):
        which = "masking.window_pad" if mk.window_pad != "pad" else "masking.window_rate"
        raise ConfigError(f"{which}: set, but masking.answer is 'exact' (no window to fill); set masking.answer: "
                          "window, or drop it")
    rules = rules_for(mk.answer)
    if cfg.eval.masked_length not in rules:
        raise ConfigError(f"eval.masked_length: {cfg.eval.masked_length!r} does not decode a model fine-tuned with "
                          f"masking.answer {mk.answer!r}; allowed with it: {', '.join(map(repr, rules))}")


def _validate_eval(cfg: StudyConfig) -> None:
    for i, tracker in enumerate(cfg.tracking.log_with):
        if tracker not in TRACKERS:
            raise ConfigError(f"tracking.log_with[{i}]: unknown tracker {shown(tracker)}; "
                              f"allowed: {', '.join(TRACKERS)}")
    _positive("eval.batch_size", cfg.eval.batch_size)
    _positive("eval.max_individuals", cfg.eval.max_individuals, allow_zero=True)
    _positive("eval.num_beams", cfg.eval.num_beams)
    if cfg.eval.num_beams > MAX_BEAMS:
        raise ConfigError(f"eval.num_beams: at most {MAX_BEAMS}, got {cfg.eval.num_beams} (the paper used 4)")


def validate_train(t: TrainConfig, where: str, width: int | None = None) -> None:
    """Range checks of one phase; ``width``: the model's, which bounds the LoRA rank."""
    for k in ("steps", "batch_size", "grad_accum", "lr", "lora_rank"):
        _positive(f"{where}.{k}", getattr(t, k))
    if t.lr > MAX_LR:
        raise ConfigError(f"{where}.lr: at most {MAX_LR:g}, got {t.lr:g} (the studies train at 1e-4 to 3e-3)")
    if t.batch_size > MAX_BATCH:
        raise ConfigError(f"{where}.batch_size: at most {MAX_BATCH:,} sequences per step, got {t.batch_size:,} "
                          "(the paper's is 96)")
    if t.grad_accum > MAX_GRAD_ACCUM:
        raise ConfigError(f"{where}.grad_accum: at most {MAX_GRAD_ACCUM:,} micro-batches per step, got "
                          f"{t.grad_accum:,}")
    if width is not None and t.lora_rank > width:
        # LoRA's update of a width x width matrix has rank at most the width; more only costs memory (1e9 ran out)
        raise ConfigError(f"{where}.lora_rank: at most model.width ({width}), got {t.lora_rank:,}")
    for k in ("min_lr", "warmup_steps", "weight_decay", "adam_eps", "clip_norm", "checkpoint_every"):
        _positive(f"{where}.{k}", getattr(t, k), allow_zero=True)
    _positive(f"{where}.log_every", t.log_every)
    if t.min_lr > t.lr:
        raise ConfigError(f"{where}.min_lr: {t.min_lr} is larger than {where}.lr {t.lr}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"{where}.grad_accum: {t.grad_accum} does not divide {where}.batch_size {t.batch_size}")
    if not all(0.0 <= b < 1.0 for b in t.adam_betas):
        raise ConfigError(f"{where}.adam_betas: each must be in [0, 1), got {t.adam_betas}")


# Fields of a phase that are one setting: the learning rate decays from lr to min_lr, so a value given for either
# replaces a backbone's own pair (else its min_lr could end above the lr given).
_PAIRED = {"lr": ("lr", "min_lr"), "min_lr": ("lr", "min_lr")}


def _with_pairs(keys: set[str]) -> set[str]:
    return {k for key in keys for k in _PAIRED.get(key, (key,))}


def _value(value: Any) -> str:
    """A value in a note, as it was written (1e-3 is read as a string, which the loader turns into a number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return shown(value, 40) if not isinstance(value, str) or len(value) > 40 else value


def from_dict(raw: Any, notes: list[str] | None = None) -> StudyConfig:
    """Build and validate a study from a plain mapping (a parsed YAML file). ``notes``, when given, receives a line
    for each phase field of the study that the default backbones' own value of it gave way to (see below)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    if "backbones" in raw and raw["backbones"] is None:  # `backbones:` left empty would silently mean the default three
        raise ConfigError("backbones: empty (null); list at least one, e.g. [gpt2-rope, gbert], or leave the key out "
                          "for the default")
    backbones = raw.pop("backbones", None)
    cfg = _build(StudyConfig, raw, "")
    if backbones is not None:
        if not isinstance(backbones, list):
            raise ConfigError(f"backbones: expected a list of names or mappings, got {shown(backbones)}")
        cfg.backbones = [_backbone(b, f"backbones[{i}]") for i, b in enumerate(backbones)]
    else:
        # The default backbones carry the quick study's own steps and learning rates, which as overrides won over a
        # phase field the file sets: `pretrain: {steps: 400}` trained 1,500 and 3,000 steps without a word. The user
        # wrote the study's field and not the defaults', so theirs is meant for every backbone.
        for phase in ("pretrain", "finetune"):
            given = raw.get(phase) if isinstance(raw.get(phase), dict) else {}
            for key in sorted(_with_pairs(set(given))):
                own = {b.name: getattr(b, phase).pop(key) for b in cfg.backbones if key in getattr(b, phase)}
                if own and notes is not None and key in given:
                    notes.append(f"{phase}.{key} = {_value(given[key])} applies to every backbone, in place of the "
                                 "default backbones' own (" + ", ".join(f"{n} {_value(v)}" for n, v in own.items())
                                 + ")")
    return validate(cfg)


def check_key(key: str, where: str = "") -> None:
    """``key`` (``pretrain.steps``) names a field of the study: each part a field of the section before
    it. ``where`` prefixes the messages (``sweep.``, ``--set ``)."""
    cls, parts = StudyConfig, []
    for part in key.split("."):
        if cls is None:
            raise ConfigError(f"{where}{key}: {'.'.join(parts)} is a single value, not a section with fields")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            inside = f" of {'.'.join(parts)}" if parts else ""
            raise ConfigError(f"{where}{key}: unknown key {'.'.join([*parts, part])}; the keys{inside} are "
                              f"{', '.join(names)}")
        hint = typing.get_type_hints(cls)[part]
        cls = hint if dataclasses.is_dataclass(hint) else None
        parts.append(part)


def _section(path: str) -> bool:
    """``path`` names a whole section of the study (``model``), whose partial mapping keeps its other fields."""
    cls: Any = StudyConfig
    for part in path.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return dataclasses.is_dataclass(cls)


def _give_way(raw: dict[str, Any], path: str, value: Any, where: str, notes: list[str] | None) -> None:
    """A phase field set on top of a study (``--set pretrain.steps=400``, a sweep's value) is meant for every
    backbone: a backbone's own value of it, which would otherwise win, gives way (and ``notes`` says so)."""
    phase, _, key = path.partition(".")
    if phase not in ("pretrain", "finetune") or "." in key:
        return
    keys = _with_pairs({key} if key else set(value) if isinstance(value, dict) else set())
    for i, backbone in enumerate(raw.get("backbones") or []):
        if not isinstance(backbone, dict) or not isinstance(backbone.get(phase), dict):
            continue
        gone = {k: v for k, v in backbone[phase].items() if k in keys}
        if gone:
            backbone[phase] = {k: v for k, v in backbone[phase].items() if k not in keys}
            if notes is not None:
                name = backbone.get("name", f"backbones[{i}]")
                notes.append(f"{where}{path}={_value(value)} applies to {name} too, in place of its own "
                             + ", ".join(f"{phase}.{k} {_value(v)}" for k, v in gone.items()))


def set_path(raw: dict[str, Any], path: str, value: Any, where: str = "", notes: list[str] | None = None) -> None:
    """Set the dotted ``path`` in a parsed study file, making the sections it goes through. A mapping given for a
    whole section (``model={layers: 1}``) is merged into it, as the same partial section in a file keeps the other
    fields; a phase field (``pretrain.steps``) replaces the backbones' own value of it too (`_give_way`)."""
    *parents, last = path.split(".")
    node = raw
    for i, key in enumerate(parents):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}{path}: {'.'.join(parents[:i + 1])} is not a mapping in the study, "
                              f"so {path} cannot be set")
        node = child
    given = value
    if isinstance(value, dict) and isinstance(node.get(last), dict) and _section(path):
        value = {**node[last], **value}
    node[last] = copy.deepcopy(value)
    _give_way(raw, path, given, where, notes)  # only the fields given, not those the merge kept


def dotted(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a study as `to_dict` gives it) as ``{dotted.path: leaf}``, the paths `set_path` takes."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in dotted(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def apply_overrides(raw: Any, overrides: list[str], notes: list[str] | None = None) -> dict[str, Any]:
    """A parsed study file with ``KEY=VALUE`` overrides (``pretrain.steps=400``, ``backbones=[gpt2-rope]``)
    set on it by `set_path` (a section's mapping is merged in, a phase field is meant for every backbone; ``notes``
    gets a line for each backbone's own value replaced); values are read as YAML. The caller validates the result
    like any study file, so a bad value gets the message the same value would get in the file. A field given
    twice, or inside a section also given, is refused."""
    raw = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
            raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE with a dotted field path, "
                              "e.g. pretrain.steps=400")
        # `--set seed=3 seed=4` took the last without a word; `model={layers: 1} model.layers=2` is as ambiguous
        for other, first in given.items():
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                twice = "given twice" if key == other else f"overlaps --set {other}"
                raise ConfigError(f"--set {key}: {twice} ({shown(first)} and {shown(item)}); give each field once")
        given[key] = item
        # No check_key here: an unknown key is reported by the loader, word for word as in a file.
        try:
            value = yaml.load(text, Loader=_StudyLoader) if text else None  # noqa: S506 (a SafeLoader)
        except _Refused as err:
            raise ConfigError(f"--set {key}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: {shown(text)} is not a YAML value ({str(err).splitlines()[0]})") from None
        set_path(raw, key, value, "--set ", notes)
    return raw


_FIELD = re.compile(r"(unknown key )?([A-Za-z_]\w*)((?:\.[\w-]+|\[\d+\])*)[:;] ")


def blamed(text: str, source: str | None, raw: Any, overrides: list[str]) -> str:
    """A study's error (``text``, led by the field it is about) said of where that field came from: a ``--set`` of
    it, the file ``source`` (``raw``: what it holds), or a default or a file's value that an override made wrong
    (`--set data.individuals=5` gave `data.p_val: 0.1 of 5 individuals is no one`, which read as the user's p_val).
    ``source`` None: a mapping (``raw``), or the defaults (``raw`` None too)."""
    if text.startswith("--set "):  # about the overrides themselves, not the file
        return text
    found = _FIELD.match(text)
    if found and overrides and found.group(2) in {f.name for f in dataclasses.fields(StudyConfig)}:
        field = found.group(2) + found.group(3)
        keys = [item.partition("=")[0] for item in overrides]
        if found.group(1) and field in keys:
            return f"--set {overrides[keys.index(field)]}: {text}"
        if any(field == k or field.startswith((k + ".", k + "[")) or k.startswith(field + ".") for k in keys):
            return f"--set {text}"
        node = raw
        for part in field.split("."):
            if node is not _UNSET:  # a section the file leaves out: its fields are defaults too
                node = node.get(part, _UNSET) if isinstance(node, dict) else None
        default = raw is None or node is _UNSET
        named = [item for item, k in zip(overrides, keys) if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w.])", text)]
        if named or default:  # the override the message names, else all of them: one made the default wrong
            given = " ".join(named or overrides)
            given = given if len(given) <= 80 else given[:77] + "..."
            origin = "the default" + (f", not set in {source}" if source else "") if default else f"from {source}"
            return f"--set {given}: {text} ({field} is {origin})" if source or default else f"--set {given}: {text}"
    return f"{source}: {text}" if source else text


_UNSET = object()


class _Refused(yaml.YAMLError):
    """A YAML text past the shape a study can have: nested too deep, or aliases expanding too far."""


# YAML 1.1's integers and floats without the forms that read a value as something else than written: base 60
# (`individuals: 1:20` was 80) and a leading 0 for octal (`010` was 8). Such values stay strings, so a number field
# says it expected a number and a name keeps what was written (YAML 1.2 dropped both forms too).
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NUMBER = {"tag:yaml.org,2002:int": _INT, "tag:yaml.org,2002:float": _FLOAT}


class _StudyLoader(yaml.SafeLoader):
    """SafeLoader for study and sweep files: refuses a key given twice in one mapping (PyYAML keeps the last
    silently) and a list or mapping as a key, bounds nesting and what aliases expand to (`_expanded`), and reads
    no base-60 or octal numbers."""

    yaml_implicit_resolvers = {first: [(tag, _NUMBER.get(tag, rx)) for tag, rx in resolvers]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Composing recurses once per level: 10,000 nested brackets ended in a RecursionError
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep (line {line}); a study has 4")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded(node, {}, set(), 0)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden key by key
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # else a TypeError (unhashable) from deep inside PyYAML
                what = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"found a {what} as a key (keys are names)",
                                                        key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"found the key {shown(key)} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _not_a_file(path: Path) -> str:
    """What ``path``, which is no regular file, is instead: a named pipe would hang a reader and /dev/null
    reads as an empty study, so each is named, not reported as missing."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link that loops; point it at a YAML file"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "does not exist"
    for test, what in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {what}, not a YAML file"
    return "is not a regular file"

def _expanded(node: Any, sizes: dict[int, int], open_: set[int], depth: int) -> int:
    """How many values ``node`` holds once its aliases are expanded, each node visited once (so linear in the
    file); refused past MAX_YAML_VALUES (an alias bomb: a list of nine aliases of a list of nine aliases ...),
    past MAX_YAML_DEPTH levels, and for an alias inside the value it names."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise _Refused(f"an alias (line {node.start_mark.line + 1}) is inside the value it names, which never ends")
    if depth > MAX_YAML_DEPTH:
        raise _Refused(f"its aliases nest values more than {MAX_YAML_DEPTH} levels deep; a study has 4")
    open_.add(id(node))
    children = [] if isinstance(node, yaml.ScalarNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
    size = 1 + sum(_expanded(child, sizes, open_, depth + 1) for child in children)
    open_.discard(id(node))
    if size > MAX_YAML_VALUES:
        raise _Refused(f"its aliases (*name) expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?); "
                       "a study has a few hundred")
    sizes[id(node)] = size
    return size


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's contents; a missing, unreadable, non-UTF-8 or invalid file, a key given twice, or one past
    the shape a study can have (`_StudyLoader`), is a `ConfigError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} {_not_a_file(path)}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path}: not a UTF-8 text file (byte {err.start} is {err.object[err.start]:#04x})") \
            from None
    try:
        return yaml.load(text, Loader=_StudyLoader)  # noqa: S506 (a SafeLoader)
    except _Refused as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load(path: str | Path, overrides: list[str] | None = None, saved: bool = False,
         notes: list[str] | None = None) -> StudyConfig:
    """Load a study YAML file, with ``KEY=VALUE`` overrides on top (see `apply_overrides`); every
    problem is a `ConfigError` naming the file and field. ``saved``: a run folder's config.yaml, which an
    older version may have written with the keys of MOVED (`migrate_saved`). ``notes``: see `from_dict`."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:  # empty, only comments, or `~`: almost surely a mistake, yet it ran the whole default study
        if saved:
            raise ConfigError(f"{path}: empty; it should hold the study this run was made with")
        raise ConfigError(f"{path}: the file is empty (no settings), which would run the whole default study; to "
                          "run that, leave the config out (`bidirect run --out DIR`) or give configs/quick.yaml")
    if saved:
        raw = migrate_saved(raw)
    if isinstance(raw, dict) and "sweep" in raw:
        raise ConfigError(f"{path}: a sweep file (top-level sweep:); run it with `bidirect sweep {path} --out DIR`")
    try:
        return from_dict(apply_overrides(raw, overrides or [], notes), notes)
    except ConfigError as err:
        raise ConfigError(blamed(str(err), str(path), raw, overrides or [])) from None


def dump_text(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def dump(cfg: StudyConfig, path: str | Path) -> None:
    Path(path).write_text(dump_text(cfg))


_MISSING = object()


def first_difference(recorded: Any, current: Any, path: str = "") -> str | None:
    """The first field where ``current`` (a study's `to_dict`) is not what ``recorded`` (a results.json's config)
    says, or None. A field the recorded config lacks is one added since it was written, whose value then was the
    default of that version: not compared. A backbone's own phase settings are compared whole."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        whole = re.fullmatch(r"backbones\[\d+\]\.(pretrain|finetune)", path) is not None
        for key in dict.fromkeys([*recorded, *(current if whole else [])]):
            inner = f"{path}.{key}" if path else str(key)
            found = first_difference(recorded.get(key, _MISSING), current.get(key, _MISSING), inner)
            if found is not None:
                return found
        return None
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        for i, (a, b) in enumerate(zip(recorded, current)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if recorded == current else path


def value_at(obj: Any, path: str) -> Any:
    """The value at a path `first_difference` returned (None where there is none)."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            obj = obj[index] if isinstance(obj, list) and index < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
    return obj
