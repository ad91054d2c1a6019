"""A study from one config: data, tokenizer, every (augmentation, backbone) trained and evaluated,
into a run folder (its layout: rundir.RunFolder, drawn in docs/design.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from datasets import Dataset, concatenate_datasets, interleave_datasets

from bidirect import config as config_lib
from bidirect import ownership, rundir
from bidirect.card import write_card
from bidirect.config import ConfigError, MaskingConfig, StudyConfig, TrainConfig
from bidirect.data.generate import StudyData, generate, saved_sha256
from bidirect.evaluate import evaluate_model, majority_baselines, max_answer_tokens, paired_differences
from bidirect.integrity import check_models, check_results
from bidirect.lora import add_lora, merge_lora, trainable_parameters
from bidirect.models import backbone_kind, build_backbone, flops_per_token, load_backbone, parameter_counts
from bidirect.objectives import IGNORE, encode_qa, make_objective, tokenize_bios
from bidirect.protocol import MEMORIZATION_LEVELS, answer_window, cell_levels
from bidirect.results import Cell, Run, bio_phase, final_phase, phases, train_section
from bidirect.rundir import RunDirError, RunFolder, read_results, read_tokenizer, require_run_dir, write_json_atomic
from bidirect.tokenizer import qa_ids, qa_text, train_tokenizer
from bidirect.trainer import TrainingError, disk_faults, micro_batch_size, phase_done, train_phase

FULL_NAME = re.compile(r"\b[A-Z][a-zA-Z]+ [A-Z][a-zA-Z]+ [A-Z][a-zA-Z]+\b")  # first middle last


# --------------------------------------------------------------------------- data


def tokenizer_corpus(data: StudyData) -> list[str]:
    """What a study's tokenizer is trained on: every biography and the QA that fine-tuning trains on (P_train's,
    inverse search's where the data has it). P_val's and P_test's QA never reach the tokenizer either."""
    corpus = [t for aug in data.bios for t in data.bios[aug]["text"]]
    for qa in [data.qa_train] + ([data.inverse_train] if data.inverse_train is not None else []):
        corpus += [qa_text(q, a) for q, a in zip(qa["question"], qa["answer"])]
    return corpus


def prepare_data(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator | None = None):
    """Generate (or load, when already there) the data and the tokenizer of a study."""
    is_main = accelerator is None or accelerator.is_main_process
    if is_main and not rundir.has_tokenizer(run_dir):
        rundir.check_fresh_data(run_dir)  # before minutes of generation: a data/ of someone else's is refused
        data = generate(cfg.data, cfg.augmentations(), cfg.seed)
        rundir.write_data(run_dir, data)
        tokenizer = train_tokenizer(tokenizer_corpus(data), cfg.tokenizer.kind, cfg.tokenizer.vocab_size)
        with disk_faults(run_dir):  # tokenizers reports a full disk as its own exception
            rundir.write_tokenizer(run_dir, tokenizer)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return StudyData.load(RunFolder(run_dir).data), read_tokenizer(run_dir)


def check_context(cfg: StudyConfig, data: StudyData, tokenizer) -> None:
    """Every training document must fit one window of ``model.context`` tokens with its
    end-of-text; packing would otherwise cut it, and the facts at its end, silently."""
    longest = (0, "")
    for aug in [a.name for a in cfg.augmentations()]:
        bios = data.bios[aug]
        lengths = [len(ids) for ids in tokenizer(list(bios["text"]), add_special_tokens=False)["input_ids"]]
        i = max(range(len(lengths)), key=lengths.__getitem__)
        longest = max(longest, (lengths[i], f"the longest biography ({aug}, individual {bios[i]['id']})"))
    # A masked model fine-tuned with an answer window reads every question with the window after it.
    window = answer_window(cfg.masking.answer, max_answer_tokens(tokenizer, data))
    for name, qa in data.qa_sets().items():  # inverse QA too, under data.inverse
        questions, answers = qa_ids(tokenizer, qa["question"], qa["answer"])
        lengths = [len(q) + max(len(a), window - 1) for q, a in zip(questions, answers)]
        i = max(range(len(lengths)), key=lengths.__getitem__)
        longest = max(longest, (lengths[i], f"the longest QA example ({name}: {qa[i]['question']!r})"))
    need = longest[0] + 1  # + end-of-text
    if cfg.model.context < need:
        raise ConfigError(
            f"model.context: {cfg.model.context} tokens is too short for {longest[1]}, which is {longest[0]} tokens "
            f"(+1 for end-of-text); training would cut it. Raise model.context to at least {need} "
            "(a changed config needs a new --out, or --force). Nothing was trained."
        )


