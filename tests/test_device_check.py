"""The GPU device check (scripts/device_check.sh) rehearsed on the CPU at tiny sizes: the script is run
only in the rare sessions lent a GPU, so the suite keeps it working in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_dry_run_writes_every_file(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), str(out), "400", "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.log", "nvidia-smi.txt", "run", "study.log",
                                                      "study.tgz", "versions.txt"]
    assert len([p for p in out.iterdir() if p.is_file()]) <= 8  # what a device call can bring back
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["backbones"]) == {"gpt2-rope", "gbert"} and bench["config"]["size_name"] == "tiny"
    assert "bidirect run exit code 0" in (out / "study.log").read_text()
    with tarfile.open(out / "study.tgz") as tar:
        names = tar.getnames()
        results = json.load(tar.extractfile("run/results.json"))
    assert not any(n.endswith(".safetensors") for n in names)  # the weights stay behind
    assert {aug: sorted(cells) for aug, cells in results["results"].items()} == {
        "multi2+permute+fullname": ["gbert", "gpt2-rope"]}


def test_device_check_refuses_an_unknown_mode(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), str(tmp_path), "10", "--fast"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr and not any(tmp_path.iterdir())
