"""Sweeps: one study file, a grid of values, one run folder per combination, and the seeds pooled.

A sweep file is a study file with one extra top-level mapping, ``sweep:``, from dotted field
paths of the study to lists of values::

    sweep:
      seed: [0, 1, 2]
      pretrain.steps: [100, 200]

An axis can also be a set of named variants, each a mapping of dotted paths to values that go
together (a matched grid: each objective with its own backbone and masking)::

    sweep:
      objective:
        causal: {backbones: [gpt2-rope]}
        mlm-u: {backbones: [gbert], masking.rate: uniform}

The cell is named by the variant (``objective=mlm-u``) and the axis's values are the names.

`bidirect sweep FILE --out DIR` (`run_sweep`; `bidirect.api.sweep` from Python) runs the cartesian product,
each combination ("cell") as an ordinary run folder ``DIR/<cell name>/`` named from its values
(``seed=1,pretrain.steps=200``).
Every cell is built and validated with the study's own loader before anything runs, so a bad
key or value stops the sweep with one error that names it. A second invocation skips finished
cells and resumes an unfinished one from its checkpoints (the run folder's own resume);
adding values to a list later adds cells. ``sweep`` is not a field of `StudyConfig`: it is
parsed here and never reaches a run's config.yaml.

Layout::

    DIR/sweep.yaml           the sweep file as given (study + sweep:)
    DIR/sweep.json           the axes and every cell's name and values
    DIR/<cell>/              a run folder (config.yaml, results.json, models/ ...)
    DIR/summary.json         `aggregate` (`analysis.seeds.pool`): per (other values, augmentation,
                             backbone), mean and 95% t-interval over seeds of every level and attribute

This module owns a sweep from its file to its summary: parse, open, run, read the finished cells, pool
them and write summary.json (`summarize`). The report only presents what `aggregate` returns.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape

from bidirect import ownership, rundir
from bidirect.analysis.seeds import INTERVAL, SEED, pool
from bidirect.config import (
    ConfigError,
    StudyConfig,
    check_key,
    dotted,
    from_dict,
    read_yaml,
    set_path,
    shown,
)
from bidirect.ownership import check_ours, is_summary, open_run_dir
from bidirect.results import Run, run_or_none
from bidirect.rundir import (
    MANIFEST_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    RunDirError,
    RunFolder,
    read_json,
    read_results,
    write_json_atomic,
)

MAX_CELLS = 10_000  # cells of one sweep: far past any grid of studies, and parsed in under a minute


@dataclass
class SweepCell:
    """One point of the grid: a run folder of the sweep, named by its values (not a results.Cell, which is one
    augmentation and backbone of a run)."""

    name: str
    values: dict[str, Any]  # dotted path -> value
    config: StudyConfig | None = None  # set where the sweep file lists the cell (it can run)
    run: Run | None = None  # set where the cell's results were read (`read_cells`)


@dataclass
class Sweep:
    study: dict[str, Any]  # the study part of the file, as written
    axes: dict[str, list[Any]]  # dotted path -> values, in the file's order
    cells: list[SweepCell] = field(default_factory=list)
    # Set by `open_sweep_dir` in the process that writes the folder: its lock, and after --force the
    # old folder kept aside until the first cell passes its checks (ownership.Opened).
    opened: Any = field(default=None, repr=False, compare=False)

    def manifest(self) -> dict[str, Any]:
        """The axes' values (a named axis: its names) and every cell's."""
        axes = {k: list(v) for k, v in self.axes.items()}
        return {"axes": axes, "cells": [{"name": c.name, "values": c.values} for c in self.cells]}


# --------------------------------------------------------------------------- parsing


def value_label(value: Any) -> str:
    """A value as it appears in a cell's folder name."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return str(value.get("name", "-".join(f"{k}-{value_label(v)}" for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return "_".join(value_label(v) for v in value)
    return str(value)


def cell_name(values: dict[str, Any]) -> str:
    name = ",".join(f"{k}={value_label(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._+=,-]", "-", name)