def preflight(cfg: StudyConfig, data: StudyData, tokenizer, processes: int) -> None:
    """Every check that the data and the tokenizer make possible, before anything is trained: the
    context holds every document, and every phase's stream fills one batch (fine-tuning's too, so
    that a fine-tuning batch too large does not throw a finished pretraining away)."""
    check_context(cfg, data, tokenizer)
    for augmentation in [a.name for a in cfg.augmentations()]:
        for kind in dict.fromkeys(backbone_kind(b.name) for b in cfg.backbones):
            objective = make_objective(kind, tokenizer, cfg.model.context, cfg.masking, cfg.seed, cfg.causal)
            streams = training_streams(cfg, objective, data, tokenizer, augmentation)
            streams = {phase: len(s) for phase, s in streams.items()}
            for backbone in cfg.backbones:
                if backbone_kind(backbone.name) != kind:
                    continue
                for phase, examples in streams.items():
                    section = train_section(phase)
                    # The field where the user set it: the backbone's override (named as validate names
                    # overrides), else the study's phase.
                    where = f"backbones.{backbone.name}.{section}" if "batch_size" in getattr(backbone, section) \
                        else section
                    micro_batch_size(_phase_config(cfg, backbone, phase), examples, processes,
                                     f"the {phase} stream of {augmentation}/{backbone.name}", f"{where}.batch_size")


def start_study(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator | None = None,
                opened: ownership.Opened | None = None, train: bool = True):
    """Data and tokenizer of a run that passed `preflight` (``train=False``: `bidirect data`, which
    trains nothing, only makes them). A run that replaces another (``opened`` after ``--force``)
    deletes the old folder only now; if anything before fails, the old one is put back."""
    try:
        data, tokenizer = prepare_data(cfg, run_dir, accelerator)
        if train:
            preflight(cfg, data, tokenizer, accelerator.num_processes if accelerator is not None else 1)
    except BaseException:
        if opened is not None:
            opened.started(False)
        raise
    if opened is not None:
        opened.started(True)
    return data, tokenizer


def _pretraining(cfg: StudyConfig) -> dict[str, Any]:
    """What a study's pretrained models depend on: everything but its name, fine-tuning, the masked QA layout,
    evaluation and tracking (each backbone's pretraining with its overrides applied)."""
    d = cfg.to_dict()
    masking = {k: v for k, v in d["masking"].items() if k not in config_lib.finetune_only(MaskingConfig)}
    return {**{k: d[k] for k in ("seed", "protocol", "mixed_precision", "data", "tokenizer", "model", "causal")},
            "masking": masking}


