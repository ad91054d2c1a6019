"""The folders bidirect writes: their layout, reading and writing what is in them, what marks them as
bidirect's own, what ``--force`` may replace, and the lock held while a process writes to one.

Every path inside a run or sweep folder is spelled here (`RunFolder`, the ``*_FILE`` names); the
other modules ask for them. The layout, drawn as a tree, is in docs/design.md.

Every run folder and sweep folder bidirect creates holds a marker, ``.bidirect``, a small JSON
of what it is. ``--force`` replaces only a folder with that marker (or a run or sweep folder of a
version before the marker, recognised by the files only bidirect writes together), and never
``/``, the home folder, the current folder or one of its ancestors, whatever they hold: a wrong
``--out`` must cost an error message, not someone's files. A replaced folder is moved aside, not
deleted, until the new run is known to start (`replace` and `settle`).

A process that writes to a folder holds a lock on its marker (`Lock`); a second process is
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
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bidirect import config as config_lib
from bidirect.config import StudyConfig

MARKER = ".bidirect"
Kind = Literal["run", "sweep"]
# A run folder
CONFIG_FILE = "config.yaml"  # the study, as run (a resume must match it)
RESULTS_FILE = "results.json"  # every level of every cell, the baselines, the training summaries
TOKENIZER_SHA_FILE = "tokenizer.sha256"  # of tokenizer/tokenizer.json, written with it: a swapped one is caught
# In data/ and in each phase's model/: the sha256 of every other file there, written with them (`sha256sum -c`
# reads it) and checked before they are used (bidirect.integrity): a damaged arrow file segfaulted eval
FILES_SHA_FILE = "files.sha256"
PROBE_FILE, CAPACITY_FILE, REPORT_FILE = "probe.json", "capacity.json", "report.md"  # the analyses' outputs
# A phase folder (models/AUGMENTATION/BACKBONE/PHASE), which the trainer fills
MODEL_DIR, LOG_FILE, DONE_FILE, CHECKPOINTS_DIR = "model", "log.jsonl", "phase.json", "checkpoints"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint (checkpoints/step_N): it marks it complete
# A sweep folder: one run folder per cell beside these
SWEEP_FILE, MANIFEST_FILE, SUMMARY_FILE = "sweep.yaml", "sweep.json", "summary.json"
# What a run or sweep folder of a version before the marker holds; only bidirect writes these together.
LEGACY = {"run": (CONFIG_FILE, RESULTS_FILE), "sweep": (SWEEP_FILE, MANIFEST_FILE)}


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says why and what to do."""


def write_marker(folder: Path, kind: Kind) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def folder_kind(folder: Path) -> Kind | None:
    """``run`` or ``sweep`` for a folder bidirect wrote, else None."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            return None  # a damaged marker proves nothing
        return kind if kind in LEGACY else None
    for kind, files in LEGACY.items():
        if all((folder / f).is_file() for f in files):
            return kind
    return None


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


def check_replaceable(folder: Path, kind: Kind, option: str = "--out") -> None:
    """Raise unless ``--force`` may delete ``folder``: a bidirect folder of ``kind`` that is none of
    the folders `forbidden` names."""
    why = "it is a symbolic link (give the folder it points to)" if folder.is_symlink() else forbidden(folder)
    if why is not None:
        raise RunDirError(f"{option} {folder}: --force will not delete it: {why}. Give a new folder as {option}.")
    found = folder_kind(folder)
    if found != kind:
        what = f"a bidirect {found} folder, not a {kind} folder" if found else \
            f"not a folder bidirect wrote (no {MARKER} marker)"
        raise RunDirError(f"{option} {folder}: --force will not delete it: it is {what}. "
                          f"Give a new or empty folder as {option}, or delete it yourself.")


def aside_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.replaced")


def replace(folder: Path, kind: Kind) -> Path:
    """``--force``: move ``folder`` aside (checked by `check_replaceable`) and return where; `settle`
    deletes it once the new run has passed its checks, or puts it back."""
    check_replaceable(folder, kind)
    check_unlocked(folder)
    aside = aside_path(folder)
    if aside.exists():
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


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write, then rename: a reader never sees half a file. Always valid JSON (NaN is written null)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False))
    except BaseException:  # a full disk: no half file left behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def read_json(path: Path, what: str, advice: str) -> Any:
    """A JSON file bidirect wrote; damage is a `RunDirError` naming the file and ``advice``."""
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunDirError(f"{path}: {what} is damaged ({type(err).__name__}: {str(err)[:120]}); {advice}") from None


# --------------------------------------------------------------------------- lock


def _holder(marker: Path) -> str:
    """Who holds the flock on ``marker``, from /proc/locks (Linux); the kernel knows, no file has to."""
    try:
        st = marker.stat()
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if "FLOCK" not in parts or "->" in parts:  # "->": a waiter, not the holder
                continue
            i = parts.index("FLOCK")
            major, minor, inode = parts[i + 4].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                pid = int(parts[i + 3])
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return f"process {pid} on {socket.gethostname()} ({command.strip()[:120]})"
    except (OSError, ValueError, IndexError):
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

    def acquire(self) -> Lock:
        marker = self.folder / MARKER
        f = open(marker, "rb")  # noqa: SIM115 (held open until the last release: the lock lives with it)
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino)
        if key in Lock._held:
            f.close()
            Lock._held[key][1] += 1
        else:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise RunDirError(f"{self.folder}: in use by {_holder(marker)}; wait for it to finish "
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


def check_unlocked(folder: Path) -> None:
    """Raise if another process holds ``folder``'s lock."""
    if (folder / MARKER).is_file():
        Lock(folder).acquire().release()


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


