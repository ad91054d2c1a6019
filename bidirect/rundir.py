"""The folders bidirect writes: what marks them as its own, what ``--force`` may replace, and the lock
held while a process writes to one.

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

Light on purpose (no torch): config-free modules and the CLI's error path import it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Literal

MARKER = ".bidirect"
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