def check_reuse(cfg: StudyConfig, source: Path, out: Path | None = None) -> list[tuple[str, Any]]:
    """Raise, naming the first difference, unless ``source``'s finished pretraining phases are the ones ``cfg`` would
    train (`reuse_pretraining`); checked before the new run (or sweep) folder ``out`` is made. Returns the
    (augmentation, backbone) cells whose pretraining is reused."""
    if out is not None and (source.resolve() == out.resolve() or out.resolve() in source.resolve().parents):
        # with --force the source was moved aside before the copy, which then said "its pretraining is not finished"
        raise ConfigError(f"--pretrained-from {source}: is the --out folder {out} or inside it; a run starts from "
                          "another run's pretraining. Give a run folder outside --out.")
    src = require_run_dir(source)
    if cfg.protocol != "pretrain_finetune":
        raise ConfigError("--pretrained-from: the mixed protocol has no pretraining phase to reuse")
    mine, theirs = config_lib.dotted(_pretraining(cfg)), config_lib.dotted(_pretraining(src))
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            raise ConfigError(f"--pretrained-from {source}: its {key} is {theirs.get(key)!r}, this study's "
                              f"{mine.get(key)!r}; its pretrained models are not the ones this study would train")
    others = {b.name: b for b in src.backbones}
    old = RunFolder(source)
    cells = [(a.name, b) for a in cfg.augmentations() for b in cfg.backbones]
    for augmentation, backbone in cells:
        where = f"--pretrained-from {source}: {augmentation}/{backbone.name}"
        if backbone.name not in others:
            raise ConfigError(f"{where}: that run has no {backbone.name}")
        theirs_t, mine_t = src.train_config(others[backbone.name], "pretrain"), cfg.train_config(backbone, "pretrain")
        for field in dataclasses.fields(mine_t):  # the field and both values: the section alone said too little
            a, b = getattr(theirs_t, field.name), getattr(mine_t, field.name)
            if a != b:
                raise ConfigError(f"{where}: pretrained with {backbone.name}'s pretrain.{field.name} {a!r}, this "
                                  f"study's is {b!r}; its pretrained models are not the ones this study would train")
        if phase_done(old.phase(augmentation, backbone.name, "pretrain")) is None:
            raise RunDirError(f"{where}: its pretraining is not finished")
    return cells


def reuse_pretraining(cfg: StudyConfig, run_dir: Path, source: Path) -> None:
    """Start the new run folder ``run_dir`` from ``source``'s data, tokenizer and finished pretraining phases, so
    that a study differing only in fine-tuning or evaluation (`_pretraining`) trains only its fine-tuning.
    Pretraining is deterministic, so the new run's results are those of running ``cfg`` from scratch."""
    cells = check_reuse(cfg, source)  # again at the copy: the source may have changed since the first check
    run, old = RunFolder(run_dir), RunFolder(source)
    for path in (old.data, old.tokenizer):
        shutil.copytree(path, run_dir / path.name)
    shutil.copy2(old.tokenizer_sha, run.tokenizer_sha)
    for augmentation, backbone in cells:  # the finished phase without its checkpoints
        shutil.copytree(old.phase(augmentation, backbone.name, "pretrain"),
                        run.phase(augmentation, backbone.name, "pretrain"),
                        ignore=shutil.ignore_patterns(rundir.CHECKPOINTS_DIR))


# --------------------------------------------------------------------------- leak guard


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def leak_check(stream: Dataset | list[Dataset], tokenizer, data: StudyData) -> dict[str, Any]:
    """Prove that no held-out QA (P_test's, and P_val's) reaches a training stream (or any of a list),
    from the stream's own tokens.

    Every document of the stream is decoded back to text. A document with a '?' is a
    question (templates of bios never have one); its question is hashed and compared
    with the hashes of the held-out questions (inverse search ones included), and every full
    name in it, and the answer after the '?' (an inverse answer is a full name), is looked
    up among the held-out individuals. Nothing here trusts the split code that built the stream.
    """
    test_questions = {_sha(q) for qa in data.held_out_qa() for q in qa["question"]}
    test_names = {n for n, s in zip(data.individuals["full_name"], data.individuals["split"]) if s != "train"}
    checked, leaked = 0, []
    rows = [ids for s in (stream if isinstance(stream, list) else [stream]) for ids in s["input_ids"]]
    for text in tokenizer.batch_decode(rows, skip_special_tokens=False):
        for doc in text.split(tokenizer.eos_token):
            if "?" not in doc:
                continue
            question = doc.split("?")[0].strip() + "?"
            checked += 1
            answer = doc.split("?", 1)[1].strip()  # an inverse answer is a full name
            if (_sha(question) in test_questions or answer in test_names
                    or any(n in test_names for n in FULL_NAME.findall(doc))):
                leaked.append(question)
    return {
        "qa_documents_checked": checked,
        "p_test_questions": len(test_questions),
        "leaked": len(leaked),
        "examples": leaked[:5],
        "p_test_questions_sha256": _sha("\n".join(sorted(test_questions))),
    }


