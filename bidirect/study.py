"""A study from one config: data, tokenizer, every (augmentation, backbone) trained and evaluated.

Layout of a run folder::

    RUN_DIR/.bidirect              marker: bidirect wrote this folder (--force may replace it); locked while written
    RUN_DIR/config.yaml            the study as run (a resume must match it)
    RUN_DIR/data/                  individuals, qa_train, qa_test, bios/<augmentation>  (datasets)
    RUN_DIR/tokenizer/             the shared tokenizer (PreTrainedTokenizerFast)
    RUN_DIR/tokenizer.sha256       its tokenizer.json's hash: a resume or eval with another tokenizer is refused
    RUN_DIR/models/<aug>/<backbone>/<phase>/model   save_pretrained folders; checkpoints/ while training
    RUN_DIR/results.json           every number of the tables, written after each cell
"""

from __future__ import annotations

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
from bidirect import rundir
from bidirect.config import GIVEN_LENGTH_LEVELS, INVERSE_LEVELS, ConfigError, StudyConfig, TrainConfig
from bidirect.data.generate import StudyData, generate, saved_sha256
from bidirect.evaluate import MEMORIZATION_LEVELS, evaluate_model, majority_baselines
from bidirect.lora import add_lora, merge_lora, trainable_parameters
from bidirect.models import backbone_kind, build_backbone, load_backbone, parameter_counts
from bidirect.objectives import IGNORE, encode_qa, make_objective, tokenize_bios
from bidirect.rundir import RunDirError
from bidirect.tokenizer import load_tokenizer, qa_ids, qa_text, train_tokenizer
from bidirect.trainer import TrainingError, check_batch, phase_done, train_phase, write_json_atomic

RESULTS = "results.json"
TOKENIZER_SHA = "tokenizer.sha256"  # sha256 of tokenizer/tokenizer.json, written with it: a swapped tokenizer is caught
FULL_NAME = re.compile(r"\b[A-Z][a-zA-Z]+ [A-Z][a-zA-Z]+ [A-Z][a-zA-Z]+\b")  # first middle last


# --------------------------------------------------------------------------- run folder


def open_run_dir(run_dir: Path, cfg: StudyConfig, resume: bool = False, force: bool = False,
                 command: str = "run") -> rundir.Opened:
    """Make ``run_dir`` ready for ``cfg``: new, resumed (same config) or, with ``force``, replaced
    (moved aside until the new run passes `preflight`). Locks it; the caller closes the result."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir}: is a file, not a folder")
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    saved = run_dir / "config.yaml"
    aside = None
    if existing and force:
        aside = rundir.replace(run_dir, "run")
    elif existing and resume:
        if not saved.is_file():
            raise RunDirError(f"--resume {run_dir}: no config.yaml there, so it is not a bidirect run folder")
        if config_lib.load(saved).to_dict() != cfg.to_dict():
            raise RunDirError(
                f"--resume {run_dir}: the config differs from the one this run started with ({saved}); "
                "resume with that config or start a new run folder"
            )
        if rundir.folder_kind(run_dir) is None:  # a run of a version before the marker: the config proves it ours
            rundir.write_marker(run_dir, "run")
        lock = rundir.Lock(run_dir).acquire()
        return rundir.Opened(run_dir, lock)
    elif existing:
        finished = (run_dir / RESULTS).is_file()
        again = "use --resume to continue it, " if command == "run" else ""
        raise RunDirError(
            f"--out {run_dir}: folder is not empty{' and holds a finished run' if finished else ''}; "
            f"{again}--force to replace it, or another --out"
        )
    try:
        rundir.make_folder(run_dir)
        rundir.write_marker(run_dir, "run")
        lock = rundir.Lock(run_dir).acquire()
        config_lib.dump(cfg, saved)
    except BaseException:
        rundir.settle(run_dir, aside, False)
        raise
    return rundir.Opened(run_dir, lock, aside)


def require_run_dir(run_dir: Path) -> StudyConfig:
    """The config of an existing run folder, or a clear error."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a bidirect run folder (no config.yaml)")
    return config_lib.load(run_dir / "config.yaml")


