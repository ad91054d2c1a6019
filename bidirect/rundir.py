"""The folders bidirect writes: what marks them as its own, what ``--force`` may replace, and the lock
held while a process writes to one.

Every run folder and sweep folder bidirect creates holds a marker, ``.bidirect``, a small JSON
of what it is. ``--force`` replaces only a folder with that marker (or a run or sweep folder of a
version before the marker, recognised by the files only bidirect writes together), and never
``/``, the home folder, the current folder or one of its ancestors, whatever they hold: a wrong
``--out`` must cost an error message, not someone's files. A replaced folder is moved aside, not
deleted, until the new run is known to start (`replace` and `settle`).

A process that writes to a folder holds ``.bidirect.lock`` (its pid, host and command line); a
second process is refused with the holder's name. A lock whose process has died on this host
is taken over. Under ``accelerate launch`` only the main process locks: its peers write to the
folder it holds.

Light on purpose (no torch): config-free modules and the CLI's error path import it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Literal

MARKER = ".bidirect"
LOCK = ".bidirect.lock"
Kind = Literal["run", "sweep"]
# What a run or sweep folder of a version before the marker holds; only bidirect writes these together.
LEGACY = {"run": ("config.yaml", "results.json"), "sweep": ("sweep.yaml", "sweep.json")}


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
    ancestor of it), or None."""
    path = folder.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == Path(path.anchor):
        return "it is the root of the file system"
    if path == home:
        return "it is your home folder"
    if path == cwd:
        return "it is the current folder"
    if path in cwd.parents:
        return "it holds the current folder"
    return None


def check_replaceable(folder: Path, kind: Kind, option: str = "--out") -> None:
    """Raise unless ``--force`` may delete ``folder``: a bidirect folder of ``kind`` that is none of
    the folders `forbidden` names."""
    why = forbidden(folder)
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


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: treat as held, by someone unknown


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    return (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command', '?')}, "
            f"since {holder.get('since', '?')})")


def check_unlocked(folder: Path) -> None:
    """Raise if a live process holds ``folder``'s lock."""
    holder = _holder(folder / LOCK)
    if holder is not None and _alive(holder) and holder.get("pid") != os.getpid():
        raise RunDirError(f"{folder}: in use by {_describe(holder)}; wait for it to finish, or if it is not running, "
                          f"delete {folder / LOCK}")


class Lock:
    """``folder``'s lock, held by this process until `release`."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.held = False

    def acquire(self) -> Lock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:4]) or "python",
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if holder is not None and (_alive(holder) and holder.get("pid") != os.getpid()):
                    check_unlocked(self.path.parent)  # raises, naming the holder
                # Dead (or our own leftover): take it over. A rival taking it over at the same time
                # loses at O_EXCL on the next turn.
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return self
        raise RunDirError(f"{self.path.parent}: could not take the lock {self.path}; another process keeps taking it")

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = _holder(self.path)
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)


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