# --------------------------------------------------------------------------- one cell


def training_streams(cfg: StudyConfig, objective, data: StudyData, tokenizer, augmentation: str) -> dict[str, Dataset]:
    """The training streams of a protocol: name -> dataset of examples."""
    # Reversal keeps names and values whole; attribute-span masking masks values whole.
    values = objective.reverse or (objective.kind == "masked" and cfg.masking.needs_values)
    names = dict(zip(data.individuals["id"], data.individuals["full_name"])) if objective.reverse else None
    bios = objective.bio_examples(tokenize_bios(data.bios[augmentation], tokenizer, values, names), cfg.seed)
    qa_train = data.qa_train  # and P_train's inverse search QA under data.inverse
    if data.inverse_train is not None:
        qa_train = concatenate_datasets([qa_train, data.inverse_train])
    qa = objective.qa_examples(encode_qa(qa_train, tokenizer), cfg.seed)
    if cfg.protocol == "mixed":  # one stream, bios and QA interleaved
        share = cfg.qa_share
        trained = [interleave_datasets([bios, qa], probabilities=[1 - share, share], seed=cfg.seed,
                                       stopping_strategy="all_exhausted")]
    else:
        trained = [bios, qa]
    return dict(zip(phases(cfg.protocol), trained, strict=True))


def _phase_config(cfg: StudyConfig, backbone, phase: str) -> TrainConfig:
    return cfg.train_config(backbone, train_section(phase))


def run_cell(cfg: StudyConfig, run_dir: Path, data: StudyData, tokenizer, augmentation: str, backbone,
             accelerator: Accelerator) -> Cell:
    """Train one backbone on one augmentation through the protocol (phases already trained are kept), then
    evaluate it."""
    phases, guard, counts = train_cell(cfg, run_dir, data, tokenizer, augmentation, backbone, accelerator)
    levels = evaluate_cell(cfg, run_dir, backbone.name, tokenizer, data, augmentation, accelerator)
    return Cell(augmentation, backbone.name, levels, phases, guard, counts)


