"""The folders bidirect writes: their layout, reading and writing what is in them, what marks them as
bidirect's own, what ``--force`` may replace, and the lock held while a process writes to one.

Every path inside a run or sweep folder is spelled here (`RunFolder`, the ``*_FILE`` names); the
other modules ask for them. The layout, drawn as a tree, is in docs/design.md.

bidirect deletes or overwrites only what it can prove it wrote (issue 22). Every run folder and sweep
folder it creates holds a marker, ``.bidirect``: a small JSON of what it is, a regular file (a link
there is neither trusted nor written through). A folder of a version before the marker is recognised
by its content, not by file names: a run's results.json records the config in its config.yaml, a
sweep's sweep.json is a manifest of the axes in its sweep.yaml (`legacy_why_not`). Such a folder is
marked by a resume (a file added, nothing deleted); ``--force`` replaces only a marked folder whose
every entry is one of its layout's (`RUN_ENTRIES`, `SWEEP_ENTRIES`, a sweep's cells: `foreign_entries`),
and never ``/``, the home folder, the current folder or one of its ancestors, whatever they hold: a
wrong ``--out`` must cost an error message, not someone's files. A replaced folder is moved aside,
not deleted, until the new run is known to start (`replace` and `settle`).

A process that writes to a folder holds a lock on its marker (`Lock`, `writing`); a second process is
refused with the holder's pid and command line. The lock ends with its process, so a run killed
with SIGKILL leaves none behind. Under ``accelerate launch`` only the main process locks: its
peers write to the folder it holds.

Light on purpose (no torch at import): the CLI's error path imports it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bidirect import config as config_lib
from bidirect.config import StudyConfig
from bidirect.results import Run, run_or_none, shape_error

MARKER = ".bidirect"
Kind = Literal["run", "sweep"]
# A run folder
CONFIG_FILE = "config.yaml"  # the study, as run (a resume must match it)
RESULTS_FILE = "results.json"  # every level of every cell, the baselines, the training summaries
DATA_DIR, TOKENIZER_DIR, MODELS_DIR = "data", "tokenizer", "models"
TOKENIZER_SHA_FILE = "tokenizer.sha256"  # of tokenizer/tokenizer.json, written with it: a swapped one is caught
# In data/ and in each phase's model/: the sha256 of every other file there, written with them (`sha256sum -c`
# reads it) and checked before they are used (bidirect.integrity): a damaged arrow file segfaulted eval
FILES_SHA_FILE = "files.sha256"
PROBE_FILE, CAPACITY_FILE, REPORT_FILE = "probe.json", "capacity.json", "report.md"  # the analyses' outputs
REPORT_DIR = "report"  # REPORT_FILE's figures: a report's figures go to the folder named by its file's stem
TRACKERS_DIR = "trackers"  # local experiment trackers' files (tracking.log_with)
# In a report's figure folder: the report and the figures bidirect wrote there, with their hashes, so that
# a later report replaces only those (a user's figure or edited report is never overwritten).
FIGURES_MANIFEST = ".bidirect-report.json"
# A phase folder (models/AUGMENTATION/BACKBONE/PHASE), which the trainer fills
MODEL_DIR, LOG_FILE, DONE_FILE, CHECKPOINTS_DIR = "model", "log.jsonl", "phase.json", "checkpoints"
# In a phase's model/: its model card, rewritten when the model is evaluated, so outside files.sha256 (bidirect.card)
MODEL_CARD_FILE = "README.md"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint (checkpoints/step_N): it marks it complete
# A sweep folder: one run folder per cell beside these
SWEEP_FILE, MANIFEST_FILE, SUMMARY_FILE = "sweep.yaml", "sweep.json", "summary.json"
# What bidirect writes at the top of a run folder, and of a sweep folder beside its cells (the folders
# of the cells its manifest lists): --force replaces a folder only when it holds nothing else.
_FOLDERS = {DATA_DIR, TOKENIZER_DIR, MODELS_DIR, REPORT_DIR, TRACKERS_DIR}
RUN_ENTRIES = frozenset({MARKER, CONFIG_FILE, RESULTS_FILE, DATA_DIR, TOKENIZER_DIR, TOKENIZER_SHA_FILE, MODELS_DIR,
                         PROBE_FILE, CAPACITY_FILE, REPORT_FILE, REPORT_DIR, TRACKERS_DIR})
SWEEP_ENTRIES = frozenset({MARKER, SWEEP_FILE, MANIFEST_FILE, SUMMARY_FILE, REPORT_FILE, REPORT_DIR, TRACKERS_DIR})
KINDS: tuple[Kind, ...] = ("run", "sweep")


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says why and what to do."""


class FolderInUse(RunDirError):
    """Another process holds the folder's lock (a sweep's worker skips such a cell: another worker trains it)."""


class AlreadyMade(RunDirError):
    """`create_folder` found the folder made by another process while it waited its turn."""


# --------------------------------------------------------------------------- what proves a folder bidirect's


def read_regular(path: Path, limit: int = 1 << 26) -> bytes | None:
    """The bytes of ``path`` when it is a regular file, else None: a symbolic link is not followed and a
    named pipe is not waited on, so that nothing a user put there under a bidirect name is trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which raises on a folder
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def _read_json_regular(path: Path) -> Any:
    """A regular file's JSON, or None (missing, a link, not JSON)."""
    raw = read_regular(path)
    try:
        return None if raw is None else json.loads(raw)
    except ValueError:
        return None


def check_marker(folder: Path) -> None:
    """Refuse a marker that is not a regular file: a link to a user's file is neither trusted (it would
    make their folder look bidirect's) nor written through."""
    marker = folder / MARKER
    if marker.is_symlink():
        raise RunDirError(f"{marker}: a symbolic link, not bidirect's marker; bidirect neither trusts nor writes "
                          "through it. Remove the link (what it points to is not touched) if the folder is "
                          "bidirect's, or give another folder.")
    if marker.exists() and not marker.is_file():
        raise RunDirError(f"{marker}: not a regular file, so not bidirect's marker; bidirect will not use this "
                          "folder. Give another folder.")


