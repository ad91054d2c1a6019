"""The GPU ladder: the GPU jobs in the order `scripts/device_check.sh` runs them, one rung per GPU window,
and which rung is next.

    python scripts/ladder.py [LADDER] [--root DIR]          every rung and how far it is
    python scripts/ladder.py [LADDER] [--root DIR] --next   the next unfinished rung, for device_check.sh

(LADDER: configs/gpu_ladder.yaml by default.)

A ladder file is a list of rungs, each a study run or a sweep into a folder under runs/::

    rungs:
      - name: gpu_contrast
        run: configs/gpu_contrast.yaml        # or sweep: a sweep file
        out: runs/gpu_contrast                # the folder it fills, committed when it comes back
        why: one line

Config paths are relative to the repository, output folders to ``--root`` (the repository by default; the
CPU dry run puts them in its own folder). A rung is finished when its folder holds a finished run (results.json
with every cell of its config) or a finished sweep (every cell of the sweep file finished), made with the config
the ladder names. The next rung is the first unfinished one; its command continues what its folder holds:
``bidirect run ... --resume`` once the folder exists (cells in results.json are kept, a cell in flight resumes
from its checkpoints), ``bidirect sweep`` (finished cells are skipped). ``--next`` prints that rung as one line of
tab-separated fields, its name, its folder relative to the root, then the words after ``python -m bidirect``;
nothing when every rung is finished.

Plain Python beside the package: it reads configs and results.json files, and imports no torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the package beside it

from bidirect import config as config_lib  # noqa: E402
from bidirect import sweep as sweep_lib  # noqa: E402
from bidirect.config import ConfigError, StudyConfig  # noqa: E402
from bidirect.rundir import CONFIG_FILE, RESULTS_FILE  # noqa: E402

LADDER = ROOT / "configs" / "gpu_ladder.yaml"
FIELDS = ("name", "run", "sweep", "out", "why")
Kind = Literal["run", "sweep"]


class LadderError(ValueError):
    """The ladder file or a rung's folder is not as it must be; the message names the rung and the field."""


@dataclass(frozen=True)
class Rung:
    name: str
    kind: Kind
    config: Path  # relative to the repository
    out: PurePosixPath  # relative to the root: runs/NAME
    why: str
    cells: tuple[tuple[str, StudyConfig], ...]  # (folder inside out, or "" for a run; its study)


# --------------------------------------------------------------------------- the ladder file