def train_cell(cfg: StudyConfig, run_dir: Path, data: StudyData, tokenizer, augmentation: str, backbone,
               accelerator: Accelerator) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Train one backbone on one augmentation through the protocol, each phase saved (a phase already saved is
    kept): what each phase did, the leak guard's report and the parameter counts."""
    kind = backbone_kind(backbone.name)
    run = RunFolder(run_dir)
    objective = make_objective(kind, tokenizer, cfg.model.context, cfg.masking, cfg.seed, cfg.causal)
    streams = training_streams(cfg, objective, data, tokenizer, augmentation)
    guard = leak_check(list(streams.values()), tokenizer, data)  # every stream, bios included
    if guard["leaked"]:
        raise TrainingError(
            f"{augmentation}/{backbone.name}: {guard['leaked']} P_test QA document(s) found in the training streams "
            f"({', '.join(streams)}), e.g. {guard['examples'][:2]}; refusing to train. P_test QA must never reach "
            "training: this is a bug in the split or the stream code."
        )

    set_seed(cfg.seed)
    model = build_backbone(backbone.name, cfg.model, tokenizer)
    counts = parameter_counts(model)
    flops = flops_per_token(model, cfg.model)["total"]
    phases = {}
    for phase, stream in streams.items():
        phase_dir = run.phase(augmentation, backbone.name, phase)
        done = phase_done(phase_dir)
        train_cfg = _phase_config(cfg, backbone, phase)
        lora = phase == "finetune" and train_cfg.finetune_mode == "lora"
        if lora:  # query/value + embedding only, merged into the weights before save_pretrained
            set_seed(cfg.seed)
            model = add_lora(model, train_cfg.lora_rank)
        trainable = trainable_parameters(model)
        if done is None:
            set_seed(cfg.seed)
            collate = objective.with_static_shapes() if train_cfg.compile else objective
            done = train_phase(model, collate, stream, train_cfg, phase_dir, accelerator,
                               f"{augmentation}/{backbone.name}/{phase}", cfg.seed,
                               finalize=merge_lora if lora else None)
        if phase != list(streams)[-1]:  # the next phase starts from what was saved (evaluate_cell loads the last)
            model = load_backbone(run.model(augmentation, backbone.name, phase))
        labelled = sum(sum(1 for x in labels if x != IGNORE) for labels in stream["labels"]) if kind == "causal" else 0
        # Compute on two axes: labelled tokens (``tokens``, what the loss saw) and training FLOPs (every position
        # computed, at the full model's 6N + attention; a LoRA phase is credited as full).
        phases[phase] = {**asdict(done), "flops": done.positions * flops if done.positions else None,
                         "stream_examples": len(stream), "exposures": done.tokens / labelled if labelled else None,
                         "mode": "lora" if lora else "full", "lora_rank": train_cfg.lora_rank if lora else None,
                         "trainable_parameters": trainable}
    return phases, guard, counts


def untrained_cells(cfg: StudyConfig, run_dir: Path) -> list[tuple[str, str]]:
    """The (augmentation, backbone) cells of a run whose last phase is not saved yet, in the order a run trains
    them."""
    last = phases(cfg.protocol)[-1]
    return [(aug.name, b.name) for aug in cfg.augmentations() for b in cfg.backbones
            if phase_done(RunFolder(run_dir).phase(aug.name, b.name, last)) is None]


def train_cells(run_dir: Path, cells: list[tuple[str, str]]) -> None:
    """Train ``cells`` ((augmentation, backbone) pairs) of a run whose data and tokenizer are made, without
    evaluating: a worker of `bidirect run --workers` (`train_in_workers`), whose parent holds the run's lock, evaluates
    every cell once all are trained and writes results.json. Refused unless the parent process holds that lock."""
    holder = ownership.holder_pid(run_dir)
    if holder != os.getppid():
        raise RunDirError(f"{run_dir}: train-cells trains only for the `bidirect run --workers` that holds the run's "
                          f"lock (held by {'no process' if holder is None else f'process {holder}'}); run "
                          "`bidirect run ... --workers N` instead")
    cfg = require_run_dir(run_dir)
    folder = RunFolder(run_dir)
    data, tokenizer = StudyData.load(folder.data), read_tokenizer(run_dir)
    accelerator = make_accelerator(cfg)
    backbones, augmentations = {b.name: b for b in cfg.backbones}, {a.name for a in cfg.augmentations()}
    for augmentation, name in cells:
        if name not in backbones or augmentation not in augmentations:
            raise ConfigError(f"--cell {augmentation}/{name}: not a cell of {run_dir} (augmentations "
                              f"{', '.join(augmentations)}; backbones {', '.join(backbones)})")
    for augmentation, name in cells:
        train_cell(cfg, run_dir, data, tokenizer, augmentation, backbones[name], accelerator)


