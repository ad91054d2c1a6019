"""Several workers on one machine: `bidirect sweep --workers N` starts N plain `bidirect sweep` processes on the
same folder, `bidirect run --workers N` N `bidirect train-cells` processes that train a run's cells side by side;
their output is relayed, each line led by its worker's number.

A worker is an ordinary process, so whatever places processes places workers: this module on one machine, a
cluster's array jobs (one `bidirect sweep` per task over a shared folder, docs/sweeps_and_reports.md). The
workers of a sweep divide its cells among themselves through the folders' locks (`sweep._claim`); a run's
are dealt theirs (`study.train_in_workers`). Nothing here knows what a cell is.

Each worker gets one torch thread on a CPU (``OMP_NUM_THREADS=1`` unless the environment sets it: a committed run
is reproduced bit for bit at the thread count its results.json records) and one GPU where there are GPUs
(``CUDA_VISIBLE_DEVICES``, round robin over the visible ones).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

WORKER_ENV = "BIDIRECT_WORKER"  # set in a worker: its number, for the lines it prints


def worker_env(index: int, gpus: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``index`` (0-based): its thread count and its GPU (``gpus``: the visible ones)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", "1")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    env[WORKER_ENV] = str(index + 1)
    env["PYTHONUNBUFFERED"] = "1"  # its lines arrive as it prints them, not when a pipe's buffer fills
    return env


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none on a CPU machine)."""
    import torch

    if not torch.cuda.is_available():
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named:
        return [g.strip() for g in named.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def launch(argvs: list[list[str]], console: Any = None) -> int:
    """Run ``bidirect *argv`` for each of ``argvs`` at once, a worker each, and wait for all of them, relaying each
    line as ``[wK] line``. Returns 0 if every worker succeeded, else the first failure's exit code. The workers
    share this process's group, so Ctrl-C at the terminal reaches each of them (each stops as one `bidirect sweep`
    does, keeping what it saved); they are waited for, not killed."""
    gpus = visible_gpus()
    procs = [subprocess.Popen([sys.executable, "-m", "bidirect", *argv], env=worker_env(i, gpus),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
             for i, argv in enumerate(argvs)]
    lock = threading.Lock()

    def relay(k: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if not line.strip():
                continue
            with lock:
                if console is None:
                    print(f"[w{k}] {line.rstrip()}", flush=True)
                else:
                    console.print(f"[w{k}] {line.rstrip()}", markup=False, highlight=False)

    threads = [threading.Thread(target=relay, args=(k, p), daemon=True) for k, p in enumerate(procs, 1)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    finally:  # after Ctrl-C too: each worker saves what it can, and its last lines are relayed
        for p in procs:
            p.wait()
        for t in threads:
            t.join()
    return next((c for c in codes if c != 0), 0)
