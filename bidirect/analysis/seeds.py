"""Seeds pooled: the mean and 95% Student-t interval over the seeds of a sweep, per (other swept values,
augmentation, backbone), for every level and attribute; written as the sweep folder's summary.json.

The interval is mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation over the n seeds; one seed
gives no interval.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from bidirect.config import dotted
from bidirect.results import ATTRIBUTES, Run, phase_mode
from bidirect.rundir import (
    MANIFEST_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    RunDirError,
    RunFolder,
    is_summary,
    read_results,
    write_json_atomic,
)
from bidirect.sweep import SEED, read_manifest


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (two-sided 95%).

    Bisection on the closed form of P(|T| < t) for integer dof (Abramowitz & Stegun 26.7.3-4),
    so that no scipy is needed; matches the tables to 4 decimals (12.7062 at 1, 2.0423 at 30)."""
    if dof < 1:
        raise ValueError("a t interval needs at least 2 values")

    def inside(t: float) -> float:  # P(|T| < t)
        theta = math.atan(t / math.sqrt(dof))
        s, c2 = math.sin(theta), math.cos(theta) ** 2
        if dof % 2:
            total, term = 0.0, 1.0
            for k in range(1, (dof - 1) // 2 + 1):
                total += term
                term *= c2 * (2 * k) / (2 * k + 1)
            return 2 / math.pi * (theta + (s * math.cos(theta) * total if dof > 1 else 0.0))
        total, term = 0.0, 1.0
        for k in range(1, dof // 2 + 1):
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        return s * total

    low, high = 0.0, 1000.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if inside(mid) < 0.95 else (low, mid)
    return (low + high) / 2


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95% t-interval of ``values`` (seeds); with one value, no interval."""
    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return {"mean": m, "ci95": None, "low": None, "high": None, "n": n}
    half = t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return {"mean": m, "ci95": half, "low": m - half, "high": m + half, "n": n}


# --------------------------------------------------------------------------- aggregation


def read_cells(sweep_dir: Path) -> tuple[dict[str, list], list[dict[str, Any]]]:
    """(axes, cells with their values and results) of a sweep folder. Without sweep.json the axes
    are the config fields whose values differ between the run folders."""

    if not sweep_dir.is_dir():
        raise RunDirError(f"{sweep_dir}: no such folder")
    manifest = sweep_dir / MANIFEST_FILE
    if manifest.is_file():
        meta = read_manifest(manifest, "put back a good copy, or delete it: the run folders' own configs then say "
                             "what was swept")
        axes, cells = meta["axes"], meta["cells"]
        found = [{**c, "results": read_results(sweep_dir / c["name"])} for c in cells
                 if RunFolder(sweep_dir / c["name"]).results.is_file()]
    else:
        runs = {p.parent.name: read_results(p.parent) for p in sorted(sweep_dir.glob(f"*/{RESULTS_FILE}"))}
        flat = {name: {k: json.dumps(v, sort_keys=True) for k, v in dotted(r.get("config", {})).items()}
                for name, r in runs.items()}
        keys = sorted({k for f in flat.values() for k in f})
        varied = [k for k in keys if len({f.get(k) for f in flat.values()}) > 1]
        axes = {k: sorted({f.get(k) for f in flat.values()}, key=str) for k in varied}
        axes = {k: [json.loads(v) for v in vs] for k, vs in axes.items()}
        found = [{"name": name, "values": {k: json.loads(flat[name][k]) for k in varied}, "results": r}
                 for name, r in runs.items()]
    if not found:
        raise RunDirError(f"{sweep_dir}: no finished cell yet (no */results.json); run the sweep first")
    return axes, found


def aggregate(sweep_dir: Path) -> dict[str, Any]:
    """Pool the seeds: one row per (other swept values, augmentation, backbone)."""
    axes, cells = read_cells(sweep_dir)
    group_keys = [k for k in axes if k != SEED]
    groups: dict[str, dict[str, Any]] = {}
    for sweep_cell in cells:
        run = Run.of(sweep_cell["results"])
        values = {k: sweep_cell["values"].get(k) for k in group_keys}
        majority = run.baselines.get("majority_baseline", {}).get("mean")
        for cell in run.cells:
            key = json.dumps([values, cell.augmentation, cell.backbone], sort_keys=True)
            g = groups.setdefault(key, {"values": values, "augmentation": cell.augmentation, "backbone": cell.backbone,
                                        "cells": [], "seeds": [], "scores": {}, "exposures": {},
                                        "majority": [], "modes": set(), "finetune": None})
            g["cells"].append(sweep_cell["name"])
            g["seeds"].append(sweep_cell["values"].get(SEED, run.seed))
            for level in cell.shown_levels():
                for attr in (*ATTRIBUTES, "mean"):
                    score = cell.levels[level].get(attr)
                    if score is not None:
                        g["scores"].setdefault(level, {}).setdefault(attr, []).append(score)
            for phase, t in (cell.phases or {}).items():
                if t.get("exposures") is not None:
                    g["exposures"].setdefault(phase, []).append(t["exposures"])
                g["modes"].add(f"{phase}:{phase_mode(t)}")
            if cell.finetune is not None:
                g["finetune"] = {"mode": cell.finetune.get("mode", "full"), "lora_rank": cell.finetune.get("lora_rank")}
            if majority is not None:
                g["majority"].append(majority)
    rows = []
    for g in groups.values():
        rows.append({
            "values": g["values"], "augmentation": g["augmentation"], "backbone": g["backbone"],
            "n": len(g["cells"]), "seeds": g["seeds"], "cells": g["cells"],
            "modes": sorted(g["modes"]), "finetune": g["finetune"],
            "levels": {level: {attr: {**interval(v), "values": v} for attr, v in by_attr.items()}
                       for level, by_attr in g["scores"].items()},
            "exposures": {phase: statistics.fmean(v) for phase, v in g["exposures"].items()},
            "majority": statistics.fmean(g["majority"]) if g["majority"] else None,
        })
    return {"sweep_dir": str(sweep_dir), "axes": axes, "group_by": group_keys, "pooled": SEED,
            "interval": "95% Student t over seeds: mean +- t(0.975, n-1) s / sqrt(n); none for n = 1",
            "rows": rows}


def write_summary(sweep_dir: Path, summary: dict[str, Any]) -> Path:
    """Write the sweep's summary.json; one that is not a summary bidirect wrote (a user's file of that name)
    is refused, not overwritten. The caller holds the sweep's lock (`rundir.writing`)."""
    path = sweep_dir / SUMMARY_FILE
    if (path.exists() or path.is_symlink()) and not is_summary(path):
        raise RunDirError(f"{path}: not a summary bidirect wrote; bidirect will not overwrite it. Move it away, then "
                          "run the same command again.")
    write_json_atomic(path, summary)
    return path
