"""The trained cells of a run folder, as the analyses read them: which cells and phase a command asked for
(`select_cells`), an analysis's results file merged with an earlier one (`merge_cells`), and one cell's
model with what reads it (`read_cell`, for scripts).

Here and not in rundir, which spells the folder's layout and stays a leaf: reading a cell loads models
and data, which sit above the layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bidirect.config import StudyConfig
from bidirect.integrity import check_models, check_results
from bidirect.results import bio_phase, phases
from bidirect.rundir import RunDirError, RunFolder, check_started, read_results, read_tokenizer, require_run_dir


def select_cells(run_dir: Path, augmentation: str | None, backbone: str | None,
                 phase: str | None) -> tuple[StudyConfig, list[tuple[str, str]], str]:
    """For an analysis of a run's trained models (probe, capacity): the run's config, the (augmentation,
    backbone) cells asked for, and the phase; clear errors otherwise."""
    cfg = require_run_dir(run_dir)
    if RunFolder(run_dir).results.is_file():  # an edited config.yaml or another data/ would be analysed as the run's
        check_results(run_dir, cfg, read_results(run_dir))
    else:
        check_started(run_dir, cfg)
    check_models(run_dir, cfg)  # all before any is used
    augs = [a.name for a in cfg.augmentations()]
    backbones = [b.name for b in cfg.backbones]
    if augmentation is not None and augmentation not in augs:
        raise RunDirError(f"--augmentation {augmentation}: not in this run (it has {', '.join(augs)})")
    if backbone is not None and backbone not in backbones:
        raise RunDirError(f"--backbone {backbone}: not in this run (it has {', '.join(backbones)})")
    phase = phase or bio_phase(cfg.protocol)
    if phase not in phases(cfg.protocol):
        raise RunDirError(f"--phase {phase}: this run's protocol ({cfg.protocol}) has the phases "
                          f"{', '.join(phases(cfg.protocol))}")
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