def evaluate_cell(cfg: StudyConfig, run_dir: Path, backbone: str, tokenizer, data: StudyData, augmentation: str,
                  accelerator: Accelerator) -> dict[str, dict[str, float]]:
    """Memorization (bio recall, name-tied) of the model that was trained on the bios (a property of
    pretraining; QA fine-tuning is free to overwrite the bios' wording), QA levels of the final
    model. Under the mixed protocol both are the one model. Each model's card gets the levels read on it."""
    kind = backbone_kind(backbone)
    data_sha = saved_sha256(RunFolder(run_dir).data)
    asked = data.qa_test if len(data.qa_test) else data.qa_train
    example = asked[0]["question"]  # a held-out question where there is one, for the card's snippet
    qa_levels = cell_levels(kind, cfg.masking.answer, cfg.eval.masked_length, list(data.qa_sets()))
    by_phase: dict[str, list[str]] = {}  # under the mixed protocol both are the one phase's
    by_phase.setdefault(bio_phase(cfg.protocol), []).extend(MEMORIZATION_LEVELS)
    by_phase.setdefault(final_phase(cfg.protocol), []).extend(qa_levels)
    results = {}
    for phase, levels in by_phase.items():
        model_dir = RunFolder(run_dir).model(augmentation, backbone, phase)
        if not model_dir.is_dir():
            raise RunDirError(f"{model_dir}: no trained model; finish the run with `bidirect run ... --resume`")
        model = load_backbone(model_dir).to(accelerator.device)
        scores = evaluate_model(model, kind, tokenizer, data, augmentation, cfg.eval, accelerator, levels=levels,
                                answer=cfg.masking.answer)
        if accelerator.is_main_process:
            write_card(cfg, run_dir, augmentation, backbone, phase, scores, data_sha, parameter_counts(model),
                       example, tokenizer)
        results.update(scores)
    return results


# --------------------------------------------------------------------------- the study


def make_accelerator(cfg: StudyConfig, folder: Path | None = None) -> Accelerator:
    """bf16 where the GPU has it. Without a GPU, ``cpu=True`` lets several processes
    started by ``accelerate launch --multi_gpu`` or ``torchrun`` find each other (gloo).
    ``folder``: the run or sweep folder, whose ``trackers/`` holds local trackers' files
    (``tracking.log_with``); without it nothing is tracked."""
    precision = cfg.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        # accelerate takes fp16 on a CPU without a word and trains fp32 (no autocast there), while config.yaml
        # records fp16: refuse rather than record what did not run
        raise ConfigError("mixed_precision: 'fp16' needs a CUDA GPU, and there is none here (on a CPU it would train "
                          "in fp32 and record fp16); use auto, no or bf16")
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    log_with = list(cfg.tracking.log_with) if folder is not None else []
    if log_with:
        from accelerate.tracking import get_available_trackers

        available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
        missing = [t for t in log_with if t not in available]
        if missing:  # accelerate would drop them with a warning, and the run would track nothing
            raise ConfigError(f"tracking.log_with: {', '.join(missing)} is not installed here (pip install "
                              f"{' '.join(missing)}); installed trackers: {', '.join(sorted(available)) or 'none'}")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=log_with or None,
        project_dir=str(folder / rundir.TRACKERS_DIR) if log_with else None,
    )
    check_launch(accelerator.num_processes)
    return accelerator


def _asked_processes(argv: list[str]) -> int | None:
    """The ``--num_processes`` of an ``accelerate launch`` command line, if given."""
    for i, arg in enumerate(argv):
        text = argv[i + 1] if arg == "--num_processes" and i + 1 < len(argv) else \
            arg.partition("=")[2] if arg.startswith("--num_processes=") else None
        if text is not None:
            return int(text) if text.isdigit() else None
    return None


