"""Write runs/INDEX.md: which committed runs make which finding (runs/findings.yaml), each with its config, seeds,
people, model size and headline, read from the run's own files.

    python scripts/index_runs.py            # writes runs/INDEX.md
    python scripts/index_runs.py --check    # exit 1 where runs/INDEX.md is not what it would write

tests/test_results.py runs the check and holds every folder of runs/ to one finding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bidirect.config import BACKBONE_KINDS  # noqa: E402
from bidirect.protocol import TOLD  # noqa: E402
from bidirect.results import Run, interval  # noqa: E402

RUNS = ROOT / "runs"
INDEX = RUNS / "INDEX.md"
FINDINGS = RUNS / "findings.yaml"


def _pct(scores: dict | None, with_interval: bool = True) -> str:
    if not scores or scores.get("mean") is None:
        return "-"
    low, high = interval(scores)
    span = f" ({100 * low:.0f}-{100 * high:.0f})" if with_interval and low is not None else ""
    return f"{100 * scores['mean']:.1f}{span}"


def _run_row(run: Run) -> list[str]:
    cfg = run.config or {}
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    told_level = "qa_test" if run.masked_length == TOLD else f"qa_test_{TOLD}"
    augmentations = {c.augmentation for c in run.cells}
    heads = []
    for c in run.cells:
        label = c.backbone if len(augmentations) == 1 else f"{c.backbone} ({c.augmentation})"
        parts = [f"P_test {_pct(c.levels.get('qa_test'))}"]
        if BACKBONE_KINDS.get(c.backbone) == "masked" and told_level in c.levels and told_level != "qa_test":
            parts.append(f"told {_pct(c.levels[told_level])}")
        parts.append(f"name-tied {_pct(c.levels.get('name_tied'), False)}")
        heads.append(f"{label}: {', '.join(parts)}")
    size = f"{model.get('layers', '?')} x {model.get('width', '?')}" if model else "-"
    return [str(run.seed if run.seed is not None else "-"), f"{data.get('individuals', '-'):,}"
            if isinstance(data.get("individuals"), int) else "-", size, "; ".join(heads)]


def _sweep_row(folder: Path) -> list[str]:
    summary = json.loads((folder / "summary.json").read_text())
    axes = summary.get("axes") or {}
    cells = json.loads((folder / "sweep.json").read_text()).get("cells", [])
    seeds = ", ".join(map(str, axes["seed"])) if "seed" in axes else "-"
    swept = ", ".join(f"{k} ({len(v)})" for k, v in axes.items() if k != "seed")
    return [seeds, "per cell", "per cell", f"a sweep of {len(cells)} cells over {swept or 'seeds'}: summary.json"]


def row(name: str) -> list[str]:
    folder = RUNS / name
    config = ROOT / "configs" / f"{name}.yaml"
    link = f"[{name}]({name}/)"
    cfg = f"[configs/{name}.yaml](../configs/{name}.yaml)" if config.is_file() else "-"
    if (folder / "results.json").is_file():
        return [link, cfg, *_run_row(Run.from_json(json.loads((folder / "results.json").read_text())))]
    if (folder / "summary.json").is_file():
        return [link, cfg, *_sweep_row(folder)]
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".json")
    return [link, cfg, "-", "-", "-", f"{len(files)} measurement files"]


def index_text() -> str:
    findings = yaml.safe_load(FINDINGS.read_text())
    lines = ["# Committed runs by finding", "",
             "Written by `python scripts/index_runs.py` from [findings.yaml](findings.yaml) and each run's own "
             "files; do not edit by hand. P_test: held-out extraction, mean of the six attributes (%), 95% interval "
             "over people; told: a masked model told the answer's length; name-tied: memorization read on the "
             "pretrained model. A sweep's figures are in its summary.json and report.", ""]
    for f in findings:
        lines += [f"## {f['finding']}", "", f"Told in [{f['where']}](../{f['where']}).", "",
                  "| run | config | seed | people | model | headline |", "| --- | --- | --- | ---: | --- | --- |"]
        lines += ["| " + " | ".join(row(name)) + " |" for name in f["runs"]]
        lines.append("")
    return "\n".join(lines)


def listed() -> list[str]:
    """Every run folder findings.yaml names, in its order."""
    return [name for f in yaml.safe_load(FINDINGS.read_text()) for name in f["runs"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 where runs/INDEX.md is out of date")
    args = parser.parse_args()
    text = index_text()
    if args.check:
        if not INDEX.is_file() or INDEX.read_text() != text:
            print(f"{INDEX}: out of date; run python scripts/index_runs.py", file=sys.stderr)
            return 1
        return 0
    INDEX.write_text(text)
    print(f"wrote {INDEX.relative_to(ROOT)} ({len(listed())} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
