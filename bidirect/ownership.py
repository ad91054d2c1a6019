"""What bidirect may write into, replace or delete, and the lock held while it writes (issue 22).

bidirect deletes or overwrites only what it can prove it wrote. ``--force`` replaces only a marked folder
(`rundir.folder_kind`) whose every entry is one of its layout's (`rundir.RUN_ENTRIES`, `rundir.SWEEP_ENTRIES`, a
sweep's cells: `foreign_entries`), each file recognised by its content where a user could have put one under that
name (a report and its figures, a summary, an analysis's output), and never ``/``, the home folder, the current
folder or one of its ancestors, whatever they hold: a wrong ``--out`` must cost an error message, not someone's
files. A replaced folder is moved aside, not deleted, until the new run is known to start (`replace`, `settle`).

A process that writes to a folder holds a lock on its marker (`Lock`, `writing`); a second process is refused with
the holder's pid and command line. The lock ends with its process, so a run killed with SIGKILL leaves none
behind. Under ``accelerate launch`` only the main process locks: its peers write to the folder it holds. A new
folder is made whole under a temporary name and renamed into place (`create_folder`); `open_run_dir` makes a run
folder ready to write: new, resumed or replaced.

Light on purpose (no torch at import), like rundir, whose layout and markers it reads.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bidirect import config as config_lib
from bidirect.config import StudyConfig
from bidirect.rundir import (
    CAPACITY_FILE,
    CONFIG_FILE,
    FIGURES_MANIFEST,
    FOLDERS,
    KINDS,
    MANIFEST_FILE,
    MARKER,
    PROBE_FILE,
    REPORT_DIR,
    REPORT_FILE,
    RUN_ENTRIES,
    SUMMARY_FILE,
    SWEEP_ENTRIES,
    SWEEP_FILE,
    Kind,
    RunDirError,
    RunFolder,
    check_marker,
    check_started,
    environment_fault,
    few,
    file_sha,
    folder_kind,
    legacy_why_not,
    manifest_why_not,
    marker_kind,
    read_json_regular,
    read_regular,
    temporary_path,
    write_json_atomic,
    write_marker,
    write_text_atomic,
)


class FolderInUse(RunDirError):
    """Another process holds the folder's lock (a sweep's worker skips such a cell: another worker trains it)."""


class AlreadyMade(RunDirError):
    """`create_folder` found the folder made by another process while it waited its turn."""


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
        meta = read_json_regular(folder / MANIFEST_FILE)
        cells = {c["name"] for c in meta["cells"]} if manifest_why_not(meta) is None else set()
        allowed, folders = SWEEP_ENTRIES | cells, FOLDERS | cells
    else:
        cells, allowed, folders = set(), RUN_ENTRIES, FOLDERS
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
    out = read_json_regular(path)
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
    summary = read_json_regular(path)
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
                          f"entr{'y' if len(foreign) == 1 else 'ies'} bidirect did not write ({few(foreign)}); "
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


def report_why_not(report: Path) -> tuple[str, list[str]] | None:
    """None when bidirect may replace the report ``report`` (a .md file) and its figure folder (the
    file's stem): each is absent, or listed in the folder's `FIGURES_MANIFEST` with the hash it had when
    written, or (a report written before the manifest) the Markdown starts with bidirect's heading and
    the folder holds only the PNG figures it links to. Else (why, the folder's entries it did not write)."""
    figures = report.with_suffix("")
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
        return f"{figures} is not a folder bidirect made", []
    entries = sorted(p.name for p in figures.iterdir()) if figures.is_dir() else []
    manifest = read_json_regular(figures / FIGURES_MANIFEST)
    if isinstance(manifest, dict) and isinstance(manifest.get("figures"), dict):
        listed = manifest["figures"]
        foreign = [n for n in entries if n != FIGURES_MANIFEST and
                   (n not in listed or read_regular(figures / n) is None or file_sha(figures / n) != listed[n])]
        if foreign:
            return f"{figures}: holds files bidirect did not write ({few(foreign)})", foreign
        if report.exists() or report.is_symlink():
            if read_regular(report) is None or manifest.get("report") != [report.name, file_sha(report)]:
                return "changed since bidirect wrote it (or it is not bidirect's)", []
        return None
    if not report.exists() and not report.is_symlink():
        foreign = entries
        return (f"{figures}: holds files bidirect did not write ({few(foreign)})", foreign) if foreign else None
    text = (read_regular(report) or b"").decode(errors="replace")
    if not text.startswith(("# bidirect report: ", "# bidirect sweep report: ")):
        return "exists and bidirect did not write it", []
    linked = set(re.findall(rf"\]\({re.escape(figures.name)}/([^)/]+\.png)\)", text))
    foreign = [n for n in entries if n not in linked or not (figures / n).is_file() or (figures / n).is_symlink()]
    return (f"{figures}: holds files bidirect did not write ({few(foreign)})", foreign) if foreign else None


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
    manifest = read_json_regular(path.parent / FIGURES_MANIFEST)
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
            raise RunDirError(f"{tmp}: holds {few(theirs)}, which bidirect did not write; move it away, then run "
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
