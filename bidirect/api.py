"""The package from Python (a notebook): run a study and read results as tidy pandas tables.

    import bidirect.api as bd
    results = bd.run("configs/quick.yaml", "runs/q", overrides=["pretrain.steps=400"])
    df = bd.results_frame("runs/q")            # one row per augmentation, backbone, level, attribute
    df[df.level == "qa_test"].pivot(index="backbone", columns="attribute", values="accuracy")
    bd.sweep("configs/sweep_seeds.yaml", "runs/s")  # a grid of studies, the seeds pooled (summary.json)
    bd.sweep_frame("runs/example_sweep")       # the same for every cell of a sweep, its swept values as columns
    bd.ask("runs/q", "What is the birth city of Anya Briar Forger?")   # each trained model's answer

`bidirect run` is `run` plus the printed table; `bidirect sweep` is `sweep` plus its table; `bidirect ask` is `ask`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from bidirect.config import ConfigError, StudyConfig, apply_overrides, blamed, from_dict, load, validate
from bidirect.protocol import RULES, TOLD
from bidirect.results import ATTRIBUTES, BASELINES, Run, final_phase, interval


def quiet_libraries() -> None:
    """bidirect draws its own progress; the bars of datasets' map and save and of transformers' shard writing are
    noise next to it. Packed causal windows carry position ids instead of an attention mask on purpose
    (objectives.py), so transformers' warning about padding without a mask would mislead. Called by the CLI and
    `run`, not on import."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    # accelerate's save_state drops a tied LM head's duplicate on every checkpoint and warns each time; the
    # tie is the model's own (models.py), so that one line is noise. Its other warnings still show.
    saving = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _SharedTensorFilter) for f in saving.filters):
        saving.addFilter(_SharedTensorFilter())


class _SharedTensorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in str(record.msg)  # "[RANK 0] Removed shared tensor ..."


COLUMNS = ["augmentation", "backbone", "level", "attribute", "accuracy", "ci_low", "ci_high", "items", "people"]


def study_config(config: str | Path | dict[str, Any] | StudyConfig | None = None,
                 overrides: list[str] | None = None) -> StudyConfig:
    """A validated study: from a YAML file, a mapping shaped like one, a `StudyConfig`, or the embedded
    default (None); ``overrides`` as on the command line (``pretrain.steps=400``). A phase field set on top of
    backbones that have their own value of it is applied to them too, and a note printed says so."""
    notes: list[str] = []
    if isinstance(config, (str, Path)):
        cfg = load(config, overrides, notes=notes)
    elif config is None and not overrides:
        cfg = validate(StudyConfig())
    else:
        if isinstance(config, StudyConfig):
            config = config.to_dict()
        raw = config if config is not None else StudyConfig().to_dict()
        try:
            cfg = from_dict(apply_overrides(raw, overrides or [], notes), notes)
        except ConfigError as err:  # said of the --set, or of the default it made wrong
            raise ConfigError(blamed(str(err), None, config, overrides or [])) from None
    if os.environ.get("RANK", "0") == "0":  # once under `accelerate launch`, whose processes all load the config
        for note in notes:
            print(f"note: {note}", flush=True)
    return cfg


def run(config: str | Path | dict[str, Any] | StudyConfig | None, out: str | Path, overrides: list[str] | None = None,
        resume: bool = False, force: bool = False, pretrained_from: str | Path | None = None, workers: int = 1,
        console: Any = None) -> dict[str, Any]:
    """Run a study into the folder ``out`` (the rules of `bidirect run`: a finished run is never
    overwritten without ``force``; ``resume`` continues one) and return its results.json as a dict.
    ``pretrained_from``: a run folder whose finished pretraining this study reuses (`study.reuse_pretraining`).
    ``workers``: train the cells in that many processes side by side (`study.train_in_workers`; ``console``: where
    their lines go), then evaluate them here."""
    from bidirect.ownership import open_run_dir
    from bidirect.rundir import RunFolder
    from bidirect.study import check_reuse, make_accelerator, run_in_folder

    quiet_libraries()
    cfg = study_config(config, overrides)
    run_dir = Path(out)
    # A resume of a folder without data yet (new, or stopped before its data) starts as a new run does, from the
    # pretraining asked for: it was ignored, and the pretraining trained again. A run that has its data keeps it.
    reuse = pretrained_from is not None and not (resume and RunFolder(run_dir).data.exists())
    if reuse:
        check_reuse(cfg, Path(pretrained_from), run_dir)  # before the run folder is made: a refusal changes nothing
    accelerator = make_accelerator(cfg, run_dir)
    # The main process locks the folder; the other processes of an `accelerate launch` write under its lock.
    opened = open_run_dir(run_dir, cfg, resume=resume, force=force) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    with contextlib.closing(opened) if opened is not None else contextlib.nullcontext():
        return run_in_folder(cfg, run_dir, accelerator, opened, Path(pretrained_from) if reuse else None, workers,
                             console).to_json()