def write_marker(folder: Path, kind: Kind, config: dict[str, Any] | None = None) -> None:
    """``config``: a new run's study (`StudyConfig.to_dict`), recorded as it starts: config.yaml is held to it
    until results.json records it too (`started_config`)."""
    check_marker(folder)
    meta: dict[str, Any] = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if config is not None:
        meta["config"] = config
    write_text_atomic(folder / MARKER, json.dumps(meta) + "\n")


def marker_kind(folder: Path) -> Kind | None:
    """``run`` or ``sweep`` for a folder whose marker (a regular file) says so, else None."""
    meta = _read_json_regular(folder / MARKER)
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return kind if kind in KINDS else None


def started_config(folder: Path) -> dict[str, Any] | None:
    """The study a run folder's marker recorded when the run started, or None (a marker of a version before it,
    or of a run marked later: `--resume` of an old run, `eval`)."""
    meta = _read_json_regular(folder / MARKER)
    config = meta.get("config") if isinstance(meta, dict) else None
    return config if isinstance(config, dict) else None


def _same_config(saved: Path, recorded: Any) -> bool:
    """``saved`` (a config.yaml) and ``recorded`` (results.json's ``config``) are one study, both read by
    today's loader (a config written before a key moved is read as `config.load` reads it)."""
    try:
        mine = config_lib.load(saved, saved=True).to_dict()
        theirs = config_lib.from_dict(config_lib.migrate_saved(recorded)).to_dict()
    except (config_lib.ConfigError, RecursionError, TypeError, ValueError):
        return False
    return mine == theirs


def manifest_why_not(meta: Any) -> str | None:
    """Why ``meta`` (a parsed sweep.json) is not a sweep manifest bidirect wrote, or None."""
    if not isinstance(meta, dict) or not isinstance(meta.get("axes"), dict) or not isinstance(meta.get("cells"), list):
        return "it has no axes mapping and cells list"
    for cell in meta["cells"]:
        name = cell.get("name") if isinstance(cell, dict) else None
        # a cell is a folder inside the sweep: one plain name, as `sweep.cell_name` makes it
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or name.startswith(".") \
                or not isinstance(cell.get("values"), dict):
            return f"a cell is not a name and values: {str(cell)[:60]}"
    return None


def legacy_why_not(folder: Path, kind: Kind) -> str | None:
    """None when ``folder`` is a ``kind`` folder of a version before the marker, proved by content; else
    what is missing. A run: results.json is a bidirect results file recording the config in config.yaml.
    A sweep: sweep.json is a manifest of the axes that sweep.yaml sweeps. Two file names prove nothing."""
    if kind == "run":
        if read_regular(folder / CONFIG_FILE, 0) is None or read_regular(folder / RESULTS_FILE, 0) is None:
            return f"no {CONFIG_FILE} and {RESULTS_FILE} as regular files"
        results = run_or_none(_read_json_regular(folder / RESULTS_FILE))
        if results is None or not isinstance(results.config, dict):
            return f"its {RESULTS_FILE} is not a bidirect results file (results and config)"
        if not _same_config(folder / CONFIG_FILE, results.config):
            return f"its {RESULTS_FILE} does not record the config in {CONFIG_FILE}"
        return None
    if read_regular(folder / SWEEP_FILE, 0) is None or read_regular(folder / MANIFEST_FILE, 0) is None:
        return f"no {SWEEP_FILE} and {MANIFEST_FILE} as regular files"
    meta = _read_json_regular(folder / MANIFEST_FILE)
    why = manifest_why_not(meta)
    if why is not None:
        return f"its {MANIFEST_FILE} is not a sweep manifest ({why})"
    try:
        study = config_lib.read_yaml(folder / SWEEP_FILE, "sweep file")
    except config_lib.ConfigError:
        study = None
    axes = study.get("sweep") if isinstance(study, dict) else None
    if not isinstance(axes, dict) or list(axes) != list(meta["axes"]):
        return f"its {MANIFEST_FILE} does not list the axes of {SWEEP_FILE}"
    return None


def folder_kind(folder: Path) -> Kind | None:
    """``run`` or ``sweep`` for a folder bidirect wrote (its marker, or the content of an older one), else None."""
    kind = marker_kind(folder)
    if kind is not None or (folder / MARKER).is_symlink():
        return kind
    for kind in KINDS:
        if legacy_why_not(folder, kind) is None:
            return kind
    return None


def _entry_ok(entry: os.DirEntry, allowed: frozenset[str] | set[str], folders: set[str]) -> bool:
    """An entry bidirect writes: a name of its layout (a folder where the layout has a folder, a regular
    file elsewhere; never a link), or the temporary name of one (``.results.json.tmp``)."""
    name = entry.name
    if name.startswith(".") and name.endswith(".tmp") and name[1:-4] in allowed:
        name = name[1:-4]
    if name not in allowed or entry.is_symlink():
        return False
    return entry.is_dir() if name in folders else entry.is_file()