def make_folder(folder: Path) -> None:
    """Create a run or sweep folder (and its parents). A permission or path problem is a `RunDirError`
    naming the folder; a full disk or an I/O error is the environment's and propagates as it is."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if environment_fault(err):
            raise
        raise RunDirError(f"--out {folder}: cannot create the folder ({err.strerror}: {err.filename})") from None


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
        return self.root / "data"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_sha(self) -> Path:
        return self.root / TOKENIZER_SHA_FILE

    def file(self, name: str) -> Path:
        """An analysis's output at the top of the folder (PROBE_FILE, CAPACITY_FILE, REPORT_FILE)."""
        return self.root / name

    def cell(self, augmentation: str, backbone: str) -> Path:
        return self.root / "models" / augmentation / backbone

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
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    saved = RunFolder(run_dir).config
    aside = None
    if existing and force:
        aside = replace(run_dir, "run")
    elif existing and resume:
        if not saved.is_file():
            raise RunDirError(f"--resume {run_dir}: no {CONFIG_FILE} there, so it is not a bidirect run folder")
        if config_lib.load(saved, saved=True).to_dict() != cfg.to_dict():
            raise RunDirError(
                f"--resume {run_dir}: the config differs from the one this run started with ({saved}); "
                "resume with that config or start a new run folder"
            )
        if folder_kind(run_dir) is None:  # a run of a version before the marker: the config proves it ours
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
        make_folder(run_dir)
        write_marker(run_dir, "run")
        lock = Lock(run_dir).acquire()
        config_lib.dump(cfg, saved)
    except BaseException:
        settle(run_dir, aside, False)
        raise
    return Opened(run_dir, lock, aside)


def require_run_dir(run_dir: Path) -> StudyConfig:
    """The config of an existing run folder, or a clear error."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    if not RunFolder(run_dir).config.is_file():
        raise RunDirError(f"{run_dir}: not a bidirect run folder (no {CONFIG_FILE})")
    return config_lib.load(RunFolder(run_dir).config, saved=True)


def read_results(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    path = RunFolder(run_dir).results
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
    wrong = results_shape(results)
    if wrong:  # `{"results": []}` or a text wall_seconds ended in a traceback wherever the file was read
        raise RunDirError(f"{path}: not a bidirect results file ({wrong}); {advice}")
    return results


def results_shape(results: dict[str, Any]) -> str | None:
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


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_data(run_dir: Path, data: Any) -> None:
    """Save the run's `StudyData` (its own format, `StudyData.save`) aside, then rename it into place."""
    run = RunFolder(run_dir)
    tmp = run_dir / ".data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    data.save(tmp)
    shutil.rmtree(run.data, ignore_errors=True)
    tmp.rename(run.data)


def write_tokenizer(run_dir: Path, tokenizer: Any) -> None:
    """Save the run's tokenizer with the hash `read_tokenizer` checks. Written aside, hashed, then renamed:
    a kill leaves either no tokenizer (made again) or a whole one."""
    run = RunFolder(run_dir)
    tmp = run_dir / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    sha = tmp / ".sha256.tmp"
    sha.write_text(f"{_file_sha(tmp / 'tokenizer.json')}  tokenizer/tokenizer.json\n")
    os.replace(sha, run.tokenizer_sha)
    shutil.rmtree(run.tokenizer, ignore_errors=True)
    os.replace(tmp, run.tokenizer)


def has_tokenizer(run_dir: Path) -> bool:
    return (RunFolder(run_dir).tokenizer / "tokenizer.json").is_file()


