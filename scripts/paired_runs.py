"""A paired difference between two levels of two runs on the same people: for a backbone trained in one run and
compared with one of another run made from the same data (same config of data and seed: the same data hash).

    python scripts/paired_runs.py runs/cpu_study:gpt2-rope:qa_test runs/cpu_paper_masking:gbert:qa_test_given

Each argument is RUN:BACKBONE:LEVEL (the run's single augmentation, or RUN:BACKBONE:LEVEL:AUGMENTATION). The
difference is the first level's mean minus the second's, with the 95% interval of one bootstrap over the people
both scored (`bidirect.evaluate.paired_difference`, as a run's own table pairs its backbones).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bidirect.evaluate import paired_difference
from bidirect.rundir import read_results


def level(spec: str) -> tuple[dict, str | None]:
    """The level a RUN:BACKBONE:LEVEL[:AUGMENTATION] argument names, and the run's data hash."""
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"{spec}: expected RUN:BACKBONE:LEVEL[:AUGMENTATION]")
    run, backbone, name = Path(parts[0]), parts[1], parts[2]
    results = read_results(run)
    augs = results.by_augmentation()
    aug = parts[3] if len(parts) == 4 else next(iter(augs)) if len(augs) == 1 else None
    if aug not in augs:
        raise SystemExit(f"{spec}: name one of the augmentations {', '.join(augs)}")
    cell = results.cell(aug, backbone)
    if cell is None or name not in cell.levels:
        raise SystemExit(f"{spec}: no {backbone} {name} in {run} (it has {', '.join(c.backbone for c in augs[aug])})")
    return cell.levels[name], results.data_sha256


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    (first, h1), (second, h2) = level(argv[0]), level(argv[1])
    if h1 is None or h1 != h2:
        print(f"the two runs were not made from the same data ({h1} against {h2}): no pairing", file=sys.stderr)
        return 2
    diff = paired_difference(first, second)
    if diff is None:
        print("no person scored by both levels (or results made before per-person tables)", file=sys.stderr)
        return 2
    lo, hi = diff["ci95"]
    print(f"{argv[0]} - {argv[1]}: {100 * diff['difference']:+.1f} points "
          f"(95% CI {100 * lo:+.1f} to {100 * hi:+.1f}, {diff['people']} people)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
