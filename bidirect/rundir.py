"""The folders bidirect writes: where each thing is, what a folder is, and reading and writing a run's content.

Every path inside a run or sweep folder is spelled here (`RunFolder`, the ``*_FILE`` names); the
other modules ask for them. The layout, drawn as a tree, is in docs/design.md.

Every run folder and sweep folder bidirect creates holds a marker, ``.bidirect``: a small JSON of what it is, a
regular file (a link there is neither trusted nor written through). A folder of a version before the marker is
recognised by its content, not by file names: a run's results.json records the config in its config.yaml, a
sweep's sweep.json is a manifest of the axes in its sweep.yaml (`legacy_why_not`); such a folder is marked by a
resume (a file added, nothing deleted). Every file is written under a temporary name and renamed into place
(`write_text_atomic`), so that a reader never sees half of one. What bidirect may replace or delete, and the lock
held while it writes: bidirect.ownership.

Light on purpose (no torch at import): the CLI's error path imports it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
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
FOLDERS = {DATA_DIR, TOKENIZER_DIR, MODELS_DIR, REPORT_DIR, TRACKERS_DIR}
RUN_ENTRIES = frozenset({MARKER, CONFIG_FILE, RESULTS_FILE, DATA_DIR, TOKENIZER_DIR, TOKENIZER_SHA_FILE, MODELS_DIR,
                         PROBE_FILE, CAPACITY_FILE, REPORT_FILE, REPORT_DIR, TRACKERS_DIR})
SWEEP_ENTRIES = frozenset({MARKER, SWEEP_FILE, MANIFEST_FILE, SUMMARY_FILE, REPORT_FILE, REPORT_DIR, TRACKERS_DIR})
KINDS: tuple[Kind, ...] = ("run", "sweep")


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- what a folder is


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


def read_json_regular(path: Path) -> Any:
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
    meta = read_json_regular(folder / MARKER)
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return kind if kind in KINDS else None


def started_config(folder: Path) -> dict[str, Any] | None:
    """The study a run folder's marker recorded when the run started, or None (a marker of a version before it,
    or of a run marked later: `--resume` of an old run, `eval`)."""
    meta = read_json_regular(folder / MARKER)
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
        results = run_or_none(read_json_regular(folder / RESULTS_FILE))
        if results is None or not isinstance(results.config, dict):
            return f"its {RESULTS_FILE} is not a bidirect results file (results and config)"
        if not _same_config(folder / CONFIG_FILE, results.config):
            return f"its {RESULTS_FILE} does not record the config in {CONFIG_FILE}"
        return None
    if read_regular(folder / SWEEP_FILE, 0) is None or read_regular(folder / MANIFEST_FILE, 0) is None:
        return f"no {SWEEP_FILE} and {MANIFEST_FILE} as regular files"
    meta = read_json_regular(folder / MANIFEST_FILE)
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


def few(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


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


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def environment_fault(err: OSError) -> bool:
    """A fault of the machine (disk full, quota, I/O error), not of what the user asked."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


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
        meta = read_json_regular(run_dir / MANIFEST_FILE)
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
        return f"not data bidirect saved ({few(foreign) or 'no sha256'})"
    return f"not data bidirect saved ({few(foreign)})" if foreign else None


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