def read_tokenizer(run_dir: Path) -> Any:
    """The tokenizer of a run, checked against the hash recorded when the run made it: token ids
    mean nothing with another tokenizer, so a tokenizer/ copied from another run is refused."""
    from bidirect.tokenizer import load_tokenizer  # transformers: only when a tokenizer is read

    run = RunFolder(run_dir)
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
        actual = _file_sha(run.tokenizer / "tokenizer.json")
        if actual != expected:
            raise RunDirError(
                f"{run.tokenizer}: the tokenizer does not match the run (sha256 of tokenizer.json is {actual[:12]}..."
                f", the run recorded {expected[:12]}... in {run.tokenizer_sha}; vocabulary of {len(tokenizer)} "
                "tokens). Put back the tokenizer/ this run was made with, or start a new run."
            )
    return tokenizer


# --------------------------------------------------------------------------- the analyses' cells


def default_phase(cfg: StudyConfig) -> str:
    return "mixed" if cfg.protocol == "mixed" else "pretrain"


def select_cells(run_dir: Path, augmentation: str | None, backbone: str | None,
                 phase: str | None) -> tuple[StudyConfig, list[tuple[str, str]], str]:
    """For an analysis of a run's trained models (probe, capacity): the run's config, the (augmentation,
    backbone) cells asked for, and the phase; clear errors otherwise."""
    cfg = require_run_dir(run_dir)
    from bidirect.integrity import check_models, check_results

    if RunFolder(run_dir).results.is_file():  # an edited config.yaml or another data/ would be analysed as the run's
        check_results(run_dir, cfg, read_results(run_dir))
    check_models(run_dir, cfg)  # all before any is used
    augs = [a.name for a in cfg.augmentations()]
    backbones = [b.name for b in cfg.backbones]
    if augmentation is not None and augmentation not in augs:
        raise RunDirError(f"--augmentation {augmentation}: not in this run (it has {', '.join(augs)})")
    if backbone is not None and backbone not in backbones:
        raise RunDirError(f"--backbone {backbone}: not in this run (it has {', '.join(backbones)})")
    phases = ["mixed"] if cfg.protocol == "mixed" else ["pretrain", "finetune"]
    phase = phase or default_phase(cfg)
    if phase not in phases:
        raise RunDirError(f"--phase {phase}: this run's protocol ({cfg.protocol}) has the phases {', '.join(phases)}")
    run = RunFolder(run_dir)
    if not run.data.is_dir() or not run.tokenizer.is_dir():
        raise RunDirError(f"{run_dir}: no data/ or tokenizer/ yet; run `bidirect run CONFIG --out {run_dir}` first")
    cells = [(a, b) for a in augs for b in backbones
             if (augmentation is None or a == augmentation) and (backbone is None or b == backbone)]
    for a, b in cells:
        model_dir = run.model(a, b, phase)
        if not (model_dir / "config.json").is_file():
            raise RunDirError(f"{model_dir}: no trained model; finish the run with `bidirect run ... --resume`")
    return cfg, cells, phase


def merge_cells(path: Path, out: dict[str, Any], same: Sequence[str] = ("phase",)) -> dict[str, Any]:
    """An analysis's results file: cells computed now replace the same cells of an earlier file; its other
    cells are kept when it was made with the same settings (``same``: keys that must match), else the earlier
    file is replaced whole."""
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:  # JSONDecodeError, UnicodeDecodeError: a damaged file is replaced whole, as another's
            old = {}
        if not isinstance(old, dict) or any(old.get(k) != out.get(k) for k in same) or \
                not isinstance(old.get("results", {}), dict) or \
                not all(isinstance(augs, dict) for augs in old.get("results", {}).values()):
            old = {}
        for backbone, augs in old.get("results", {}).items():
            for aug, cell in augs.items():
                out["results"].setdefault(backbone, {}).setdefault(aug, cell)
    return out


def read_cell(run_dir: Path, backbone: str, phase: str = "finetune", augmentation: str | None = None) -> tuple:
    """What a script reading one trained cell needs: (config, tokenizer, data, augmentation, model), the
    augmentation the run's first when None, the phase's saved model in evaluation mode."""
    from bidirect.data.generate import StudyData  # datasets and torch: only when a cell is read
    from bidirect.models import load_backbone

    cfg = require_run_dir(run_dir)
    augmentation = augmentation or cfg.augmentations()[0].name
    run = RunFolder(run_dir)
    model = load_backbone(run.model(augmentation, backbone, phase)).eval()
    return cfg, read_tokenizer(run_dir), StudyData.load(run.data), augmentation, model