def sweep(config: str | Path | dict[str, Any], out: str | Path, force: bool = False,
          pretrained_from: str | Path | None = None, console: Any = None) -> dict[str, Any] | None:
    """Run a sweep into the folder ``out`` (the rules of `bidirect sweep`: every cell checked before the folder is
    made, finished cells skipped, new values added; ``force`` replaces it) and return its summary.json as a dict
    (None in the other processes of an `accelerate launch`). ``config``: a sweep file, or a mapping shaped like
    one (a study plus ``sweep:``). ``pretrained_from``: a run folder whose finished pretraining every cell
    reuses. ``console``: a rich Console for each cell's progress line."""
    from bidirect import sweep as sweep_lib

    quiet_libraries()
    if isinstance(config, dict):
        grid, source = sweep_lib.parse(config), Path("a mapping")
    else:
        grid, source = sweep_lib.load(config), Path(config)
    return sweep_lib.run_sweep(grid, Path(out), source, force=force,
                               pretrained_from=Path(pretrained_from) if pretrained_from is not None else None,
                               console=console)


def prepare_sweep(config: str | Path, out: str | Path, pretrained_from: str | Path | None = None) -> None:
    """What `sweep` checks and makes before any cell runs (the sweep file, each cell's reuse of ``pretrained_from``,
    the folder made or its manifest extended), without running a cell: `bidirect sweep --workers` does it once
    before its workers start, so that a refusal is one error."""
    from bidirect import sweep as sweep_lib

    grid, out = sweep_lib.load(config), Path(out)
    sweep_lib.check_cells_reuse(grid, Path(pretrained_from) if pretrained_from is not None else None, out)
    sweep_lib.open_sweep_dir(out, grid, Path(config)).opened.close()


def results_frame(run: str | Path | dict[str, Any] | Run) -> pd.DataFrame:
    """A run's results (its folder or its results.json as a dict) as one row per augmentation, backbone,
    level and attribute (the six and their ``mean``): accuracy, its 95% interval over people, and the
    item and people counts of the level. Baselines are rows too (backbone ``majority``, level
    ``qa_test`` or ``qa_test_given``)."""
    from bidirect.rundir import read_results

    results = read_results(Path(run)) if isinstance(run, (str, Path)) else Run.of(run)
    rows = []
    for cell in results.cells:
        for level in cell.shown_levels():
            scores = cell.levels[level]
            for attr in (*ATTRIBUTES, "mean"):
                if scores.get(attr) is None:
                    continue
                low, high = interval(scores, attr)
                rows.append([cell.augmentation, cell.backbone, level, attr, scores[attr], low, high, scores.get("n"),
                             scores.get("people")])
    for key, level in zip(BASELINES, ("qa_test", f"qa_test_{TOLD}")):
        for attr, value in (results.baselines.get(key) or {}).items():
            if attr in (*ATTRIBUTES, "mean"):
                rows.append([None, "majority", level, attr, value, None, None, None, None])
    # counts stay integers beside the baselines' missing ones
    return pd.DataFrame(rows, columns=COLUMNS).astype({"items": "Int64", "people": "Int64"})