def foreign_entries(folder: Path, kind: Kind) -> list[str]:
    """What in ``folder`` (a ``kind`` folder) bidirect did not write, as paths relative to it: entries
    outside its layout, links, a report.md its report manifest does not account for, a summary.json that
    is not a summary; in a sweep, the same inside each cell its manifest lists. Inside a folder of the
    layout (models/, data/) everything is bidirect's: it created the folder."""
    if kind == "sweep":
        meta = _read_json_regular(folder / MANIFEST_FILE)
        cells = {c["name"] for c in meta["cells"]} if manifest_why_not(meta) is None else set()
        allowed, folders = SWEEP_ENTRIES | cells, _FOLDERS | cells
    else:
        cells, allowed, folders = set(), RUN_ENTRIES, _FOLDERS
    foreign = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not _entry_ok(entry, allowed, folders):
                foreign.append(entry.name)
            elif entry.name in cells:
                foreign += [f"{entry.name}/{name}" for name in foreign_entries(Path(entry.path), "run")]
    if REPORT_FILE not in foreign and (folder / REPORT_FILE).is_file():
        why = report_why_not(folder / REPORT_FILE)
        if why is not None:
            foreign += [REPORT_FILE] + [f"{REPORT_DIR}/{n}" for n in why[1]]
    if kind == "sweep" and SUMMARY_FILE not in foreign and (folder / SUMMARY_FILE).exists() \
            and not is_summary(folder / SUMMARY_FILE):
        foreign.append(SUMMARY_FILE)
    if kind == "run":  # a user's file under an analysis's name is theirs, not part of the run
        foreign += [n for n in (PROBE_FILE, CAPACITY_FILE)
                    if n not in foreign and (folder / n).exists() and not is_analysis(folder / n)]
    return foreign


def is_analysis(path: Path) -> bool:
    """``path`` is a probe.json or capacity.json that an analysis wrote (its keys; a damaged one of its own is
    still one, and is replaced), not a user's file of that name."""
    out = _read_json_regular(path)
    return isinstance(out, dict) and {"phase", "results"} <= set(out)


def check_ours(path: Path, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse to overwrite ``path`` when something is there that ``ours`` does not recognise as bidirect's
    (``what`` it should have been: "a summary"); nothing there is fine."""
    if (path.exists() or path.is_symlink()) and not ours(path):
        raise RunDirError(f"{path}: not {what} bidirect wrote; bidirect will not overwrite it. Move it away, then "
                          "run the same command again.")


def check_analysis_target(path: Path) -> None:
    """Before an analysis computes anything: refuse to overwrite a file at its output's name that it did not
    write (a user's notes saved as probe.json was replaced whole)."""
    check_ours(path, is_analysis, f"a {path.stem} file")


def is_summary(path: Path) -> bool:
    """``path`` is a summary.json that `sweep.write_summary` wrote (its keys), not a user's file of that name."""
    summary = _read_json_regular(path)
    return isinstance(summary, dict) and {"rows", "pooled", "group_by", "axes"} <= set(summary)


def forbidden(folder: Path) -> str | None:
    """Why ``folder`` may never be deleted (the root, the home folder, the current folder or an
    ancestor of either), or None."""
    path = folder.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == Path(path.anchor):
        return "it is the root of the file system"
    if path == home:
        return "it is your home folder"
    if path in home.parents:
        return "it holds your home folder"
    if path == cwd:
        return "it is the current folder"
    if path in cwd.parents:
        return "it holds the current folder"
    return None


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_replaceable(folder: Path, kind: Kind, option: str = "--out") -> None:
    """Raise unless ``--force`` may delete ``folder``: a marked bidirect folder of ``kind`` holding only
    what bidirect writes there, and none of the folders `forbidden` names."""
    why = "it is a symbolic link (give the folder it points to)" if folder.is_symlink() else forbidden(folder)
    if why is not None:
        raise RunDirError(f"{option} {folder}: --force will not delete it: {why}. Give a new folder as {option}.")
    check_marker(folder)
    found = marker_kind(folder)
    if found is None:
        legacy = {k: legacy_why_not(folder, k) for k in KINDS}
        old = next((k for k in KINDS if legacy[k] is None), None)
        if old == kind:
            config = folder / (CONFIG_FILE if kind == "run" else SWEEP_FILE)
            how = f"`bidirect run {config} --out {folder} --resume`" if kind == "run" else \
                f"`bidirect sweep {config} --out {folder}`"
            raise RunDirError(
                f"{option} {folder}: --force will not delete it: it is a {kind} folder of a bidirect version before "
                f"the {MARKER} marker, and --force replaces only marked folders. Mark it with {how} (adds the "
                "marker, deletes nothing), then --force; or delete it yourself.")
        if old is None:
            what = f"not a folder bidirect wrote (no {MARKER} marker; {legacy[kind]})"
        else:
            what = f"a bidirect {old} folder, not a {kind} folder"
        raise RunDirError(f"{option} {folder}: --force will not delete it: it is {what}. "
                          f"Give a new or empty folder as {option}, or delete it yourself.")
    if found != kind:
        raise RunDirError(f"{option} {folder}: --force will not delete it: it is a bidirect {found} folder, not a "
                          f"{kind} folder. Give a new or empty folder as {option}, or delete it yourself.")
    foreign = foreign_entries(folder, kind)
    if foreign:
        raise RunDirError(f"{option} {folder}: --force will not delete it: it holds {len(foreign)} "
                          f"entr{'y' if len(foreign) == 1 else 'ies'} bidirect did not write ({_few(foreign)}); "
                          f"move them out of it, or give another {option}")


def aside_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.replaced")


def replace(folder: Path, kind: Kind) -> Path:
    """``--force``: move ``folder`` aside (checked by `check_replaceable`) and return where; `settle`
    deletes it once the new run has passed its checks, or puts it back."""
    check_replaceable(folder, kind)
    check_unlocked(folder)
    if kind == "sweep":  # its workers hold their cells' locks, not the sweep's
        for cell in sorted(folder.iterdir()):
            if cell.is_dir() and not cell.is_symlink():
                check_unlocked(cell)
    aside = aside_path(folder)
    if aside.exists() or aside.is_symlink():
        raise RunDirError(f"--out {folder}: {aside} holds the folder an interrupted --force replaced; "
                          f"move it back to {folder} or delete it, then try again")
    folder.rename(aside)
    return aside


def settle(folder: Path, aside: Path | None, started: bool) -> None:
    """After a ``--force`` start: delete the old folder if the new run ``started``, else delete the new
    one and put the old one back, so that a config that fails its checks loses nothing."""
    if aside is None or not aside.exists():
        return
    if started:
        shutil.rmtree(aside)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        aside.rename(folder)


# --------------------------------------------------------------------------- files


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinity as None: json.dumps would write a bare NaN, which is no JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def temporary_path(path: Path) -> Path:
    """The name a file or folder of bidirect's is written under before it is renamed into place, ``.NAME.tmp``
    beside it (`_entry_ok` counts it as bidirect's)."""
    return path.with_name(f".{path.name}.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside ``path``, then rename it over ``path``: a reader never sees half a
    file, and a link at either name is replaced, never written through (the temporary file is created
    anew, O_EXCL | O_NOFOLLOW)."""
    tmp = temporary_path(path)
    if path.is_dir() and not path.is_symlink():  # a user's folder under a name of bidirect's: never replaced
        raise RunDirError(f"{path}: a folder, not a file bidirect wrote; bidirect will not replace it. Move it away, "
                          "then run the same command again.")
    if tmp.is_symlink() or tmp.is_file():  # a leftover of a killed write (or a link): only the name goes
        tmp.unlink()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a file that may not be replaced: no half file left, the target named
        tmp.unlink(missing_ok=True)
        if str(err.filename) == str(tmp):  # the temporary name is bidirect's business, the target the user's
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:  # Ctrl-C mid-write: no half file left behind either
        tmp.unlink(missing_ok=True)
        raise


_NUMBER = r"(?:-?[0-9][0-9.eE+-]*|null)"
_NUMBERS = re.compile(rf"\[\n\s*({_NUMBER}(?:,\n\s*{_NUMBER})*)\n\s*\]")  # a list of numbers, one a line
_ROWS = re.compile(r"\[\n\s*(\[[^\[\]\n]*\](?:,\n\s*\[[^\[\]\n]*\])*)\n\s*\]")  # a list of one-line lists


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON, always valid (NaN written null), with every list of numbers on one line and a
    list of such lists too: a results file keeps each person's hits (`evaluate`), and one number a line would
    make it tens of thousands of lines."""
    text = json.dumps(_finite(obj), indent=2, allow_nan=False)
    text = _NUMBERS.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return _ROWS.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",\n")) + "]", text)


