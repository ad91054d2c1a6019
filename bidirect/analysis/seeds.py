"""Seeds pooled: the mean and 95% Student-t interval over the seeds of a sweep, per (other swept values,
augmentation, backbone), for every level and attribute. The statistics only: `bidirect.sweep` reads the
cells of a sweep folder, pools them here and writes summary.json.

The interval is mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation over the n seeds; one seed
gives no interval.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from typing import Any

from bidirect.results import ATTRIBUTES, Run, phase_mode

SEED = "seed"  # the axis pooled by `pool`
INTERVAL = "95% Student t over seeds: mean +- t(0.975, n-1) s / sqrt(n); none for n = 1"


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


# --------------------------------------------------------------------------- pooling


def pool(cells: Iterable[tuple[str, dict[str, Any], Run]], group_keys: list[str]) -> list[dict[str, Any]]:
    """Pool the seeds of a sweep's finished cells, each (name, swept values, results): one row per (values of
    ``group_keys``, augmentation, backbone), every level and attribute as its `interval` over the row's cells."""
    groups: dict[str, dict[str, Any]] = {}
    for name, cell_values, run in cells:
        values = {k: cell_values.get(k) for k in group_keys}
        majority = run.majority.get("mean")
        for cell in run.cells:
            key = json.dumps([values, cell.augmentation, cell.backbone], sort_keys=True)
            g = groups.setdefault(key, {"values": values, "augmentation": cell.augmentation, "backbone": cell.backbone,
                                        "cells": [], "seeds": [], "scores": {}, "exposures": {},
                                        "majority": [], "modes": set(), "finetune": None})
            g["cells"].append(name)
            g["seeds"].append(cell_values.get(SEED, run.seed))
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
    return rows
