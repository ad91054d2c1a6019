"""What `--workers` buys on this machine: wall time of two 4-cell grids and of the default study, with one worker and
with two. A benchmark, not a test: it prints its figures and writes them to runs/bench/workers_cpu.json. Run it
on an idle machine (nothing else heavy beside it: the figures are wall times).

    python scripts/bench_workers.py               # all three below (about 40 min)
    python scripts/bench_workers.py --only grid   # --only load, --only study

The grid is configs/example_report.yaml's study over seed [0, 1] x pretrain.steps [100, 300] (cells of seconds);
the load grid four cells of the load curve (configs/load_curve.yaml: seeds 0-1 of its 100-people points at 2 x 32
and 2 x 64, cells of minutes); the default study is `bidirect run` without a config. The grid is run as one process
on every core (torch's default threads), as one worker on one thread, and as two workers of one thread each; the
load grid and the study the first way and the last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(argv: list[str], threads: int | None) -> float:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bidirect", *argv], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return round(time.perf_counter() - started, 1)


WAYS = {"one process, every core": ([], None), "one worker, one thread": ([], 1),
        "two workers, one thread each": (["--workers", "2"], None)}


def measure(name: str, command: list[str], work: Path, ways: list[str]) -> dict:
    """``command`` (with ``--out`` appended) run each of ``ways`` (WAYS)."""
    figures = {}
    for way in ways:
        extra, threads = WAYS[way]
        out = work / f"{name}-{len(figures)}"
        seconds = timed([*command, "--out", str(out), *extra], threads)
        shutil.rmtree(out)
        figures[way] = seconds
        print(f"{name}: {way}: {seconds:.0f} s", flush=True)
    base = figures["one process, every core"]
    return {"command": "bidirect " + " ".join(command), "wall_seconds": figures,
            "speed_up_over_one_process": {k: round(base / v, 2) for k, v in figures.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["grid", "study", "load"])
    parser.add_argument("--out", default=str(ROOT / "runs/bench/workers_cpu.json"))
    args = parser.parse_args()
    report = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
              "note": "wall times on an otherwise idle machine; one worker = one `bidirect` process"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "grid"):
            study = yaml.safe_load((ROOT / "configs/example_report.yaml").read_text())
            study["sweep"] = {"seed": [0, 1], "pretrain.steps": [100, 300]}
            grid = work / "grid.yaml"
            grid.write_text(yaml.safe_dump(study, sort_keys=False))
            report["grid"] = {**measure("grid", ["sweep", str(grid)], work, list(WAYS)), "cells": 4,
                              "study": "configs/example_report.yaml, sweep seed [0, 1] x pretrain.steps [100, 300]"}
        if args.only in (None, "load"):
            sweep = yaml.safe_load((ROOT / "configs/load_curve.yaml").read_text())
            keep = ("people100_w32", "people100_w64")
            sweep["sweep"] = {"seed": [0, 1], "point": {k: sweep["sweep"]["point"][k] for k in keep}}
            grid = work / "load.yaml"
            grid.write_text(yaml.safe_dump(sweep, sort_keys=False))
            ways = ["one process, every core", "two workers, one thread each"]
            report["load"] = {**measure("load", ["sweep", str(grid)], work, ways), "cells": 4,
                              "study": "configs/load_curve.yaml, seed [0, 1] x point [people100_w32, people100_w64]"}
        if args.only in (None, "study"):
            # one worker on one thread is left out here: it adds half an hour and the grid measures it
            ways = ["one process, every core", "two workers, one thread each"]
            report["study"] = {**measure("study", ["run"], work, ways), "study": "the default (configs/quick.yaml)"}
    out = Path(args.out)
    if out.is_file():  # a part measured alone (--only) joins what an earlier run measured
        report = {**json.loads(out.read_text()), **report}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