def _field(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise LadderError(f"{where}: field '{key}': expected a non-empty string, got {value!r}")
    return value.strip()


def _out_folder(value: str, where: str) -> PurePosixPath:
    """A folder under runs/, spelled relative and plainly: it is packed and committed by that name."""
    out = PurePosixPath(value)
    if out.is_absolute() or ".." in out.parts or len(out.parts) < 2 or out.parts[0] != "runs" \
            or not all(re.fullmatch(r"[A-Za-z0-9_.+=,-]+", p) for p in out.parts) or str(out) != value.rstrip("/"):
        raise LadderError(f"{where}: field 'out': {value!r} is not a folder under runs/ (runs/NAME, letters, digits "
                          "and . _ + = , - only)")
    return out


def _cells(kind: Kind, config: Path, where: str) -> tuple[tuple[str, StudyConfig], ...]:
    """The studies a rung runs, each loaded and validated by the package's own loaders."""
    path = ROOT / config
    try:
        raw = config_lib.read_yaml(path)
        is_sweep = isinstance(raw, dict) and "sweep" in raw
        if is_sweep != (kind == "sweep"):
            what = "a sweep file" if is_sweep else "a study, not a sweep file"
            raise LadderError(f"{where}: field '{kind}': {config} is {what}; give it as "
                              f"'{'sweep' if is_sweep else 'run'}:'")
        if kind == "run":
            return (("", config_lib.load(path)),)
        return tuple((cell.name, cell.config) for cell in sweep_lib.load(path).cells)
    except ConfigError as err:
        raise LadderError(f"{where}: field '{kind}': {err}") from None


def load(path: Path = LADDER) -> list[Rung]:
    """Every rung of a ladder file, each config loaded: a bad entry is one `LadderError` naming the rung and field."""
    try:
        raw = config_lib.read_yaml(path, "ladder file")
    except ConfigError as err:
        raise LadderError(str(err)) from None
    if not isinstance(raw, dict) or set(raw) != {"rungs"} or not isinstance(raw["rungs"], list) or not raw["rungs"]:
        raise LadderError(f"{path}: expected one top-level key, rungs: a non-empty list of rungs")
    rungs: list[Rung] = []
    for i, entry in enumerate(raw["rungs"], 1):
        where = f"{path}: rung {i}"
        if not isinstance(entry, dict):
            raise LadderError(f"{where}: expected a mapping of {', '.join(FIELDS)}, got {entry!r}")
        name = _field(entry, "name", where)
        where = f"{path}: rung {i} ({name})"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise LadderError(f"{where}: field 'name': letters, digits and . _ - only")
        unknown = [k for k in entry if k not in FIELDS]
        if unknown:
            raise LadderError(f"{where}: field '{unknown[0]}': not a field of a rung ({', '.join(FIELDS)})")
        kinds = [k for k in ("run", "sweep") if k in entry]
        if len(kinds) != 1:
            raise LadderError(f"{where}: field 'run' or 'sweep': give exactly one (a study to run or a sweep file)")
        kind: Kind = kinds[0]  # type: ignore[assignment]
        config = Path(_field(entry, kind, where))
        if config.is_absolute() or ".." in config.parts:
            raise LadderError(f"{where}: field '{kind}': {config} must be a path inside the repository (configs/...)")
        out = _out_folder(_field(entry, "out", where), where)
        why = _field(entry, "why", where)
        for other in rungs:
            if other.name == name:
                raise LadderError(f"{where}: field 'name': {name} is already rung {rungs.index(other) + 1}'s")
            if other.out == out or out in other.out.parents or other.out in out.parents:
                raise LadderError(f"{where}: field 'out': {out} is rung {other.name}'s folder or overlaps it")
        rungs.append(Rung(name, kind, config, out, why, _cells(kind, config, where)))
    return rungs


# --------------------------------------------------------------------------- how far a rung is


def _check_config(folder: Path, cfg: StudyConfig, rung: Rung) -> None:
    """A folder made with another config is an error, not an unfinished cell: resuming it would be refused, and
    its results are not the rung's."""
    saved = folder / CONFIG_FILE
    if not saved.is_file():
        return
    try:
        same = config_lib.load(saved, saved=True).to_dict() == cfg.to_dict()
    except ConfigError:
        same = False
    if not same:
        raise LadderError(f"rung {rung.name}: {saved} is not the study {rung.config} describes today (edited since it "
                          "ran?); restore the config, or move that folder away to run the rung again")


def _results(folder: Path) -> dict[str, Any]:
    """results.json's cells ({augmentation: {backbone: levels}}), empty when there is none or it is unreadable
    (the rung's command then writes it again)."""
    try:
        results = json.loads((folder / RESULTS_FILE).read_text()).get("results", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return results if isinstance(results, dict) else {}


def progress(rung: Rung, root: Path) -> tuple[int, int]:
    """(finished cells, cells). A run's cells are its (augmentation, backbone) pairs, each finished when it is in
    results.json; a sweep's are its run folders, each finished when all its pairs are."""
    folder = root / rung.out
    done = total = 0
    for name, cfg in rung.cells:
        cell = folder / name if name else folder
        _check_config(cell, cfg, rung)
        results = _results(cell)
        pairs = [b.name in results.get(a.name, {}) for a in cfg.augmentations() for b in cfg.backbones]
        if rung.kind == "run":
            done, total = sum(pairs), len(pairs)
        else:
            done, total = done + all(pairs), total + 1
    return done, total


def finished(rung: Rung, root: Path) -> bool:
    done, total = progress(rung, root)
    return done == total


def command(rung: Rung, root: Path) -> list[str]:
    """The words after ``python -m bidirect`` that run or continue ``rung``."""
    folder = root / rung.out
    words = [rung.kind, str(rung.config), "--out", str(folder)]
    if rung.kind == "run" and folder.is_dir() and any(folder.iterdir()):
        words.append("--resume")  # a new folder needs none; a started one refuses to run without it
    return words


def next_rung(rungs: list[Rung], root: Path) -> Rung | None:
    return next((r for r in rungs if not finished(r, root)), None)


def describe(rungs: list[Rung], root: Path) -> str:
    lines = []
    for i, rung in enumerate(rungs, 1):
        done, total = progress(rung, root)
        state = "finished" if done == total else "not started" if not (root / rung.out).is_dir() else "unfinished"
        lines.append(f"{i}. {rung.name}: {rung.kind} {rung.config} -> {rung.out}: {state}, {done}/{total} cells"
                     f"\n   {rung.why}")
    upcoming = next_rung(rungs, root)
    lines.append(f"next: {upcoming.name} (python -m bidirect {' '.join(command(upcoming, root))})"
                 if upcoming else "next: none, every rung is finished")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ladder", nargs="?", type=Path, default=LADDER, help="ladder file (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the rungs' runs/ folders are (default: the "
                        "repository)")
    parser.add_argument("--next", action="store_true", help="print the next unfinished rung as NAME<TAB>OUT<TAB>"
                        "words of its bidirect command, or nothing when every rung is finished")
    args = parser.parse_args(argv)
    try:
        rungs = load(args.ladder)
        if not args.next:
            print(describe(rungs, args.root))
            return 0
        rung = next_rung(rungs, args.root)
    except LadderError as err:
        print(f"ladder: {err}", file=sys.stderr)
        return 2
    if rung is not None:
        print("\t".join([rung.name, str(rung.out), *command(rung, args.root)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