def _check_folder_names(key: str, values: list[Any]) -> None:
    """Two values of an axis must not give one cell folder ("run 1", "run-1" and "run/1" are all
    ``run-1``): the second cell would be skipped as finished, or resume the first's run."""
    seen: dict[str, Any] = {}
    for value in values:
        name = cell_name({key: value})
        if name in seen:
            raise ConfigError(f"sweep.{key}: {seen[name]!r} and {value!r} give one folder name ({name}); a cell's "
                              "folder keeps letters, digits and . _ + = , - only, so make the values differ in those")
        seen[name] = value


def parse(raw: Any, where: str = "sweep file") -> Sweep:
    """Split a parsed sweep file into study and axes and build every cell's config.

    Every problem is a `ConfigError` naming the sweep key (``sweep.pretrain.steps[1]``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    study = dict(raw)
    axes = study.pop("sweep", None)
    settings = {}  # axis -> [(the cell's value, {dotted path: value to set})]
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{where}: needs a top-level 'sweep:' mapping of dotted field paths to lists of values, "
                          "e.g. sweep: {seed: [0, 1, 2], pretrain.steps: [100, 200]}; got "
                          f"{shown(axes)}. A study without one runs with `bidirect run`.")
    # Before any cell is built (milliseconds each): 300 x 300 values sat minutes building 90,000 configs, silent.
    sizes = [len(v) if isinstance(v, (list, dict)) else 1 for v in axes.values()]
    if math.prod(sizes) > MAX_CELLS:
        raise ConfigError(f"sweep: {' x '.join(f'{n:,}' for n in sizes)} values make {math.prod(sizes):,} cells, each "
                          f"a whole study; at most {MAX_CELLS:,}. Split it into several sweeps.")
    try:
        from_dict(copy.deepcopy(study))
    except ConfigError as err:
        raise ConfigError(f"{where}: the study part (without sweep:): {err}") from None
    for key, values in axes.items():
        if isinstance(values, dict):
            settings[key] = _variants(study, key, values, axes)
            continue
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
            raise ConfigError(f"sweep: key {shown(key)} is not a dotted field path like pretrain.steps")
        check_key(key, "sweep.")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values, got {shown(values)}")
        for other in axes:
            if other != key and other.startswith(key + "."):
                raise ConfigError(f"sweep.{key}: overlaps sweep.{other}; sweep one or the other")
        labels = [value_label(v) for v in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"sweep.{key}: a value is listed twice: {shown(values)}")
        _check_folder_names(key, values)
        # Each value alone on the study first: an error names the key and the value.
        for i, value in enumerate(values):
            trial = copy.deepcopy(study)
            set_path(trial, key, value, "sweep.")
            try:
                from_dict(trial)
            except ConfigError as err:
                raise ConfigError(f"sweep.{key}[{i}] = {shown(value)}: {err}") from None
        settings[key] = [(value, {key: value}) for value in values]
    sweep = Sweep(study=study, axes={k: dict(v) if isinstance(v, dict) else list(v) for k, v in axes.items()})
    for combo in itertools.product(*settings.values()):
        values = {key: value for key, (value, _) in zip(axes, combo)}
        merged = copy.deepcopy(study)
        for _, paths in combo:
            for path, value in paths.items():
                set_path(merged, path, value, "sweep.")
        name = cell_name(values)
        try:
            cfg = from_dict(merged)
        except ConfigError as err:  # valid values that do not go together (heads that do not divide a width)
            raise ConfigError(f"sweep cell {name}: {err}") from None
        twin = next((c for c in sweep.cells if c.name == name), None)
        if twin is not None:  # values of several axes that spell one name together
            raise ConfigError(f"sweep: the cells {twin.values} and {values} give one folder name ({name}); make "
                              "the values differ in letters, digits or . _ + = , -")
        sweep.cells.append(SweepCell(name, values, cfg))
    return sweep


def _variants(study: dict[str, Any], key: Any, variants: dict[Any, Any], axes: dict[str, Any]
              ) -> list[tuple[str, dict[str, Any]]]:
    """A named axis's (name, {dotted path: value}) pairs, each variant checked alone on the study."""
    fields = [f.name for f in dataclasses.fields(StudyConfig)]
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", key) or key in fields:
        raise ConfigError(f"sweep: {shown(key)} maps names to settings, so it must be a name that is not a field of "
                          f"the study ({', '.join(fields)}), e.g. objective")
    if not variants:
        raise ConfigError(f"sweep.{key}: no variants; give name: {{dotted.path: value, ...}} pairs")
    swept = [k for k in axes if k != key and not isinstance(axes[k], dict)]
    out = []
    for name, paths in variants.items():
        where = f"sweep.{key}.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise ConfigError(f"sweep.{key}: variant name {shown(name)} must be letters, digits and . _ + - only")
        if not isinstance(paths, dict) or not paths:
            raise ConfigError(f"{where}: expected a mapping of dotted field paths to values, e.g. "
                              f"{{masking.rate: uniform}}; got {shown(paths)}")
        trial = copy.deepcopy(study)
        for path, value in paths.items():
            if not isinstance(path, str):
                raise ConfigError(f"{where}: key {shown(path)} is not a dotted field path like masking.rate")
            check_key(path, f"{where}: ")
            clash = [k for k in swept if k == path or k.startswith(path + ".") or path.startswith(k + ".")]
            if clash:
                raise ConfigError(f"{where}.{path}: also swept as sweep.{clash[0]}; set it in one place")
            set_path(trial, path, value, f"{where}: ")
        try:
            from_dict(trial)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        out.append((name, paths))
    return out