def read_results(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    path = run_dir / RESULTS
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {RESULTS} (the run has not evaluated anything yet)")
    try:
        results = json.loads(path.read_text())
    except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        # Not `bidirect eval`: it reads this file first. A resume re-evaluates the saved models and writes it anew.
        raise RunDirError(
            f"{path}: corrupt JSON ({type(err).__name__}: {str(err)[:120]}); move it away, then "
            f"`bidirect run {run_dir / 'config.yaml'} --out {run_dir} --resume` writes it again from the saved models"
        ) from None
    if not isinstance(results, dict) or "results" not in results:
        raise RunDirError(f"{path}: not a bidirect results file (no 'results' key)")
    return results


# --------------------------------------------------------------------------- data


def prepare_data(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator | None = None):
    """Generate (or load, when already there) the data and the tokenizer of a study."""
    data_dir, tok_dir = run_dir / "data", run_dir / "tokenizer"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main and not (tok_dir / "tokenizer.json").is_file():
        data = generate(cfg.data, cfg.augmentations(), cfg.seed)
        tmp = run_dir / ".data.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        data.save(tmp)
        shutil.rmtree(data_dir, ignore_errors=True)
        tmp.rename(data_dir)
        # P_test QA never reaches the tokenizer either: bios and P_train QA only.
        corpus = [t for aug in data.bios for t in data.bios[aug]["text"]]
        for qa in [data.qa_train] + ([data.inverse_train] if data.inverse_train is not None else []):
            corpus += [qa_text(q, a) for q, a in zip(qa["question"], qa["answer"])]
        tokenizer = train_tokenizer(corpus, cfg.tokenizer.kind, cfg.tokenizer.vocab_size)
        # Written aside, hashed, then renamed: a kill leaves either no tokenizer (regenerated) or a whole one.
        tmp_tok = run_dir / ".tokenizer.tmp"
        shutil.rmtree(tmp_tok, ignore_errors=True)
        tokenizer.save_pretrained(str(tmp_tok))
        sha = tmp_tok / ".sha256.tmp"
        sha.write_text(f"{_file_sha(tmp_tok / 'tokenizer.json')}  tokenizer/tokenizer.json\n")
        os.replace(sha, run_dir / TOKENIZER_SHA)
        shutil.rmtree(tok_dir, ignore_errors=True)
        os.replace(tmp_tok, tok_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return StudyData.load(data_dir), run_tokenizer(run_dir)


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_tokenizer(run_dir: Path):
    """The tokenizer of a run, checked against the hash recorded when the run made it: token ids
    mean nothing with another tokenizer, so a tokenizer/ copied from another run is refused."""
    tok_dir = run_dir / "tokenizer"
    try:
        tokenizer = load_tokenizer(tok_dir)
    except FileNotFoundError:
        raise
    except Exception as err:  # tokenizers' own errors (truncated JSON) come from Rust as plain Exceptions
        raise RunDirError(
            f"{tok_dir / 'tokenizer.json'}: cannot be read ({type(err).__name__}: {str(err)[:120]}); it is damaged. "
            "Put back the tokenizer/ this run was made with, or start over with --force."
        ) from None
    recorded = run_dir / TOKENIZER_SHA
    if recorded.is_file():  # runs made before the hash was recorded are not checked
        expected = (recorded.read_text().split() or [""])[0]
        actual = _file_sha(tok_dir / "tokenizer.json")
        if actual != expected:
            raise RunDirError(
                f"{tok_dir}: the tokenizer does not match the run (sha256 of tokenizer.json is {actual[:12]}..., "
                f"the run recorded {expected[:12]}... in {recorded}; vocabulary of {len(tokenizer)} tokens). "
                "Put back the tokenizer/ this run was made with, or start a new run."
            )
    return tokenizer


def check_context(cfg: StudyConfig, data: StudyData, tokenizer) -> None:
    """Every training document must fit one window of ``model.context`` tokens with its
    end-of-text; packing would otherwise cut it, and the facts at its end, silently."""
    longest = (0, "")
    for aug in [a.name for a in cfg.augmentations()]:
        bios = data.bios[aug]
        lengths = [len(ids) for ids in tokenizer(list(bios["text"]), add_special_tokens=False)["input_ids"]]
        i = max(range(len(lengths)), key=lengths.__getitem__)
        longest = max(longest, (lengths[i], f"the longest biography ({aug}, individual {bios[i]['id']})"))
    for name, qa in data.qa_sets().items():  # inverse QA too, under data.inverse
        questions, answers = qa_ids(tokenizer, qa["question"], qa["answer"])
        lengths = [len(q) + len(a) for q, a in zip(questions, answers)]
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
            objective = make_objective(kind, tokenizer, cfg.model.context, cfg.masking, cfg.seed)
            streams = {phase: len(s) for phase, s in _streams(cfg, objective, data, tokenizer, augmentation).items()}
            for backbone in cfg.backbones:
                if backbone_kind(backbone.name) != kind:
                    continue
                for phase, examples in streams.items():
                    section = "finetune" if phase == "finetune" else "pretrain"
                    # The field where the user set it: the backbone's override (named as validate names
                    # overrides), else the study's phase.
                    where = f"backbones.{backbone.name}.{section}" if "batch_size" in getattr(backbone, section) \
                        else section
                    check_batch(_phase_config(cfg, backbone, phase), examples, processes,
                                f"the {phase} stream of {augmentation}/{backbone.name}", f"{where}.batch_size")


def start_study(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator | None = None,
                opened: rundir.Opened | None = None, train: bool = True):
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


def _streams(cfg: StudyConfig, objective, data: StudyData, tokenizer, augmentation: str) -> dict[str, Dataset]:
    """The training streams of a protocol: name -> dataset of examples."""
    values = cfg.masking.span == "attribute"  # value spans for attribute-span masking
    bios = objective.bio_examples(tokenize_bios(data.bios[augmentation], tokenizer, values), cfg.seed)
    qa_train = data.qa_train  # and P_train's inverse search QA under data.inverse
    if data.inverse_train is not None:
        qa_train = concatenate_datasets([qa_train, data.inverse_train])
    qa = objective.qa_examples(encode_qa(qa_train, tokenizer), cfg.seed)
    if cfg.protocol == "mixed":
        share = cfg.pretrain.qa_share
        mixed = interleave_datasets([bios, qa], probabilities=[1 - share, share], seed=cfg.seed,
                                    stopping_strategy="all_exhausted")
        return {"mixed": mixed}
    return {"pretrain": bios, "finetune": qa}


def _phase_config(cfg: StudyConfig, backbone, phase: str) -> TrainConfig:
    return cfg.train_config(backbone, "finetune" if phase == "finetune" else "pretrain")


def run_cell(cfg: StudyConfig, run_dir: Path, data: StudyData, tokenizer, augmentation: str, backbone,
             accelerator: Accelerator) -> dict[str, Any]:
    """Train one backbone on one augmentation through the protocol, then evaluate it."""
    kind = backbone_kind(backbone.name)
    cell_dir = run_dir / "models" / augmentation / backbone.name
    objective = make_objective(kind, tokenizer, cfg.model.context, cfg.masking, cfg.seed)
    streams = _streams(cfg, objective, data, tokenizer, augmentation)
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
    phases = {}
    for phase, stream in streams.items():
        phase_dir = cell_dir / phase
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
            model = load_backbone(phase_dir / "model")
        labelled = sum(sum(1 for x in labels if x != IGNORE) for labels in stream["labels"]) if kind == "causal" else 0
        phases[phase] = {**asdict(done), "stream_examples": len(stream),
                         "exposures": done.tokens / labelled if labelled else None,
                         "mode": "lora" if lora else "full", "lora_rank": train_cfg.lora_rank if lora else None,
                         "trainable_parameters": trainable}
    results = evaluate_cell(cfg, cell_dir, kind, tokenizer, data, augmentation, accelerator)
    return {"kind": kind, "parameters": counts, "phases": phases, "leak_check": guard, "results": results}


def evaluate_cell(cfg: StudyConfig, cell_dir: Path, kind: str, tokenizer, data: StudyData, augmentation: str,
                  accelerator: Accelerator) -> dict[str, dict[str, float]]:
    """Memorization (bio recall, name-tied) of the model that was trained on the bios (a property of
    pretraining; QA fine-tuning is free to overwrite the bios' wording), QA levels of the final
    model. Under the mixed protocol both are the one model."""
    qa_levels = [lv for lv in ("qa_train", "qa_val", "qa_test") if lv in data.qa_sets()]
    if kind == "masked" and cfg.eval.masked_length == "free":
        qa_levels += GIVEN_LENGTH_LEVELS
    qa_levels += [lv for lv in INVERSE_LEVELS if lv in data.qa_sets()]
    if cfg.protocol == "mixed":
        by_phase = {"mixed": [*MEMORIZATION_LEVELS, *qa_levels]}
    else:
        by_phase = {"pretrain": list(MEMORIZATION_LEVELS), "finetune": qa_levels}
    results = {}
    for phase, levels in by_phase.items():
        model_dir = cell_dir / phase / "model"
        if not model_dir.is_dir():
            raise RunDirError(f"{model_dir}: no trained model; finish the run with `bidirect run ... --resume`")
        model = load_backbone(model_dir).to(accelerator.device)
        results.update(evaluate_model(model, kind, tokenizer, data, augmentation, cfg.eval, cfg.masking,
                                      accelerator, levels=levels))
    return results


# --------------------------------------------------------------------------- the study


def make_accelerator(cfg: StudyConfig, folder: Path | None = None) -> Accelerator:
    """bf16 where the GPU has it. Without a GPU, ``cpu=True`` lets several processes
    started by ``accelerate launch --multi_gpu`` or ``torchrun`` find each other (gloo).
    ``folder``: the run or sweep folder, whose ``trackers/`` holds local trackers' files
    (``tracking.log_with``); without it nothing is tracked."""
    precision = cfg.pretrain.mixed_precision
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
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=log_with or None,
        project_dir=str(folder / "trackers") if log_with else None,
    )


def _hparams(cfg: StudyConfig) -> dict[str, Any]:
    """The study as flat scalars, the form every tracker's configuration accepts."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in config_lib.dotted(cfg.to_dict()).items()}


def run_study(cfg: StudyConfig, run_dir: Path, accelerator: Accelerator | None = None, on_cell=None,
              opened: rundir.Opened | None = None) -> dict[str, Any]:
    """Every cell of the study; results.json is rewritten after each cell trained here, so a killed
    run loses at most the cell in flight (and that one resumes from its last checkpoint), and a
    finished run resumed is left as it was. ``opened``: see `start_study`."""
    accelerator = accelerator or make_accelerator(cfg)
    started = time.time()
    data, tokenizer = start_study(cfg, run_dir, accelerator, opened)
    path = run_dir / RESULTS
    out: dict[str, Any] = {"study": cfg.name, "seed": cfg.seed, "protocol": cfg.protocol,
                           "data_sha256": saved_sha256(run_dir / "data"),
                           **majority_baselines(data, tokenizer), "results": {}, "training": {},
                           "parameters": {}, "leak_check": {}, "config": cfg.to_dict()}
    previous = read_results(run_dir) if path.is_file() else {}
    if accelerator.log_with:  # one tracker run per run folder (a sweep's cells share one accelerator)
        accelerator.init_trackers(run_dir.name, config=_hparams(cfg))
    for augmentation in [a.name for a in cfg.augmentations()]:
        for backbone in cfg.backbones:
            done = previous.get("results", {}).get(augmentation, {}).get(backbone.name)
            try:
                cell = None if done is None else {
                    "results": done, "phases": previous["training"][augmentation][backbone.name],
                    "parameters": previous["parameters"][backbone.name],
                    "leak_check": previous["leak_check"][augmentation][backbone.name]}
            except (KeyError, TypeError):  # a results.json cut down by hand: evaluate the saved models again
                cell = None
            trained = cell is None
            if trained:
                cell = run_cell(cfg, run_dir, data, tokenizer, augmentation, backbone, accelerator)
            out["results"].setdefault(augmentation, {})[backbone.name] = cell["results"]
            out["training"].setdefault(augmentation, {})[backbone.name] = cell["phases"]
            out["leak_check"].setdefault(augmentation, {})[backbone.name] = cell["leak_check"]
            out["parameters"][backbone.name] = cell["parameters"]
            out["wall_seconds"] = round(time.time() - started + previous.get("wall_seconds", 0.0), 1)
            if accelerator.is_main_process and trained:
                write_json_atomic(path, out)
            if trained:
                accelerator.log({f"{augmentation}/{backbone.name}/eval/{level}": scores["mean"]
                                 for level, scores in cell["results"].items()}, step=0)
            if on_cell is not None:
                on_cell(augmentation, backbone.name, cell)
    if accelerator.log_with:
        accelerator.end_training()
        accelerator.trackers = []  # the next run folder (a sweep's next cell) starts its own
    return out


def reevaluate(run_dir: Path, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Evaluate the saved final models of a run again and rewrite its results.json."""
    cfg = require_run_dir(run_dir)
    accelerator = accelerator or make_accelerator(cfg)
    data, tokenizer = StudyData.load(run_dir / "data"), run_tokenizer(run_dir)
    results = read_results(run_dir) if (run_dir / RESULTS).is_file() else {"results": {}}
    for augmentation in [a.name for a in cfg.augmentations()]:
        for backbone in cfg.backbones:
            cell_dir = run_dir / "models" / augmentation / backbone.name
            scores = evaluate_cell(cfg, cell_dir, backbone_kind(backbone.name), tokenizer, data, augmentation,
                                   accelerator)
            results["results"].setdefault(augmentation, {})[backbone.name] = scores
    results.update(majority_baselines(data, tokenizer))
    if accelerator.is_main_process:
        write_json_atomic(run_dir / RESULTS, results)
    return results