def sweep_frame(sweep_dir: str | Path) -> pd.DataFrame:
    """Every finished cell of a sweep folder as `results_frame` rows, with the cell's name and its
    swept values (one column per swept field) in front."""
    from bidirect.sweep import read_cells

    axes, cells = read_cells(Path(sweep_dir))
    frames = []
    for cell in cells:
        frame = results_frame(cell.run)
        for i, key in enumerate(axes):
            frame.insert(i, key, [cell.values.get(key)] * len(frame))
        frame.insert(0, "cell", cell.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


ASK_COLUMNS = ["augmentation", "backbone", "kind", "rule", "answer"]


def ask(run: str | Path, question: str, backbone: str | None = None, augmentation: str | None = None,
        length: int | None = None) -> pd.DataFrame:
    """The answer of each final (fine-tuned, or mixed) model of a run folder to ``question``, decoded by the
    evaluator's own rule for the run (`evaluate.answer_questions`): one row per augmentation and backbone (only
    ``backbone``'s, ``augmentation``'s when given), with the rule in words. ``length``: tell masked models the
    answer's length in tokens (the ``given`` rule); a run whose rule is ``given`` needs it."""
    import torch

    from bidirect.analysis.cells import select_cells
    from bidirect.data.generate import StudyData
    from bidirect.data.templates import QUESTIONS, question_attribute
    from bidirect.evaluate import answer_questions, answer_room
    from bidirect.models import backbone_kind, load_backbone
    from bidirect.rundir import RunFolder, read_tokenizer, require_run_dir
    from bidirect.tokenizer import question_ids

    run_dir = Path(run)
    cfg = require_run_dir(run_dir)
    example = QUESTIONS["birth_city"].format(name="NAME")
    if not question.strip():
        raise ConfigError(f"question: empty; ask in one of the study's forms, e.g. {example!r}")
    if length is not None and length < 1:
        raise ConfigError(f"--length: {length}; give the answer's length in tokens, 1 or more")
    context = cfg.model.context
    if length is not None and length >= context:  # 10**9 masks were allocated: a hang, then out of memory
        raise ConfigError(f"--length: {length}; the models read at most model.context = {context} tokens, the "
                          "question included")
    cfg, cells, phase = select_cells(run_dir, augmentation, backbone, final_phase(cfg.protocol))
    rule = TOLD if length is not None else cfg.eval.masked_length
    if any(backbone_kind(b) == "masked" for _, b in cells):  # before any model is loaded
        if RULES[rule].reads == "told" and length is None:
            raise ConfigError("--length: this run tells masked models the answer's length (eval.masked_length: "
                              f"{rule}); give it, --length N tokens")
        if RULES[rule].by_attribute and question_attribute(question) is None:
            raise ConfigError(f"question: {question!r} is in none of the study's forms, and this run chooses a "
                              f"masked answer's length from the attribute asked (eval.masked_length: {rule}); ask "
                              f"in one of them (e.g. {example!r}), or tell the length with --length N")
    run_folder, device = RunFolder(run_dir), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, data = read_tokenizer(run_dir), StudyData.load(run_folder.data)
    # A question past the context indexed past the position table (an IndexError), or was read cut short.
    asked, room = len(question_ids(tokenizer, question)), answer_room(tokenizer, data, length)
    if asked + room > context:
        told = length is not None and length + 1 == room
        what, fix = (f" (--length {length} and end-of-text)", "give a shorter --length") if told else \
            ("", "ask a shorter question")
        raise ConfigError(f"question: {asked:,} tokens; with the {room} the answer takes{what}, the models read at "
                          f"most model.context = {context} tokens; {fix}")
    if length is not None and all(backbone_kind(b) == "causal" for _, b in cells):  # it was ignored without a word
        names = ", ".join(dict.fromkeys(b for _, b in cells))
        raise ConfigError(f"--length {length}: tells masked models the answer's length, and the models asked "
                          f"({names}) are causal: each writes its answer until end-of-text. Leave --length out, or "
                          "ask a masked backbone")
    # Answered all the same (a model continues any text), but said: such an answer reads as a recalled one.
    attribute = question_attribute(question)
    if attribute is None:
        print(f"note: the question is in none of the study's forms (e.g. {example!r}); the models were trained on "
              "those, so their answers to it are no measure of what they stored", flush=True)
    elif attribute in QUESTIONS:
        form = re.sub(r"\\\{name\\\}", "(.+)", re.escape(QUESTIONS[attribute]))
        person = re.fullmatch(form, question.strip())
        if person is not None and person.group(1) not in set(data.individuals["full_name"]):
            print(f"note: {person.group(1)!r} is none of this study's {len(data.individuals):,} people; the models "
                  "never saw that person, so their answers are guesses", flush=True)
    rows = []
    for aug, name in cells:
        kind = backbone_kind(name)
        model = load_backbone(run_folder.model(aug, name, phase)).to(device)
        said = answer_questions(model, kind, tokenizer, data, [question], cfg.eval, cfg.masking.answer, length)[0]
        if kind == "causal":
            how = "greedy" if cfg.eval.num_beams == 1 else f"beam search, {cfg.eval.num_beams} beams"
        else:
            told = f" ({length} tokens)" if length is not None else ""
            how = f"{rule} length{told}, {cfg.eval.fill} fill"
        rows.append([aug, name, kind, how, said])
    return pd.DataFrame(rows, columns=ASK_COLUMNS)