def load(path: str | Path) -> Sweep:
    path = Path(path)
    raw = read_yaml(path, "sweep file")
    try:
        return parse(raw, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if not str(err).startswith(str(path)) else str(err)) from None


# --------------------------------------------------------------------------- running


def is_sweep_dir(path: Path) -> bool:
    """A sweep folder bidirect wrote (its marker, or the sweep.yaml and sweep.json of an older version):
    a folder that merely holds run folders is no sweep, and its runs are not seeds of one."""
    return path.is_dir() and rundir.folder_kind(path) == "sweep"


def read_manifest(path: Path, advice: str) -> dict[str, Any]:
    """A sweep.json: axes and cells, or a `RunDirError` naming it and ``advice``."""
    meta = read_json(path, "the sweep's manifest", advice)
    why = rundir.manifest_why_not(meta)
    if why is not None:
        raise RunDirError(f"{path}: not a sweep manifest ({why}); {advice}")
    return meta


def cell_finished(run_dir: Path, cfg: StudyConfig) -> bool:
    """Every (augmentation, backbone) of the cell has its three levels in results.json."""
    path = RunFolder(run_dir).results
    if not path.is_file():
        return False
    try:
        run = run_or_none(json.loads(path.read_text()))
    except json.JSONDecodeError:
        return False
    return run is not None and all(run.cell(aug.name, backbone.name) is not None
                                   for aug in cfg.augmentations() for backbone in cfg.backbones)