def check_launch(processes: int) -> None:
    """Refuse a run that `accelerate launch` started as one process when more were asked: without --multi_gpu,
    ``accelerate launch --cpu --num_processes 2`` runs a single process (its simple launcher) without a word."""
    if "ACCELERATE_USE_CPU" not in os.environ or processes > 1:  # not under accelerate launch, or several processes
        return
    try:  # the launcher is this process's parent; its command line says what was asked
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return
    if not any(a.endswith(("accelerate", "accelerate.commands.launch")) for a in argv[:3]):
        return  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    asked = _asked_processes(argv)
    if asked is not None and asked > 1:
        raise ConfigError(f"accelerate launch --num_processes {asked} started 1 process: without --multi_gpu "
                          f"accelerate runs one. Use `accelerate launch --multi_gpu --num_processes {asked} ...` "
                          "(with --cpu on a CPU), or leave --num_processes out")


def _hparams(cfg: StudyConfig) -> dict[str, Any]:
    """The study as flat scalars, the form every tracker's configuration accepts."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in config_lib.dotted(cfg.to_dict()).items()}


def run_study(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator | None = None,
              opened: ownership.Opened | None = None) -> Run:
    """Every cell of the study; results.json is rewritten after each cell trained here, so a killed
    run loses at most the cell in flight (and that one resumes from its last checkpoint), and a
    finished run resumed is left as it was. ``opened``: see `start_study`."""
    accelerator = accelerator or make_accelerator(cfg)
    started = time.time()
    data, tokenizer = start_study(cfg, run_dir, accelerator, opened)
    path = RunFolder(run_dir).results
    # Training is bit-identical only at the same number of torch threads (float sums are ordered by it); another
    # count gives figures within the intervals, not the same ones: the file records it.
    run = Run(cfg.name, cfg.seed, cfg.protocol, saved_sha256(RunFolder(run_dir).data),
              majority_baselines(data, tokenizer), config=cfg.to_dict(), torch_threads=torch.get_num_threads())
    previous = read_results(run_dir) if path.is_file() else Run()
    check_results(run_dir, cfg, previous)  # cells it holds are kept: they must be of this config and data
    if accelerator.log_with:  # one tracker run per run folder (a sweep's cells share one accelerator)
        accelerator.init_trackers(run_dir.name, config=_hparams(cfg))
    for augmentation in [a.name for a in cfg.augmentations()]:
        for backbone in cfg.backbones:
            cell = previous.cell(augmentation, backbone.name)
            trained = cell is None or not cell.complete  # one cut down by hand: its saved models are evaluated again
            if trained:
                cell = run_cell(cfg, run_dir, data, tokenizer, augmentation, backbone, accelerator)
            run.cells.append(cell)
            run.wall_seconds = round(time.time() - started + (previous.wall_seconds or 0.0), 1)
            run.paired = paired_by_augmentation(run)
            if accelerator.is_main_process and trained:
                write_json_atomic(path, run.to_json())
            if trained:
                accelerator.log({f"{augmentation}/{backbone.name}/eval/{level}": scores["mean"]
                                 for level, scores in cell.levels.items()}, step=0)
    if accelerator.log_with:
        accelerator.end_training()
        accelerator.trackers = []  # the next run folder (a sweep's next cell) starts its own
    return run


def run_in_folder(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator, opened: ownership.Opened | None,
                  pretrained_from: Path | None = None, workers: int = 1, console: Any = None) -> Run:
    """A study in its run folder, made or resumed and locked by the caller (``opened`` in the main process; after a
    ``--force``, the replaced folder waits there for `start_study`): ``pretrained_from``'s finished pretraining copied
    in where the folder has no data yet, the cells trained (in ``workers`` processes side by side, `train_in_workers`)
    and evaluated, results.json written. The one way `api.run` and each cell of a sweep run a study."""
    if pretrained_from is not None and accelerator.is_main_process and not RunFolder(run_dir).data.exists():
        reuse_pretraining(cfg, run_dir, pretrained_from)
    accelerator.wait_for_everyone()
    if workers > 1:
        if accelerator.num_processes > 1:
            raise ConfigError("--workers under accelerate launch: the launched processes already share each cell; "
                              "give one or the other")
        start_study(cfg, run_dir, accelerator, opened)  # data and tokenizer, made once, before any worker
        train_in_workers(cfg, run_dir, workers, console)
    return run_study(cfg, run_dir, accelerator, opened=opened)


def train_in_workers(cfg: StudyConfig, run_dir: Path, workers: int, console: Any = None) -> None:
    """The untrained cells of a run whose data are made, dealt round robin to ``workers`` `bidirect train-cells`
    processes (this process holds the run's lock). Each trains with the seeds a one-process run uses and, on a CPU,
    one torch thread unless OMP_NUM_THREADS says otherwise; this process then evaluates at that thread count, so
    that results.json records the count the models were trained at."""
    from bidirect.workers import launch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    cells = untrained_cells(cfg, run_dir)
    argvs = [["train-cells", str(run_dir), *[f"--cell={a}/{b}" for a, b in cells[k::workers]]]
             for k in range(min(workers, len(cells)))]
    code = launch(argvs, console) if argvs else 0
    if code != 0:
        raise TrainingError(f"a worker stopped (exit {code}; its lines above say why); what the workers saved is "
                            f"kept: `bidirect run ... --out {run_dir} --resume --workers {workers}` continues")


def paired_by_augmentation(run: Run) -> dict[str, list[dict[str, Any]]]:
    """results.json's ``paired``: per augmentation, the paired differences between its backbones."""
    return {aug: paired_differences({c.backbone: c.levels for c in cells})
            for aug, cells in run.by_augmentation().items()}


def reevaluate(run_dir: Path, accelerator: Accelerator | None = None) -> Run:
    """Evaluate the saved final models of a run again and rewrite its results.json, holding the run's lock
    (a `bidirect run` writing results.json meanwhile is refused, not raced)."""
    cfg = require_run_dir(run_dir)
    folder = RunFolder(run_dir)
    if not folder.data.is_dir() or not folder.tokenizer.is_dir():  # before the folder is marked: nothing changes
        # a committed run (runs/) keeps its config and results only: datasets said "Directory .../individuals not found"
        raise RunDirError(f"{run_dir}: no data/ or tokenizer/, so no saved models to evaluate (a run folder copied "
                          f"without them, as in runs/); `bidirect run {folder.config} --out NEW` makes them again")
    accelerator = accelerator or make_accelerator(cfg)
    # Under `accelerate launch` the main process locks; its peers evaluate under its lock (as in a run).
    holding = ownership.writing(run_dir, "run", mark=True) if accelerator.is_main_process else contextlib.nullcontext()
    with holding:
        run = read_results(run_dir) if folder.results.is_file() else Run()
        check_results(run_dir, cfg, run)
        for augmentation in cfg.augmentations():  # each card is rewritten: a models/ linked elsewhere got them
            for backbone in cfg.backbones:
                for phase in phases(cfg.protocol):
                    model = folder.model(augmentation.name, backbone.name, phase)
                    rundir.check_inside(run_dir, model)
                    if accelerator.is_main_process and model.is_dir():  # what eval writes, before it evaluates
                        rundir.check_writable(model, rundir.MODEL_CARD_FILE)
        if accelerator.is_main_process:
            rundir.check_writable(run_dir, rundir.RESULTS_FILE)
        check_models(run_dir, cfg)
        data, tokenizer = StudyData.load(folder.data), read_tokenizer(run_dir)
        for augmentation in [a.name for a in cfg.augmentations()]:
            for backbone in cfg.backbones:
                levels = evaluate_cell(cfg, run_dir, backbone.name, tokenizer, data, augmentation, accelerator)
                cell = run.cell(augmentation, backbone.name)
                if cell is None:
                    run.cells.append(Cell(augmentation, backbone.name, levels))
                else:
                    cell.levels = levels
        run.baselines.update(majority_baselines(data, tokenizer))
        run.paired = paired_by_augmentation(run)
        if accelerator.is_main_process:
            write_json_atomic(folder.results, run.to_json())
    return run
