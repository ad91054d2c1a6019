"""What a run uses is what it made: its data, its saved models and its config, checked before use.

Each folder bidirect writes whole and reads again later (``data/``, each phase's ``model/``) gets a manifest when it
is written, ``files.sha256``: the sha256 of every other file in it (a saved gbert's code too, which runs when it
loads; not a model's card, README.md, which evaluation rewrites), in the format ``sha256sum -c`` reads. Before
the folder is used, every file is hashed again and compared, so 64 overwritten bytes of an arrow file (which
segfaulted the evaluation), random bytes in a model's tensors or a zeroed ``data/sha256`` stop the command with one
line naming the file, instead of a crash or numbers computed from damaged input. Folders written before the
manifest existed have none and are not checked (the runs in ``runs/`` hold neither data nor models).

`check_results` holds a run folder's config.yaml and data/ to what its results.json recorded (the config and
``data_sha256``), so that an edited config.yaml or a swapped data/ is not evaluated, probed or resumed as if it
were the run's; `rundir.check_started` holds an unfinished run's config.yaml to the study its marker recorded
at start.

Light on purpose (no torch at import), like rundir.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bidirect import config as config_lib
from bidirect.config import StudyConfig, shown
from bidirect.results import Run, phases
from bidirect.rundir import (
    CONFIG_FILE,
    FILES_SHA_FILE,
    MODEL_CARD_FILE,
    RESULTS_FILE,
    RunDirError,
    RunFolder,
    check_started,
)

DATA_SHA = "sha256"  # in a saved data folder: `StudyData.sha256` of the data as generated, which results.json records


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """The files a manifest covers: all but itself and a model's card (written again after each evaluation, and
    read by people, not by bidirect)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != FILES_SHA_FILE and
                  p.relative_to(folder).as_posix() != MODEL_CARD_FILE)


def write_manifest(folder: Path) -> None:
    """Record the sha256 of every file under ``folder`` in its ``files.sha256`` (written last, beside them)."""
    lines = [f"{_sha(p)}  {p.relative_to(folder).as_posix()}\n" for p in _files(folder)]
    tmp = folder / f".{FILES_SHA_FILE}.tmp"
    tmp.write_text("".join(lines))
    os.replace(tmp, folder / FILES_SHA_FILE)


def check_manifest(folder: Path, what: str, advice: str) -> None:
    """Raise a `RunDirError` naming the first file under ``folder`` that is missing, extra or not the one its
    manifest recorded (``what``: the folder in words; ``advice``: what to do). No manifest: nothing to check."""
    manifest = folder / FILES_SHA_FILE
    if not manifest.is_file():
        return
    recorded: dict[str, str] = {}
    try:
        for line in manifest.read_text().splitlines():
            sha, _, name = line.partition("  ")
            if len(sha) != 64 or not name:
                raise ValueError(line[:60])
            recorded[name] = sha
    except (ValueError, OSError) as err:
        raise RunDirError(f"{manifest}: damaged ({type(err).__name__}: {shown(str(err))}); {advice}") from None
    found = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    for name, sha in recorded.items():
        if name not in found:
            raise RunDirError(f"{folder / name}: missing from {what} (listed in {manifest}); {advice}")
        actual = _sha(found[name])
        if actual != sha:
            raise RunDirError(f"{folder / name}: damaged: its sha256 is {actual[:12]}..., {manifest} recorded "
                              f"{sha[:12]}... when {what} was written; {advice}")
    extra = sorted(set(found) - set(recorded))
    if extra:
        raise RunDirError(f"{folder / extra[0]}: not part of {what} as it was written (not in {manifest}); {advice}")


def check_results(run_dir: Path, cfg: StudyConfig, results: Run) -> None:
    """``run_dir``'s config.yaml (loaded as ``cfg``) and data/ are those its results.json was made with: the config
    it recorded, and the data's hash. Results files without them (older versions) are not checked."""
    run = RunFolder(run_dir)
    recorded = results.config
    if isinstance(recorded, dict):
        key = config_lib.first_difference(config_lib.migrate_saved(recorded), cfg.to_dict())
        if key is not None:
            raise RunDirError(
                f"{run.config}: not the config {run.results} was made with ({key}: "
                f"{shown(config_lib.value_at(cfg.to_dict(), key), 30)} in {CONFIG_FILE}, "
                f"{shown(config_lib.value_at(recorded, key), 30)} in {RESULTS_FILE}); put back the {CONFIG_FILE} "
                "this run was made with, or start a new run folder with the new config"
            )
    if not isinstance(recorded, dict):  # not finished (or an older results.json): what the run started with
        check_started(run_dir, cfg)
    expected = results.data_sha256
    path = run.data / DATA_SHA
    if isinstance(expected, str) and path.is_file():
        actual = (path.read_text(errors="replace").split() or [""])[0]
        if actual != expected:
            raise RunDirError(
                f"{path}: {shown(actual, 16)} is not the data hash {run.results} recorded ({expected[:12]}...): "
                f"data/ is not the one this run was made with. `bidirect data {run.config} --out NEW` writes the "
                "run's data again (it is deterministic); put NEW/data in place of it"
            )


def check_models(run_dir: Path, cfg: StudyConfig) -> None:
    """Every saved model of the run against its manifest, before any is used: a damaged fine-tuned model was
    found only after the pretrained ones had been evaluated (models.load_backbone checks each again as it loads)."""
    run = RunFolder(run_dir)
    for augmentation in cfg.augmentations():
        for backbone in cfg.backbones:
            for phase in phases(cfg.protocol):
                model = run.model(augmentation.name, backbone.name, phase)
                check_manifest(model, "the saved model", retrain_advice(run_dir, model.parent))


def retrain_advice(run_dir: Path, phase_dir: Path) -> str:
    """How to make a damaged model of a phase again. results.json goes too: a resume keeps the cells it holds."""
    run = RunFolder(run_dir)
    return (f"delete {phase_dir} and move {run.results} away, then `bidirect run {run.config} --out {run_dir} "
            "--resume` trains that phase again (training is deterministic) and evaluates every cell anew")


def data_advice(data_dir: Path) -> str:
    """How to get back a run's damaged data/: it is deterministic from the config."""
    config = data_dir.parent / CONFIG_FILE
    return (f"the data is deterministic: `bidirect data {config} --out NEW` writes the same files; put NEW/data in "
            f"place of {data_dir}")