def open_sweep_dir(out: Path, sweep: Sweep, source: Path, force: bool = False, write: bool = True,
                   console=None) -> Sweep:
    """Make ``out`` ready for ``sweep``: new, continued (same study and keys), or replaced with ``force``
    (the old folder moved aside until the first cell passes its checks, see `run_sweep`). Returns the
    sweep whose cells are those already there plus the new ones, holding the folder's lock in
    ``opened`` (the caller closes it). Another worker holding the lock for a moment (a claim) is waited
    for (``console``: where to say so). ``write=False``: only read (the other processes of a distributed sweep)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: is a file, not a folder")
    if not write:
        return _merge_old(out, sweep)
    aside = ownership.replace(out, "sweep") if force and out.is_dir() and any(out.iterdir()) else None
    try:
        if not out.is_dir() or not any(out.iterdir()):  # created whole: a kill leaves nothing or a sweep folder
            try:
                lock = ownership.create_folder(out, "sweep", {SWEEP_FILE: _sweep_text(sweep, source),
                                                           MANIFEST_FILE: rundir.json_text(sweep.manifest())})
                return dataclasses.replace(sweep, opened=ownership.Opened(out, lock, aside))
            except ownership.AlreadyMade:  # a worker started at the same instant made it: join it
                pass
        rundir.check_marker(out)
        if rundir.marker_kind(out) is None:
            if any(out.iterdir()) and rundir.folder_kind(out) is None:
                why = rundir.legacy_why_not(out, "sweep")
                raise RunDirError(f"--out {out}: not empty and not a sweep folder bidirect wrote (no {rundir.MARKER} "
                                  f"marker, and {why}); bidirect will not write into it. Give another --out.")
            _merge_old(out, sweep)  # a sweep of a version before the marker: refused unless it is this sweep's
            rundir.write_marker(out, "sweep")  # new, or marked: a file added, nothing deleted
        lock = _take(out, console)
        try:
            sweep = _merge_old(out, sweep)
            rundir.write_text_atomic(out / SWEEP_FILE, _sweep_text(sweep, source))
            write_json_atomic(out / MANIFEST_FILE, sweep.manifest())
        except BaseException:
            lock.release()
            raise
    except BaseException:
        ownership.settle(out, aside, False)
        raise
    return dataclasses.replace(sweep, opened=ownership.Opened(out, lock, aside))


def _sweep_text(sweep: Sweep, source: Path) -> str:
    """sweep.yaml: the study and its axes as this folder sweeps them."""
    sweep_file = copy.deepcopy(sweep.study)
    sweep_file["sweep"] = sweep.axes
    return f"# {source} as swept\n" + yaml.safe_dump(sweep_file, sort_keys=False)


def _merge_old(out: Path, sweep: Sweep) -> Sweep:
    """``sweep`` with the cells and values a sweep already in ``out`` has, which it must match."""
    if any(p.name != rundir.MARKER for p in out.iterdir()):
        if not (out / MANIFEST_FILE).is_file():
            raise RunDirError(f"--out {out}: not empty and not a sweep folder (no {MANIFEST_FILE}); use another --out, "
                              "or --force if it is a bidirect folder to replace")
        advice = "it was damaged; put back a good copy, or start over in another --out"
        old = read_manifest(out / MANIFEST_FILE, advice)
        try:
            old_study = read_yaml(out / SWEEP_FILE, "sweep file")
        except ConfigError as err:
            raise RunDirError(f"{err}; {advice}") from None
        if not isinstance(old_study, dict):
            raise RunDirError(f"{out / SWEEP_FILE}: not a sweep file; {advice}")
        old_axes = old_study.pop("sweep", None) or {}
        if list(old["axes"]) != list(sweep.axes) or old_study != sweep.study:
            raise RunDirError(
                f"--out {out}: holds a sweep of another study or over other keys ({', '.join(old['axes'])}); "
                "a sweep folder can only gain values. Use another --out, or --force to start over."
            )
        known = {c.name for c in sweep.cells}
        extra = [SweepCell(c["name"], c["values"]) for c in old["cells"] if c["name"] not in known]
        axes = {}  # the old values first, then the new ones
        for key, values in sweep.axes.items():
            if isinstance(values, dict):  # named variants: a name keeps the settings its cells were run with
                before = old_axes.get(key) if isinstance(old_axes.get(key), dict) else {}
                changed = [n for n in values if n in before and before[n] != values[n]]
                if changed:
                    raise RunDirError(f"--out {out}: sweep.{key}.{changed[0]} has other settings than when its cell "
                                      "ran; give the new settings a new name, or --force to start over")
                axes[key] = {**before, **values}
            else:
                axes[key] = list(old["axes"][key]) + [v for v in values if v not in old["axes"][key]]
        sweep = Sweep(sweep.study, axes, extra + sweep.cells)
    return sweep


def check_cells_reuse(sweep: Sweep, pretrained_from: Path | None, out: Path) -> None:
    """Each cell's reuse of ``pretrained_from``'s pretraining checked (`study.check_reuse`), before the folder is
    made."""
    from bidirect.study import check_reuse

    if pretrained_from is not None:
        for cell in sweep.cells:
            check_reuse(cell.config, pretrained_from, out)


def run_sweep(sweep: Sweep, out: Path, source: Path, force: bool = False, pretrained_from: Path | None = None,
              console=None) -> dict[str, Any] | None:
    """Run ``sweep`` (read from ``source``) into the folder ``out`` as one worker, then pool its seeds: the folder
    opened (`open_sweep_dir`), then cell after cell claimed and run (`_run_cells`) until none is free, and when
    every cell has finished, summary.json written (`_finish`). Several workers (processes started the same way, on
    one machine or many sharing the folder) divide the cells among them. Returns the summary where this worker
    saw the sweep finished, else None (cells still trained by other workers, or the other processes of an
    `accelerate launch`). ``pretrained_from``: a run whose finished pretraining every new cell starts from
    (`study.reuse_pretraining`; a grid of fine-tuning or evaluation choices), each cell checked before the sweep
    folder is made. ``console``: where each cell's progress line goes."""
    from bidirect.study import make_accelerator

    check_cells_reuse(sweep, pretrained_from, out)  # a refusal changes nothing
    accelerator = make_accelerator(sweep.cells[0].config, out)
    # The main process writes the folder and claims cells; the others read the same cells from what it wrote.
    opened = open_sweep_dir(out, sweep, source, force=force, console=console) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if opened is None:
        opened = open_sweep_dir(out, sweep, source, write=False)
    try:
        if opened.opened is not None:
            opened.opened.lock.release()  # taken again for each claim and for the summary: other workers join
        _run_cells(opened, out, accelerator, console, pretrained_from)
    finally:
        if opened.opened is not None:
            opened.opened.close()  # after --force, no cell started: the old folder comes back
    if not accelerator.is_main_process:
        return None
    return _finish(opened, out, console)


