"""The two figures of issue 24's evidence, drawn from committed runs only (docs/evidence.md shows them):

- docs/figures/paper_masking_curve.png: the paper's masking (15% of words) against pretraining steps and FLOPs:
  memorization (name-tied, sentence recall) and P_test by each answer-length rule, beside gbert with 40% of whole
  values (runs/quick, runs/cpu_study) and cpu_study's gpt2-rope;
- docs/figures/gap_vs_scale.png: the causal-masked gap on P_test (gpt2-rope minus gbert, paired over the same
  people) by each answer-length rule, at 300 people (three seeds) and 1,000 people.

    python scripts/evidence_figures.py          # after the runs it reads are committed
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bidirect.results import Run  # noqa: E402
from bidirect.rundir import read_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
# 3,000, 8,000, 24,000 and 72,000 steps; seed 1 drawn hollow beside seed 0 (a run not committed yet is left out)
CURVE = ["quick_paper_masking", "cpu_paper_masking_8k", "cpu_paper_masking", "cpu_paper_masking_72k"]
CURVE_SEED1 = ["quick_paper_masking_seed1", "cpu_paper_masking_8k_seed1", "cpu_paper_masking_seed1"]
VALUES = ["quick", "cpu_study"]  # gbert with 40% of whole values, 3,000 and 8,000 steps (seed 0)
RULES = [("qa_test", "log-probability", "exact"), ("qa_test_prior", "length prior", "exact"),
         ("qa_test", "answer window", "window"), ("qa_test_given", "told the length", "exact")]
# (people, exact-answer runs, window runs), one run per seed
SCALE = [(300, ["cpu_study", "cpu_study_seed1", "cpu_study_seed2"],
          ["cpu_study_window", "cpu_study_window_seed1", "cpu_study_window_seed2"]),
         (1000, ["cpu_study_1000"], ["cpu_study_1000_window"])]


@functools.cache  # each figure reads a run once per level and axis
def committed(run: str) -> Run | None:
    """A committed run's results (None where the run is not committed)."""
    folder = ROOT / "runs" / run
    return read_results(folder) if (folder / "results.json").is_file() else None


def cell(run: str, backbone: str) -> tuple[dict, dict] | None:
    """A committed run's levels and training record of one backbone, in its single augmentation."""
    found = committed(run)
    c = next((c for c in found.cells if c.backbone == backbone), None) if found else None
    return None if c is None else (c.levels, c.phases)


def _point(level: dict | None) -> tuple[float, float, float] | None:
    if level is None:
        return None
    lo, hi = level["ci95"]["mean"]
    return 100 * level["mean"], 100 * lo, 100 * hi


def curve() -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    causal, _ = cell("cpu_study", "gpt2-rope")
    series = {"name-tied": "name_tied", "sentence recall": "sentence_recall", "P_test, log-probability": "qa_test",
              "P_test, length prior": "qa_test_prior", "P_test, told the length": "qa_test_given"}
    for ax, axis in zip(axes, ("steps", "flops"), strict=True):
        for label, level in series.items():
            color = None
            for runs, hollow in ((CURVE, False), (CURVE_SEED1, True)):
                xs, ys, errs = [], [], [[], []]
                for run in runs:
                    found = cell(run, "gbert")
                    point = _point(found[0].get(level)) if found else None
                    if point is None:
                        continue
                    xs.append(found[1]["pretrain"]["steps" if axis == "steps" else "flops"])
                    ys.append(point[0])
                    errs[0].append(point[0] - point[1])
                    errs[1].append(point[2] - point[0])
                if not xs:
                    continue
                drawn = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=color,
                                    ls="none" if hollow else "-", mfc="white" if hollow else None,
                                    label=None if hollow else label)
                color = drawn.lines[0].get_color()
        for label, level, color in (("40% of values: name-tied", "name_tied", "tab:blue"),
                                    ("40% of values: P_test, told the length", "qa_test_given", "tab:purple")):
            runs = [cell(run, "gbert") for run in VALUES]
            xs = [r[1]["pretrain"]["steps" if axis == "steps" else "flops"] for r in runs]
            ax.plot(xs, [100 * r[0][level]["mean"] for r in runs], ls="--", marker="s", color=color, alpha=0.6,
                    label=label)
        ax.axhline(100 * causal["qa_test"]["mean"], color="black", ls=":", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the minor labels ran into each other
        if axis == "steps":  # the steps trained, as ticks
            ax.set_xticks([3000, 8000, 24000, 72000], ["3,000", "8,000", "24,000", "72,000"])
        ax.set_xlabel("gbert pretraining steps" if axis == "steps" else "gbert pretraining FLOPs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% (95% CI over people)")
    axes[0].text(3000, 100 * causal["qa_test"]["mean"] + 1.5, "gpt2-rope P_test (cpu_study)", fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.suptitle("The paper's masking (15% of words), 2 x 128, 300 people: seed 0 (line), seed 1 (hollow)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "paper_masking_curve.png", dpi=120)
    plt.close(fig)
    return OUT / "paper_masking_curve.png"


def gaps() -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, (level, label, answer) in enumerate(RULES):
        xs, ys, lows, highs, fitted = [], [], [], [], []
        for people, exact, window in SCALE:
            for seed, run in enumerate(window if answer == "window" else exact):
                found = committed(run)
                # the run's own paired difference (results.json's `paired`), as its table prints it
                pairs = [(aug, d) for aug, ds in ((found.paired or {}) if found else {}).items() for d in ds
                         if (d["first"], d["second"], d["levels"]) == ("gpt2-rope", "gbert", ["qa_test", level])]
                if not pairs:
                    continue
                aug, diff = pairs[0]
                masked = found.cell(aug, "gbert").levels
                xs.append(people * (1 + 0.03 * (k - 1.5)) * (1 + 0.01 * seed))
                ys.append(100 * diff["difference"])
                lows.append(100 * (diff["difference"] - diff["ci95"][0]))
                highs.append(100 * (diff["ci95"][1] - diff["difference"]))
                fitted.append(masked[level.replace("qa_test", "qa_train")]["mean"] >= 0.8)
        line = ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", ls="none", capsize=3, label=label)
        color = line[0].get_color()
        for x, y, fit in zip(xs, ys, fitted, strict=True):  # hollow: fine-tuning did not fit P_train
            ax.plot([x], [y], marker="o", color=color, markerfacecolor=color if fit else "white", zorder=3)
    ax.axhline(0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_xticks([300, 1000], ["300 people\n(3 seeds)", "1,000 people\n(1 seed)"])
    ax.minorticks_off()
    ax.set_ylabel("gpt2-rope minus gbert, P_test (points)\npaired 95% CI over the same people")
    ax.set_title("The causal-masked gap when both are memorized (2 x 128)\nhollow: the rule's P_train below 80%",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "gap_vs_scale.png", dpi=120)
    plt.close(fig)
    return OUT / "gap_vs_scale.png"


if __name__ == "__main__":
    for path in (curve(), gaps()):
        print(f"wrote {path.relative_to(ROOT)}")