def write_json_atomic(path: Path, obj: Any) -> None:
    """`write_text_atomic` of `json_text`."""
    write_text_atomic(path, json_text(obj))


def read_json(path: Path, what: str, advice: str) -> Any:
    """A JSON file bidirect wrote; damage is a `RunDirError` naming the file and ``advice``."""
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDirError(f"{path}: {what} is damaged ({type(err).__name__}: {str(err)[:120]}); {advice}") from None


# --------------------------------------------------------------------------- reports


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report_why_not(report: Path) -> tuple[str, list[str]] | None:
    """None when bidirect may replace the report ``report`` (a .md file) and its figure folder (the
    file's stem): each is absent, or listed in the folder's `FIGURES_MANIFEST` with the hash it had when
    written, or (a report written before the manifest) the Markdown starts with bidirect's heading and
    the folder holds only the PNG figures it links to. Else (why, the folder's entries it did not write)."""
    figures = report.with_suffix("")
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
        return f"{figures} is not a folder bidirect made", []
    entries = sorted(p.name for p in figures.iterdir()) if figures.is_dir() else []
    manifest = _read_json_regular(figures / FIGURES_MANIFEST)
    if isinstance(manifest, dict) and isinstance(manifest.get("figures"), dict):
        listed = manifest["figures"]
        foreign = [n for n in entries if n != FIGURES_MANIFEST and
                   (n not in listed or read_regular(figures / n) is None or file_sha(figures / n) != listed[n])]
        if foreign:
            return f"{figures}: holds files bidirect did not write ({_few(foreign)})", foreign
        if report.exists() or report.is_symlink():
            if read_regular(report) is None or manifest.get("report") != [report.name, file_sha(report)]:
                return "changed since bidirect wrote it (or it is not bidirect's)", []
        return None
    if not report.exists() and not report.is_symlink():
        foreign = entries
        return (f"{figures}: holds files bidirect did not write ({_few(foreign)})", foreign) if foreign else None
    text = (read_regular(report) or b"").decode(errors="replace")
    if not text.startswith(("# bidirect report: ", "# bidirect sweep report: ")):
        return "exists and bidirect did not write it", []
    linked = set(re.findall(rf"\]\({re.escape(figures.name)}/([^)/]+\.png)\)", text))
    foreign = [n for n in entries if n not in linked or not (figures / n).is_file() or (figures / n).is_symlink()]
    return (f"{figures}: holds files bidirect did not write ({_few(foreign)})", foreign) if foreign else None


def check_report_target(report: Path) -> None:
    """Raise unless a report may be written to ``report`` (`report_why_not`)."""
    why = report_why_not(report)
    if why is not None:
        raise RunDirError(f"--out {report}: {why[0]}; bidirect overwrites only a report and figures it wrote. "
                          "Move them away, or give another --out.")


def clear_report(report: Path, keep: Iterable[str] = ()) -> Path:
    """Remove the figures of the report ``report`` wrote before (checked by `check_report_target`: only
    its own) but those named in ``keep`` (figures this report cannot draw again: a committed run keeps no training
    logs), and return its figure folder, made."""
    figures = report.with_suffix("")
    check_report_target(report)
    figures.mkdir(parents=True, exist_ok=True)
    kept = {}
    for old in figures.iterdir():
        if old.name in keep and old.is_file() and not old.is_symlink():
            kept[old.name] = file_sha(old)
        else:
            old.unlink()
    # The manifest at once, then each figure as it is written (`save_figure`): a report stopped halfway (Ctrl-C
    # while drawing) leaves only what it listed, which the next report replaces; an empty manifest was no proof,
    # and its own figures were refused as a user's. The report it replaces was proved bidirect's above.
    write_json_atomic(figures / FIGURES_MANIFEST, {
        "report": [report.name, file_sha(report)] if read_regular(report, 0) is not None else None, "figures": kept})
    return figures