def _run_cells(sweep: Sweep, out: Path, accelerator, console, pretrained_from: Path | None) -> None:
    """Claim the first unfinished cell no other worker holds (its run folder's lock, taken under the sweep
    folder's, so two workers never take one cell), run it, and go on until no cell is free. Cells of an earlier
    invocation that this sweep file no longer lists are kept, not run."""
    from bidirect.study import run_in_folder

    cells = [c for c in sweep.cells if c.config is not None]
    # After --force the old sweep folder waits aside until a cell passes its checks (study.start_study).
    replaced = sweep.opened if sweep.opened is not None and sweep.opened.aside is not None else None
    told: set[str] = set()  # cells whose state this worker printed
    while True:
        i, opened = _claim(cells, out, console, told) if accelerator.is_main_process else (None, None)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            i = broadcast_object_list([i])[0]
        if i is None:
            return
        cell = cells[i]
        run_dir = out / cell.name
        if console is not None and accelerator.is_main_process:
            console.print(f"[bold]sweep {i + 1}/{len(cells)} {cell.name}[/bold]")
        try:  # run_in_folder waits for every process before it trains
            run_in_folder(cell.config, run_dir, accelerator, replaced, pretrained_from)
        finally:
            if opened is not None:
                opened.close()
        replaced = None


def _claim(cells: list[SweepCell], out: Path, console, told: set[str]) -> tuple[int | None, ownership.Opened | None]:
    """The index of the cell this worker takes next and its opened run folder (locked), or (None, None)."""
    lock = _take(out, console)
    try:
        for i, cell in enumerate(cells):
            run_dir = out / cell.name
            if cell_finished(run_dir, cell.config):
                if console is not None and cell.name not in told:
                    console.print(f"[dim]sweep {i + 1}/{len(cells)} {cell.name}: finished, skipped[/dim]")
                told.add(cell.name)
                continue
            try:
                opened = open_run_dir(run_dir, cell.config, resume=True)
            except ownership.FolderInUse:
                if console is not None and cell.name + " held" not in told:
                    who = ownership.holder(run_dir) or "another worker"
                    console.print(f"[dim]sweep {i + 1}/{len(cells)} {cell.name}: trained by {escape(who)}[/dim]")
                told.add(cell.name + " held")
                continue
            if cell_finished(run_dir, cell.config):  # its worker finished it between the check above and the lock
                opened.close()
                continue
            return i, opened
        return None, None
    finally:
        lock.release()


def _take(out: Path, console) -> ownership.Lock:
    """The sweep folder's lock, waited for (another worker's claim holds it a moment; an older bidirect's sweep holds
    it to its end), saying so when it has to wait."""
    try:
        return ownership.Lock(out).acquire()
    except ownership.FolderInUse as err:
        if console is not None:
            console.print(f"[dim]waiting: {escape(str(err))}[/dim]")
        return ownership.Lock(out).acquire(wait=True)


def _finish(sweep: Sweep, out: Path, console) -> dict[str, Any] | None:
    """Once every cell the sweep file lists has finished: the summary, written unless summary.json already holds
    it (the worker that finishes the last cell writes it; a later worker or invocation finds it written). Before
    that, None and a line naming the cells other workers still hold."""
    lock = _take(out, console)
    try:
        states = cell_states(out, [c.name for c in sweep.cells if c.config is not None])
        waiting = [name for name, state in states.items() if state != "finished"]
        if waiting:
            if console is not None:
                console.print(f"sweep: {len(waiting)} cell(s) not finished ({', '.join(waiting[:4])}"
                              f"{', ...' if len(waiting) > 4 else ''}): the worker that finishes the last one writes "
                              f"{SUMMARY_FILE}; `bidirect sweep` again resumes a cell no worker holds")
            return None
        summary = aggregate(out)
        raw = rundir.read_regular(out / SUMMARY_FILE)
        try:
            written = json.loads(raw) if raw is not None else None
        except ValueError:  # not JSON: write_summary says whose file it is
            written = None
        if written != json.loads(rundir.json_text(summary)):
            write_summary(out, summary)
        return summary
    finally:
        lock.release()


def cell_states(sweep_dir: Path, names: list[str] | None = None) -> dict[str, str]:
    """Each cell's state in a sweep folder (``names``, or every cell its sweep.json lists): ``finished`` (its
    results.json, no worker on it), ``claimed by ...`` (a worker holds its lock) or ``free``."""
    if names is None:
        names = [c["name"] for c in read_manifest(sweep_dir / MANIFEST_FILE, "put back a good copy")["cells"]]
    states = {}
    for name in names:
        run_dir = sweep_dir / name
        who = ownership.holder(run_dir) if run_dir.is_dir() and not run_dir.is_symlink() else None
        if who is not None:
            states[name] = f"claimed by {who}"
        elif RunFolder(run_dir).results.is_file():
            states[name] = "finished"
        else:
            states[name] = "free"
    return states


# --------------------------------------------------------------------------- the summary


def read_cells(sweep_dir: Path) -> tuple[dict[str, list], list[SweepCell]]:
    """(axes, the finished cells with their values and results) of a sweep folder. Without sweep.json the axes
    are the config fields whose values differ between the run folders."""
    if not sweep_dir.is_dir():
        raise RunDirError(f"{sweep_dir}: no such folder")
    manifest = sweep_dir / MANIFEST_FILE
    if manifest.is_file():
        meta = read_manifest(manifest, "put back a good copy, or delete it: the run folders' own configs then say "
                             "what was swept")
        axes = meta["axes"]
        found = [SweepCell(c["name"], c["values"], run=read_results(sweep_dir / c["name"]))
                 for c in meta["cells"] if RunFolder(sweep_dir / c["name"]).results.is_file()]
    else:
        runs = {p.parent.name: read_results(p.parent)
                for p in sorted(sweep_dir.glob(f"*/{RESULTS_FILE}"))}
        flat = {name: {k: json.dumps(v, sort_keys=True) for k, v in dotted(r.config or {}).items()}
                for name, r in runs.items()}
        keys = sorted({k for f in flat.values() for k in f})
        varied = [k for k in keys if len({f.get(k) for f in flat.values()}) > 1]
        axes = {k: sorted({f.get(k) for f in flat.values()}, key=str) for k in varied}
        axes = {k: [json.loads(v) for v in vs] for k, vs in axes.items()}
        found = [SweepCell(name, {k: json.loads(flat[name][k]) for k in varied}, run=r) for name, r in runs.items()]
    if not found:
        raise RunDirError(f"{sweep_dir}: no finished cell yet (no */results.json); run the sweep first")
    return axes, found