def save_figure(path: Path, save: Callable[[Path], None]) -> Path:
    """Write a report's figure ``path`` (into a folder `clear_report` made) by ``save`` to a temporary name,
    rename it into place and list it in the folder's manifest: a figure cut short is removed, a whole one listed."""
    tmp = temporary_path(path)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest = _read_json_regular(path.parent / FIGURES_MANIFEST)
    if isinstance(manifest, dict) and isinstance(manifest.get("figures"), dict):
        manifest["figures"][path.name] = file_sha(path)
        write_json_atomic(path.parent / FIGURES_MANIFEST, manifest)
    return path


def record_report(report: Path, figures: list[Path]) -> None:
    """Write ``report``'s manifest: the report and each figure with its hash, what the next report may replace."""
    folder = report.with_suffix("")
    write_json_atomic(folder / FIGURES_MANIFEST, {
        "report": [report.name, file_sha(report)],
        "figures": {p.name: file_sha(p) for p in figures if p.parent == folder}})


# --------------------------------------------------------------------------- lock


def _holder_pid(marker: Path) -> int | None:
    """The process that holds the flock on ``marker``, from /proc/locks (Linux); the kernel knows, no file has to."""
    try:
        st = marker.stat()
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if "FLOCK" not in parts or "->" in parts:  # "->": a waiter, not the holder
                continue
            i = parts.index("FLOCK")
            major, minor, inode = parts[i + 4].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                return int(parts[i + 3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _holder(marker: Path) -> str:
    """Who holds the flock on ``marker``, in words."""
    return _words(_holder_pid(marker))


def _words(pid: int | None) -> str:
    """A lock's holder in words: its process, host and command where /proc tells them."""
    if pid is not None:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return f"process {pid} on {socket.gethostname()} ({command.strip()[:120]})"
        except OSError:
            pass
    return "another process"


class Lock:
    """An exclusive lock on a folder while this process writes to it: a flock on its marker.

    The kernel drops a flock when its process ends, however it ends (SIGKILL included), so a lock
    never outlives its holder and nothing is written to take or release it: a command refused
    later leaves the folder byte for byte as it was.
    """

    # Markers (device, inode) this process holds, with their open file and count of holders: a second
    # Lock of a folder in the same process (a library caller opening it twice) shares the first's
    # flock, which a second flock of the same process would refuse.
    _held: dict[tuple[int, int], list] = {}

    def __init__(self, folder: Path):
        self.folder = folder
        self._key: tuple[int, int] | None = None

    def acquire(self, wait: bool = False) -> Lock:
        """Take the lock; held by another process: `FolderInUse` naming it, or with ``wait`` block until it is
        free (workers of a sweep hold its folder's lock for the moment a claim or the summary takes)."""
        marker = self.folder / MARKER
        check_marker(self.folder)
        # O_NOFOLLOW: a marker swapped for a link since it was checked locks nothing of a user's
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        f = os.fdopen(fd, "rb")  # held open until the last release: the lock lives with it
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino)
        if key in Lock._held:
            f.close()
            Lock._held[key][1] += 1
        else:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.close()
                raise FolderInUse(f"{self.folder}: in use by {_holder(marker)}; wait for it to finish "
                                  "(a lock ends with its process)") from None
            Lock._held[key] = [f, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        held = Lock._held[self._key]
        held[1] -= 1
        if not held[1]:
            held[0].close()  # closing drops the flock
            del Lock._held[self._key]
        self._key = None


def holder_pid(folder: Path) -> int | None:
    """The process holding ``folder``'s lock (Linux: /proc/locks), or None."""
    marker = folder / MARKER
    return _holder_pid(marker) if marker.is_file() and not marker.is_symlink() else None


def holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock (`_holder`'s words), or None where no process does. Read from /proc/locks where
    there is one, not by taking the lock a moment: a worker claiming the folder then would find it taken."""
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        return None
    if Path("/proc/locks").is_file():
        pid = _holder_pid(marker)
        return None if pid is None else _words(pid)
    try:
        check_unlocked(folder)
    except FolderInUse:
        return _holder(marker)
    return None


def check_unlocked(folder: Path) -> None:
    """Raise if another process holds ``folder``'s lock."""
    if (folder / MARKER).is_file() and not (folder / MARKER).is_symlink():
        Lock(folder).acquire().release()


@contextmanager
def writing(folder: Path, kind: Kind, mark: bool = False) -> Iterator[None]:
    """While a command writes into an existing ``kind`` folder (eval, probe, capacity, report, summary):
    the folder proved bidirect's, and its lock held. A folder of a version before the marker has no
    lock to take; ``mark`` (eval, which rewrites results.json as a resume does) marks it first, as a
    resume would. Without ``mark`` such a folder is written unlocked: a process of this version that
    writes one marks it first, so none holds it."""
    check_marker(folder)
    found = folder_kind(folder)
    if found != kind:
        what = f"a bidirect {found} folder" if found else \
            f"not a folder bidirect wrote (no {MARKER} marker; {legacy_why_not(folder, kind)})"
        raise RunDirError(f"{folder}: not a {kind} folder: it is {what}; bidirect will not write into it")
    if marker_kind(folder) is None:
        if not mark:
            yield
            return
        write_marker(folder, kind)
    lock = Lock(folder).acquire()
    try:
        yield
    finally:
        lock.release()


class Opened:
    """A run or sweep folder this process writes to: it holds the lock; after ``--force`` the old
    folder waits ``aside`` until the new run is known to start (`started`)."""

    def __init__(self, folder: Path, lock: Lock, aside: Path | None = None):
        self.folder, self.lock, self.aside = folder, lock, aside

    def started(self, ok: bool) -> None:
        """Delete the replaced folder (``ok``) or put it back in place of the new one."""
        settle(self.folder, self.aside, ok)
        self.aside = None

    def close(self) -> None:
        if self.aside is not None:  # stopped before the new run passed its checks: the old one comes back
            self.started(False)
        self.lock.release()


def environment_fault(err: OSError) -> bool:
    """A fault of the machine (disk full, quota, I/O error), not of what the user asked."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


def make_folder(folder: Path, named: Path | None = None) -> None:
    """Create a run or sweep folder (and its parents). A permission or path problem is a `RunDirError`
    naming the folder (``named``: the folder the user asked for, where this is its temporary); a full disk or an
    I/O error is the environment's and propagates as it is."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if environment_fault(err):
            raise
        raise RunDirError(f"--out {named or folder}: cannot create the folder ({err.strerror}: "
                          f"{named if err.filename == str(folder) and named else err.filename})") from None


def create_folder(folder: Path, kind: Kind, files: dict[str, str], config: dict[str, Any] | None = None) -> Lock:
    """Create ``folder`` (absent or empty) whole: its marker and ``files`` are written into `temporary_path`, which
    is locked and then renamed into place, so that a kill at any instant leaves either no folder (a leftover
    temporary, removed by the next creation) or a complete one that bidirect resumes. ``config``: a run's study,
    recorded in its marker (`write_marker`). Returns the held lock."""
    if not folder.parent.exists():
        make_folder(folder.parent, named=folder)
    if not folder.parent.is_dir():
        return _create_folder(folder, kind, files, config)  # its make_folder names what stands in the way
    with _creating_in(folder.parent):
        if folder.is_dir() and any(folder.iterdir()):
            raise AlreadyMade(f"{folder}: made by another process meanwhile")
        return _create_folder(folder, kind, files, config)


@contextmanager
def _creating_in(parent: Path) -> Iterator[None]:
    """Creations of folders in ``parent`` one at a time, across processes (workers started at the same instant make
    the same sweep folder): a flock on the parent folder itself, which writes nothing there."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


def _create_folder(folder: Path, kind: Kind, files: dict[str, str], config: dict[str, Any] | None) -> Lock:
    tmp = temporary_path(folder)
    if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
        raise RunDirError(f"{tmp}: not a folder bidirect was creating; move it away, then run the same command again")
    if tmp.is_dir():  # a creation killed before its rename, or another process creating the same folder now
        if (tmp / MARKER).is_file():
            Lock(tmp).acquire().release()  # refused, naming the process, while one still creates it
        ours = {MARKER, *files} | {f".{n}.tmp" for n in (MARKER, *files)}
        theirs = sorted(p.name for p in tmp.iterdir() if p.name not in ours or p.is_symlink())
        if theirs:
            raise RunDirError(f"{tmp}: holds {_few(theirs)}, which bidirect did not write; move it away, then run "
                              "the same command again")
        shutil.rmtree(tmp)
    make_folder(tmp, named=folder)
    lock = None
    try:
        write_marker(tmp, kind, config)
        lock = Lock(tmp).acquire()  # the flock is on the marker's inode, which the rename keeps
        for name, text in files.items():
            write_text_atomic(tmp / name, text)
        os.rename(tmp, folder)  # replaces an empty folder; refuses one that is not
        lock.folder = folder
        return lock
    except BaseException:
        if lock is not None:
            lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- a run folder's layout


@dataclass(frozen=True)
class RunFolder:
    """Where each thing of one run folder lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def tokenizer_sha(self) -> Path:
        return self.root / TOKENIZER_SHA_FILE

    def file(self, name: str) -> Path:
        """An analysis's output at the top of the folder (PROBE_FILE, CAPACITY_FILE, REPORT_FILE)."""
        return self.root / name

    def cell(self, augmentation: str, backbone: str) -> Path:
        return self.root / MODELS_DIR / augmentation / backbone

    def phase(self, augmentation: str, backbone: str, phase: str) -> Path:
        return self.cell(augmentation, backbone) / phase

    def model(self, augmentation: str, backbone: str, phase: str) -> Path:
        return self.phase(augmentation, backbone, phase) / MODEL_DIR

    def log(self, augmentation: str, backbone: str, phase: str) -> Path:
        return self.phase(augmentation, backbone, phase) / LOG_FILE


def open_run_dir(run_dir: Path, cfg: StudyConfig, resume: bool = False, force: bool = False,
                 command: str = "run") -> Opened:
    """Make ``run_dir`` ready for ``cfg``: new, resumed (same config) or, with ``force``, replaced
    (moved aside until the new run passes its checks). Locks it; the caller closes the result."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir}: is a file, not a folder")
    if resume and force:  # the CLI's options exclude each other; a library caller gets the same answer
        raise RunDirError(f"{run_dir}: resume=True and force=True contradict each other (resume continues the run "
                          "there, force replaces it); give one")
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    saved = RunFolder(run_dir).config
    aside = None
    if existing and force:
        aside = replace(run_dir, "run")
    elif existing and resume:
        check_marker(run_dir)
        found = marker_kind(run_dir)
        if found is None:  # a run of a version before the marker is adopted only on proof, not on its file names
            why = legacy_why_not(run_dir, "run")
            if why is not None:
                raise RunDirError(f"--resume {run_dir}: not a bidirect run folder (no {MARKER} marker, and {why}); "
                                  "bidirect will not write into it. Give another --out.")
            found = "run"
        if found != "run":
            raise RunDirError(f"--resume {run_dir}: a bidirect {found} folder, not a run folder; give a run folder")
        if not saved.is_file():
            raise RunDirError(f"--resume {run_dir}: no {CONFIG_FILE} there, so it is not a bidirect run folder")
        if config_lib.load(saved, saved=True).to_dict() != cfg.to_dict():
            raise RunDirError(
                f"--resume {run_dir}: the config differs from the one this run started with ({saved}); "
                "resume with that config or start a new run folder"
            )
        if not RunFolder(run_dir).results.is_file():  # a finished run's is held to its results.json (check_results)
            check_started(run_dir, cfg)  # an edited config.yaml matched the config given to resume it
        if marker_kind(run_dir) is None:  # proved by its results.json: marked, nothing deleted
            write_marker(run_dir, "run")
        return Opened(run_dir, Lock(run_dir).acquire())
    elif existing:
        finished = RunFolder(run_dir).results.is_file()
        again = "use --resume to continue it, " if command == "run" else ""
        raise RunDirError(
            f"--out {run_dir}: folder is not empty{' and holds a finished run' if finished else ''}; "
            f"{again}--force to replace it, or another --out"
        )
    try:
        lock = create_folder(run_dir, "run", {CONFIG_FILE: config_lib.dump_text(cfg)}, cfg.to_dict())
    except BaseException:
        settle(run_dir, aside, False)
        raise
    return Opened(run_dir, lock, aside)


def check_started(run_dir: Path, cfg: StudyConfig) -> None:
    """``run_dir``'s config.yaml (loaded as ``cfg``) is the study its marker recorded when the run started: an edited
    config.yaml of an unfinished run resumed from checkpoints made under the old one (steps 3000 -> 60 resumed at
    46/60). Markers without it (older versions) are not checked."""
    recorded = started_config(run_dir)
    key = None if recorded is None else config_lib.first_difference(config_lib.migrate_saved(recorded), cfg.to_dict())
    if key is not None:
        now, then = (config_lib.shown(config_lib.value_at(c, key), 30) for c in (cfg.to_dict(), recorded))
        raise RunDirError(
            f"{RunFolder(run_dir).config}: not the config this run started with ({key}: {now} in {CONFIG_FILE}, "
            f"{then} when it started, recorded in {run_dir / MARKER}); put back the {CONFIG_FILE} this run started "
            "with, or start a new run folder with the new config"
        )


def _check_is_folder(run_dir: Path) -> None:
    """A file or a missing path given where a run folder belongs, said as what it is."""
    if run_dir.exists() and not run_dir.is_dir():  # a user's notes.txt was "no such run folder"
        raise RunDirError(f"{run_dir}: a file, not a run folder; give the folder `bidirect run` wrote")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")


def _not_a_run(run_dir: Path, missing: str) -> RunDirError:
    """The error for a folder that is no run folder (``missing``: the file it lacks), naming a sweep as one."""
    if folder_kind(run_dir) == "sweep":
        meta = _read_json_regular(run_dir / MANIFEST_FILE)
        cells = [c["name"] for c in meta["cells"]] if manifest_why_not(meta) is None else []
        example = f" (e.g. {run_dir / cells[0]})" if cells else ""
        return RunDirError(f"{run_dir}: a sweep folder, not a run folder; give one of its cells{example}")
    return RunDirError(f"{run_dir}: not a bidirect run folder (no {missing})")


def require_run_dir(run_dir: Path) -> StudyConfig:
    """The config of an existing run folder, or a clear error."""
    _check_is_folder(run_dir)
    if not RunFolder(run_dir).config.is_file():
        raise _not_a_run(run_dir, CONFIG_FILE)
    return config_lib.load(RunFolder(run_dir).config, saved=True)


def read_results(run_dir: Path) -> Run:
    """A run folder's results.json as a `Run`, or a `RunDirError` naming what is wrong and the command that
    writes it again."""
    _check_is_folder(run_dir)
    path = RunFolder(run_dir).results
    if not path.is_file() and not RunFolder(run_dir).config.is_file() and any(run_dir.glob(f"*/{RESULTS_FILE}")):
        # run folders side by side in a folder bidirect did not write: no sweep, so not pooled as one
        raise RunDirError(f"{run_dir}: not a run folder (no {RESULTS_FILE}) nor a sweep folder (no {MARKER} marker, "
                          f"nor a {SWEEP_FILE} and {MANIFEST_FILE} of one); give one of the run folders in it")
    if not path.is_file() and not RunFolder(run_dir).config.is_file():  # a user's folder is not an unfinished run
        raise _not_a_run(run_dir, f"{RESULTS_FILE} nor {CONFIG_FILE}")
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {RESULTS_FILE} (the run has not evaluated anything yet)")
    # Not `bidirect eval`: it reads this file first. A resume re-evaluates the saved models and writes it anew.
    advice = (f"move it away, then `bidirect run {RunFolder(run_dir).config} --out {run_dir} --resume` writes it "
              "again from the saved models")
    try:
        results = json.loads(path.read_text())
    except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDirError(f"{path}: corrupt JSON ({type(err).__name__}: {str(err)[:120]}); {advice}") from None
    if not isinstance(results, dict) or "results" not in results:
        raise RunDirError(f"{path}: not a bidirect results file (no 'results' key)")
    wrong = shape_error(results)
    if wrong:  # `{"results": []}` or a text wall_seconds ended in a traceback wherever the file was read
        raise RunDirError(f"{path}: not a bidirect results file ({wrong}); {advice}")
    return Run.from_json(results)


def _clear_tmp(path: Path) -> None:
    """Remove a temporary folder of bidirect's (a killed write's leftover); a link there goes as a link."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _saved_data_why_not(folder: Path) -> str | None:
    """None when ``folder`` is data `StudyData.save` wrote: its hash file (``sha256``, 64 hex digits), its
    files' hashes (FILES_SHA_FILE) and nothing but datasets saved by `datasets` (each folder with its
    dataset_info.json or dataset_dict.json); else what bidirect did not write."""
    if folder.is_symlink() or not folder.is_dir():
        return "a link or a file, not a folder bidirect made"
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "sha256":
            ok = re.fullmatch(rb"[0-9a-f]{64}\n?", read_regular(entry) or b"") is not None
        elif entry.name == FILES_SHA_FILE:  # the hash of every file, written with the data (integrity.py)
            ok = entry.is_file() and not entry.is_symlink()
        else:
            ok = entry.is_dir() and not entry.is_symlink() and \
                ((entry / "dataset_info.json").is_file() or (entry / "dataset_dict.json").is_file())
        if not ok:
            foreign.append(entry.name)
    if not (folder / "sha256").is_file():
        return f"not data bidirect saved ({_few(foreign) or 'no sha256'})"
    return f"not data bidirect saved ({_few(foreign)})" if foreign else None


def check_fresh_data(run_dir: Path) -> None:
    """Before data and a tokenizer are made in ``run_dir``: refuse to replace a data/ or tokenizer/ that
    bidirect did not write. data/ may be a killed run's (saved before its tokenizer); a tokenizer/ without
    tokenizer.json never is (it is renamed into place whole)."""
    run = RunFolder(run_dir)
    if run.data.exists() or run.data.is_symlink():
        why = _saved_data_why_not(run.data)
        if why is not None:
            raise RunDirError(f"{run.data}: {why}; bidirect replaces only data it saved. Move it away, then run the "
                              "same command again.")
    if run.tokenizer.is_symlink() or (run.tokenizer.exists() and
                                      (not run.tokenizer.is_dir() or any(run.tokenizer.iterdir()))):
        raise RunDirError(f"{run.tokenizer}: holds no tokenizer.json, so not a tokenizer bidirect saved; move it "
                          "away, then run the same command again.")


def run_of_model(model: Path) -> Path | None:
    """The run folder a saved model (RUN/models/AUGMENTATION/BACKBONE/PHASE/model) lies in, where that folder has
    its config.yaml; None for a model saved anywhere else."""
    up = model.parents
    if len(up) > 4 and up[3].name == MODELS_DIR and (up[4] / CONFIG_FILE).is_file():
        return up[4]
    return None


def write_data(run_dir: Path, data: Any) -> None:
    """Save the run's `StudyData` (its own format, `StudyData.save`) aside, then rename it into place (over
    data bidirect saved: `check_fresh_data`)."""
    run = RunFolder(run_dir)
    check_fresh_data(run_dir)
    tmp = run_dir / f".{DATA_DIR}.tmp"
    _clear_tmp(tmp)
    data.save(tmp)
    if run.data.exists():
        shutil.rmtree(run.data)
    tmp.rename(run.data)


def write_tokenizer(run_dir: Path, tokenizer: Any) -> None:
    """Save the run's tokenizer with the hash `read_tokenizer` checks. Written aside, hashed, then renamed:
    a kill leaves either no tokenizer (made again) or a whole one."""
    run = RunFolder(run_dir)
    check_fresh_data(run_dir)
    tmp = run_dir / f".{TOKENIZER_DIR}.tmp"
    _clear_tmp(tmp)
    tokenizer.save_pretrained(str(tmp))
    write_text_atomic(run.tokenizer_sha, f"{file_sha(tmp / 'tokenizer.json')}  tokenizer/tokenizer.json\n")
    if run.tokenizer.exists():
        run.tokenizer.rmdir()  # empty (check_fresh_data)
    os.replace(tmp, run.tokenizer)


def has_tokenizer(run_dir: Path) -> bool:
    return (RunFolder(run_dir).tokenizer / "tokenizer.json").is_file()


def check_inside(run_dir: Path, path: Path) -> None:
    """Refuse ``path`` (of the run folder ``run_dir``) when it, or a folder on the way to it, links out of the run
    folder: a tokenizer.json linked to a user's file was read and reported as a JSON error, and a models/ linked
    elsewhere had eval rewrite the model cards there."""
    root, resolved = run_dir.resolve(), path.resolve()
    if resolved != root and root not in resolved.parents:
        raise RunDirError(f"{path}: a symbolic link out of the run folder (to {resolved}); bidirect reads and writes "
                          "a run's files only inside it. Put the files themselves there, or give another run")


def check_writable(folder: Path, name: str) -> None:
    """Before long work that ends by writing ``name`` into ``folder`` (with `write_text_atomic`): a folder that
    refuses its temporary file (read-only, immutable) is named now; eval evaluated every model, then failed on the
    first card. The temporary file is made and removed as that write would."""
    tmp = temporary_path(folder / name)
    tmp.unlink(missing_ok=True)  # a killed write's leftover, as write_text_atomic clears it
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except OSError as err:
        if environment_fault(err):
            raise
        raise RunDirError(f"{folder}: cannot write {name} there ({err.strerror}); make the folder writable (chmod "
                          "u+w, or chattr -i where it is immutable), then run the same command again") from None
    tmp.unlink()


def read_tokenizer(run_dir: Path) -> Any:
    """The tokenizer of a run, checked against the hash recorded when the run made it: token ids
    mean nothing with another tokenizer, so a tokenizer/ copied from another run is refused."""
    from bidirect.tokenizer import load_tokenizer  # transformers: only when a tokenizer is read

    run = RunFolder(run_dir)
    for path in [run.tokenizer, *(sorted(run.tokenizer.iterdir()) if run.tokenizer.is_dir() else [])]:
        check_inside(run_dir, path)  # each file transformers reads
    try:
        tokenizer = load_tokenizer(run.tokenizer)
    except FileNotFoundError:
        raise
    except Exception as err:  # tokenizers' own errors (truncated JSON) come from Rust as plain Exceptions
        raise RunDirError(
            f"{run.tokenizer / 'tokenizer.json'}: cannot be read ({type(err).__name__}: {str(err)[:120]}); it is "
            "damaged. Put back the tokenizer/ this run was made with, or start over with --force."
        ) from None
    if run.tokenizer_sha.is_file():  # runs made before the hash was recorded are not checked
        expected = (run.tokenizer_sha.read_text().split() or [""])[0]
        actual = file_sha(run.tokenizer / "tokenizer.json")
        if actual != expected:
            raise RunDirError(
                f"{run.tokenizer}: the tokenizer does not match the run (sha256 of tokenizer.json is {actual[:12]}..."
                f", the run recorded {expected[:12]}... in {run.tokenizer_sha}; vocabulary of {len(tokenizer)} "
                "tokens). Put back the tokenizer/ this run was made with, or start a new run."
            )
    return tokenizer