def aggregate(sweep_dir: Path) -> dict[str, Any]:
    """The seeds of a sweep folder pooled (`analysis.seeds.pool`): what summary.json holds."""
    axes, cells = read_cells(sweep_dir)
    group_keys = [k for k in axes if k != SEED]
    rows = pool(((c.name, c.values, c.run) for c in cells), group_keys)
    return {"sweep_dir": str(sweep_dir), "axes": axes, "group_by": group_keys, "pooled": SEED, "interval": INTERVAL,
            "rows": rows}


def aggregate_seeds(sweep_dirs: list[Path]) -> dict[str, Any]:
    """Seeds pooled across sweep folders of one grid run once per seed (``objectives`` and ``objectives_seed1``),
    as `aggregate` pools the seeds inside one folder. Cells are matched by their swept values; the configs of
    matched cells must be equal but for ``seed`` and ``name``, and each seed may count once in a row, or the pool
    would mix studies or count a run twice. Nothing is written: `bidirect summary --pool-seeds` prints it."""
    if len(sweep_dirs) < 2:
        raise ConfigError("--pool-seeds: give two or more sweep folders of one grid, each run on its own seed")
    read = [(d, *read_cells(d)) for d in sweep_dirs]
    group_keys = [k for k in read[0][1] if k != SEED]
    for d, axes, _ in read[1:]:
        if sorted(k for k in axes if k != SEED) != sorted(group_keys):
            raise ConfigError(f"--pool-seeds: {d} sweeps {sorted(k for k in axes if k != SEED)}, {read[0][0]} "
                              f"sweeps {sorted(group_keys)}: not the same grid")
    cells = [(f"{d}/{c.name}", c.values, c.run) for d, _, found in read for c in found]
    studies: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, values, run in cells:
        key = json.dumps({k: values.get(k) for k in group_keys}, sort_keys=True)
        study = {k: v for k, v in dotted(run.config or {}).items() if k not in (SEED, "name")}
        first = studies.setdefault(key, (name, study))
        # a field one results.json predates is not compared (its default held then), as for a run's own config
        differ = sorted(k for k in first[1].keys() & study.keys() if first[1][k] != study[k])
        if differ:
            raise ConfigError(f"--pool-seeds: {name} and {first[0]} differ in {', '.join(differ[:5])}, not only in "
                              "the seed; pool only runs of one study")
    rows = pool(cells, group_keys)
    for row in rows:
        twice = sorted({s for s in row["seeds"] if row["seeds"].count(s) > 1})
        if twice:
            raise ConfigError(f"--pool-seeds: seed {twice[0]} twice in {', '.join(row['cells'])}; pool each seed once")
    return {"sweep_dir": " + ".join(map(str, sweep_dirs)), "sweep_dirs": [str(d) for d in sweep_dirs],
            "axes": {k: read[0][1][k] for k in group_keys}, "group_by": group_keys, "pooled": SEED,
            "interval": INTERVAL, "rows": rows}


def write_summary(sweep_dir: Path, summary: dict[str, Any]) -> Path:
    """Write the sweep's summary.json; one that is not a summary bidirect wrote (a user's file of that name)
    is refused, not overwritten. The caller holds the sweep's lock (`ownership.writing`)."""
    path = sweep_dir / SUMMARY_FILE
    check_ours(path, is_summary, "a summary")
    write_json_atomic(path, summary)
    return path


def summarize(sweep_dir: Path) -> dict[str, Any]:
    """Pool a sweep folder's seeds and write its summary.json, under the folder's lock (`bidirect summary`)."""
    with ownership.writing(sweep_dir, "sweep"):
        summary = aggregate(sweep_dir)
        write_summary(sweep_dir, summary)
    return summary
