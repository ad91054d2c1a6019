"""`bidirect report DIR`: a self-contained Markdown report of a run or sweep folder, with PNG figures.

Written to ``DIR/report.md`` (or ``--out FILE.md``) and, next to it, ``report/`` (``FILE``'s stem)
holding the figures the Markdown links to by relative path, so the two can be committed or
copied together. Figures are drawn with matplotlib's Agg canvas (no display, no pyplot state):

- accuracy: per augmentation, one panel per backbone, the three levels as grouped bars per
  attribute and for the mean, the majority guess as a dashed line over each group; for a sweep
  the bars are the means over seeds with their 95% interval as error bars;
- loss: every phase's training loss from its ``log.jsonl``;
- for a sweep: the three levels, QA P_test first, against each numeric swept value (and against
  pretraining exposures when they vary), 95% interval as error bars; with only seeds swept, each
  backbone's QA P_test per seed and its interval side by side.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from bidirect import ownership, rundir
from bidirect.protocol import HELD_OUT_LEVELS, INVERSE_LEVELS, LEVELS
from bidirect.report.tables import LEVEL_NAMES, SHORT, markdown, md, pct, summary_markdown, with_interval
from bidirect.results import ATTRIBUTES, Run, interval, phase_mode
from bidirect.rundir import CAPACITY_FILE, MANIFEST_FILE, REPORT_FILE, SWEEP_FILE, RunDirError, RunFolder, read_results
from bidirect.sweep import SEED, SweepCell, aggregate, is_sweep_dir, read_cells, read_manifest, value_label

LEVEL_COLORS = {"bio_recall": "#c6dbef", "name_tied": "#6baed6", "sentence_recall": "#9ecae1",
                "name_and_values": "#dadaeb", "values_only": "#fdd0a2",
                "qa_train": "#4292c6", "qa_val": "#2171b5",
                "qa_test": "#08306b",
                "inverse_train": "#fdae6b", "inverse_val": "#e6550d", "inverse_test": "#a63603"}
OTHER_LEVEL = "#969696"  # a level added to the protocol draws before it has a colour of its own
PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
LINESTYLES = ["-", "--", ":", "-."]
DPI = 110
LEVELS_NOTE = ("Bio recall: did it memorize the biographies (context-rich: the rest of the bio may give a value "
               "away); name-tied: the same after swapping in another person's name, so only the name tells the "
               "value; QA P_train: did it learn the QA format; QA P_val: held-out people for tuning; QA P_test: "
               "is the knowledge extractable for people whose QA it never saw (the headline); *: a masked model "
               "told the answer's length (the paper's rule). Majority: the accuracy of always answering P_train's "
               "most common value (of the answer's length, for *).")


# --------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    # format: the temporary name's suffix (.tmp) says nothing of it
    return ownership.save_figure(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))


def accuracy_figure(title: str, panels: dict[str, dict[str, dict[str, float]]], baseline: dict[str, float],
                    path: Path, errors: dict[str, dict[str, dict[str, float]]] | None = None) -> Path:
    """One panel per backbone: per attribute (and the mean) a bar per level, in percent; where a
    backbone has inverse search, its levels (full name from attributes) as a last group.

    ``panels[backbone][level][attr]`` is a score in [0, 1]; ``errors`` the same shape, the 95%
    half-width, drawn as error bars."""
    groups = [*ATTRIBUTES, "mean"]
    labels = [SHORT[a] for a in ATTRIBUTES] + ["mean of 6"]
    inverse = any(lv in levels for levels in panels.values() for lv in INVERSE_LEVELS)
    if inverse:
        labels.append("inverse\n(full name)")
    n = len(panels)
    fig = Figure(figsize=(10, 2.3 * n + 1.0), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    shown = [lv for lv in LEVELS if any(lv in levels for levels in panels.values())]
    shown_inverse = [lv for lv in INVERSE_LEVELS if any(lv in levels for levels in panels.values())]
    width = 0.78 / len(shown)
    for ax, (backbone, levels) in zip(axes, panels.items()):
        for j, level in enumerate(shown):
            scores = levels.get(level, {})
            xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(groups))]
            # null: no item (sentence recall of a value no sentence names its person before)
            ys = [100 * v if (v := scores.get(a)) is not None else float("nan") for a in groups]
            err, up = None, [0.0] * len(ys)
            half = (errors or {}).get(backbone, {}).get(level, {})
            if any(h is not None for h in half.values()):  # the interval, clipped to what an accuracy can be
                e = [100 * half[a] if half.get(a) is not None else 0.0 for a in groups]
                up = [min(h, max(100 - y, 0.0)) if y == y else 0.0 for h, y in zip(e, ys)]
                err = [[min(h, y) if y == y else 0.0 for h, y in zip(e, ys)], up]
            ax.bar(xs, ys, width, color=LEVEL_COLORS.get(level, OTHER_LEVEL), label=LEVEL_NAMES[level], yerr=err,
                   error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "#444444"})
            if level == "qa_test":  # the headline: its value over its bar (and over the majority line)
                for x, y, u, a in zip(xs, ys, up, groups):
                    if y == y:  # not NaN
                        floor = 100 * baseline[a] if baseline.get(a) is not None else 0.0
                        ax.text(x, max(y + u, floor) + 1.5, f"{y:.0f}", ha="center", va="bottom", fontsize=7,
                                color=LEVEL_COLORS.get(level, OTHER_LEVEL))
        for j, level in enumerate(shown_inverse):
            x = len(groups) + (j - (len(shown_inverse) - 1) / 2) * width
            stat = levels.get(level, {}).get("mean")
            half = (errors or {}).get(backbone, {}).get(level, {}).get("mean")
            if stat is None:
                continue
            y = 100 * stat
            err = None if half is None else [[min(100 * half, y)], [min(100 * half, 100 - y)]]
            ax.bar([x], [y], width, color=LEVEL_COLORS.get(level, OTHER_LEVEL), label=LEVEL_NAMES[level],
                   yerr=err, error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "#444444"})
            if level == "inverse_test":
                ax.text(x, y + 1.5, f"{y:.0f}", ha="center", va="bottom", fontsize=7,
                        color=LEVEL_COLORS.get(level, OTHER_LEVEL))
        for i, a in enumerate(groups):
            if baseline.get(a) is not None:
                ax.hlines(100 * baseline[a], i - 0.4, i + 0.4, colors="black", linestyles="--",
                          linewidth=1.2, label="majority guess" if i == 0 else None)
        ax.set_ylim(0, 112)
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_ylabel("exact match (%)")
        ax.set_title(backbone, loc="left", fontsize=10)
        ax.axvline(len(ATTRIBUTES) - 0.5, color="#bbbbbb", linewidth=0.8)
        if inverse:
            ax.axvline(len(groups) - 0.5, color="#bbbbbb", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(labels)))
    axes[-1].set_xticklabels(labels)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def read_log(path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    if path.is_file():
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():  # a damaged line is skipped
            try:
                row = json.loads(line)
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
            except (ValueError, KeyError, TypeError):
                continue
    return steps, losses


def loss_figure(title: str, curves: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per phase; ``curves``: {phase, label, color_key, style_key, steps, losses}."""
    phases = list(dict.fromkeys(c["phase"] for c in curves if c["steps"]))
    if not phases:
        return None
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(dict.fromkeys(c["color_key"] for c in curves))}
    styles = {k: LINESTYLES[i % len(LINESTYLES)] for i, k in enumerate(dict.fromkeys(c["style_key"] for c in curves))}
    fig = Figure(figsize=(5.2 * len(phases) + 2.6, 3.6))
    axes = fig.subplots(1, len(phases), squeeze=False)[0]
    seen: set[str] = set()
    for ax, phase in zip(axes, phases):
        for c in (c for c in curves if c["phase"] == phase and c["steps"]):
            label = None if c["label"] in seen else c["label"]
            seen.add(c["label"])
            ax.plot(c["steps"], c["losses"], color=colors[c["color_key"]], linestyle=styles[c["style_key"]],
                    linewidth=1.3, alpha=c.get("alpha", 1.0), label=label, marker="." if len(c["steps"]) < 8 else None)
        losses = [x for c in curves if c["phase"] == phase for x in c["losses"] if x > 0]
        if losses and max(losses) / min(losses) > 4:  # log only where the loss falls by a factor
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss per labelled token")
        ax.set_title(phase, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    handles, names = [], []
    for ax in axes:
        h, n = ax.get_legend_handles_labels()
        handles += h
        names += n
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def trend_figure(title: str, xlabel: str, series: list[dict[str, Any]], path: Path, log_x: bool = False,
                 baseline: float | None = None, exact_ticks: bool = True) -> Path:
    """The three levels against a numeric value, QA P_test (the headline) first: one panel per level,
    one line per series ``{label, xs, levels}`` (``levels[k]`` a summary row's levels at ``xs[k]``),
    the mean over seeds with its 95% interval as error bars. Inverse P_test gets a fourth panel where
    any series has it."""
    panels = ["qa_test", "qa_train", "bio_recall"]
    if any("inverse_test" in lv for s in series for lv in s["levels"]):
        panels.append("inverse_test")
    fig = Figure(figsize=(4.2 * len(panels), 3.9), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True)
    ticks = sorted({x for s in series for x in s["xs"]})
    for ax, level in zip(axes, panels):
        for i, s in enumerate(series):
            points = sorted((x, lv.get(level, {}).get("mean")) for x, lv in zip(s["xs"], s["levels"]))
            points = [(x, st) for x, st in points if st is not None]
            if not points:
                continue
            xs = [x for x, _ in points]
            ys = [100 * st["mean"] for _, st in points]
            half = [100 * (st["ci95"] or 0.0) for _, st in points]
            yerr = [[min(h, y) for h, y in zip(half, ys)], [min(h, max(100 - y, 0.0)) for h, y in zip(half, ys)]]
            ax.errorbar(xs, ys, yerr=yerr, color=PALETTE[i % len(PALETTE)],
                        linestyle=LINESTYLES[(i // len(PALETTE)) % 4], marker="o", markersize=4, capsize=3,
                        linewidth=1.4, label=s["label"])
        if baseline is not None and level == "qa_test":
            ax.axhline(100 * baseline, color="black", linestyle="--", linewidth=1.0, label="majority guess (mean)")
        if log_x:
            ax.set_xscale("log")
        if exact_ticks and len(ticks) <= 8:  # the swept values themselves, written plainly (no 2x10^2)
            ax.set_xticks(ticks, [f"{x:.4g}" for x in ticks])
            ax.minorticks_off()
        else:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.4g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
        ax.set_ylim(-3, 104)  # a line at 0% stays visible above the axis
        ax.grid(alpha=0.3)
        ax.set_title(LEVEL_NAMES[level] + (" (held out)" if level == "qa_test" else ""), fontsize=10,
                     fontweight="bold" if level in HELD_OUT_LEVELS else "normal")
    axes[0].set_ylabel("exact match, mean of 6 (%)")
    axes[len(axes) // 2].set_xlabel(xlabel)  # one label under the middle panel
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def seeds_figure(title: str, rows: list[dict[str, Any]], path: Path, baseline: float | None = None) -> Path:
    """Per row (augmentation, backbone, other values): every seed's QA P_test as a dot, the mean and
    its 95% interval as a bar; for sweeps over seeds only."""
    fig = Figure(figsize=(max(4.5, 1.25 * len(rows) + 2.0), 4.0))
    ax = fig.subplots()
    for i, row in enumerate(rows):
        stat = row["stat"]
        values = stat.get("values", [])
        jitter = [(k - (len(values) - 1) / 2) * 0.05 for k in range(len(values))]
        ax.scatter([i - 0.2 + j for j in jitter], [100 * v for v in values], s=14, color="#888888", zorder=2,
                   label="one seed" if i == 0 else None)
        half, m = 100 * (stat.get("ci95") or 0.0), 100 * stat["mean"]
        ax.errorbar([i + 0.1], [m], yerr=[[min(half, m)], [min(half, max(100 - m, 0.0))]], fmt="s", color="#08306b",
                    capsize=5, markersize=6, zorder=3, label="mean ± 95% CI" if i == 0 else None)
    if baseline is not None:
        ax.axhline(100 * baseline, color="black", linestyle="--", linewidth=1.0, label="majority guess (mean)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row["label"] for row in rows], fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("QA P_test, mean of 6 (%)")
    top = ax.get_ylim()[1]
    ax.set_ylim(-0.04 * top, 1.04 * top)  # seeds at 0% stay visible above the axis
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def capacity_figure(title: str, series: list[dict[str, Any]], path: Path, max_bits: float | None = None) -> Path:
    """Bits stored against parameters, log-log: one line per series ``{label, params, bits}``, the bits
    the data holds as a ceiling and the paper's 2 bits per parameter as a reference."""
    fig = Figure(figsize=(6.8, 4.4), layout="constrained")
    ax = fig.subplots()
    for i, s in enumerate(series):
        points = sorted(zip(s["params"], s["bits"]))
        ax.plot([p for p, _ in points], [b for _, b in points], color=PALETTE[i % len(PALETTE)], marker="o",
                markersize=4, linewidth=1.4, label=s["label"])
    params = [p for s in series for p in s["params"]]
    low, high = min(params) / 1.3, max(params) * 1.3
    ax.plot([low, high], [2 * low, 2 * high], color="#888888", linestyle=":", linewidth=1.0,
            label="2 bits per parameter (the paper)")
    if max_bits is not None:
        ax.axhline(max_bits, color="black", linestyle="--", linewidth=1.0, label="bits the data holds")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    plain = FuncFormatter(lambda x, _: f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}k" if x >= 1e3 else f"{x:.3g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.set_xticks(sorted(set(params)), minor=True)
    ax.set_xlabel("parameters (total; minor ticks at the cells)")
    ax.set_ylabel("bits stored")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- markdown pieces


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+-." else "_" for ch in text)


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def training_markdown(results: Run) -> str:
    lines = ["| augmentation | backbone | phase | mode | trainable params | steps | labelled tokens | training FLOPs | "
             "final loss | exposures | seconds |", "| --- | --- | --- | --- |" + " ---: |" * 7]
    for cell in results.cells:
        for phase, t in (cell.phases or {}).items():
            mode = phase_mode(t)
            exp = "-" if t.get("exposures") is None else f"{t['exposures']:.1f}"
            trainable = t.get("trainable_parameters")
            flops = "-" if not t.get("flops") else f"{t['flops']:.2e}"  # runs of older versions did not count
            lines.append(f"| {md(cell.augmentation)} | {md(cell.backbone)} | {phase} | {mode} | "
                         f"{'-' if trainable is None else f'{trainable:,}'} | {t.get('steps', '-')} | "
                         f"{t.get('tokens', 0):,} | {flops} | {t.get('final_loss', float('nan')):.3f} | {exp} | "
                         f"{t.get('seconds', 0.0):.1f} |")
    return "\n".join(lines)


def _leaks(results: list[Run]) -> str:
    checks = [c.leak_check for r in results for c in r.cells if c.leak_check is not None]
    if not checks:
        return "no leak check recorded"
    leaked = sum(c.get("leaked", 0) for c in checks)
    docs = sum(c.get("qa_documents_checked", 0) for c in checks)
    return (f"{leaked} P_test QA documents found in the training streams ({docs:,} QA documents decoded and "
            f"checked, {len(checks)} trained model{'s' if len(checks) != 1 else ''})")


def _loss_curves(run_dir: Path, results: Run, prefix: str = "", alpha: float = 1.0,
                 label_extra: str = "") -> list[dict[str, Any]]:
    curves = []
    for cell in results.cells:
        aug, backbone = cell.augmentation, cell.backbone
        for phase in cell.phases or {}:
            steps, losses = read_log(RunFolder(run_dir).log(aug, backbone, phase))
            curves.append({"phase": phase, "label": f"{label_extra}{backbone} / {aug}", "color_key": backbone,
                           "style_key": f"{label_extra}{aug}", "steps": steps, "losses": losses, "alpha": alpha})
    return curves


LOSS_FIGURE = "loss.png"


def _undrawable_loss(curves: list[dict[str, Any]]) -> set[str]:
    """The loss figure's name when no curve has a logged step (a committed run keeps no logs): an earlier report's
    figure then stays, since it cannot be drawn again."""
    return set() if any(c["steps"] for c in curves) else {LOSS_FIGURE}


def _loss_lines(title: str, curves: list[dict[str, Any]], fig_dir: Path, base: Path) -> list[str]:
    """The report's lines for the loss figure: drawn from ``curves``, or, where they hold no logged step, the one an
    earlier report drew from logs this folder no longer holds (kept by `ownership.clear_report`)."""
    path = fig_dir / LOSS_FIGURE
    if loss_figure(title, curves, path) is not None:
        return [f"![training loss]({_rel(path, base)})", ""]
    if path.is_file():
        return [f"![training loss]({_rel(path, base)})", "",
                "(Drawn by an earlier report from the training logs, which this folder no longer holds.)", ""]
    return []


def _config_block(text: str) -> str:
    return "```yaml\n" + text.strip() + "\n```"


# --------------------------------------------------------------------------- reports


def run_report(run_dir: Path, out: Path) -> str:
    results = read_results(run_dir)
    curves = _loss_curves(run_dir, results)
    # the figures of its earlier report, which this one may not redraw; a loss figure it cannot draw (no logs) stays
    fig_dir = ownership.clear_report(out, keep=_undrawable_loss(curves))
    base = out.parent
    cfg = results.config or {}
    data = cfg.get("data", {})
    study = results.study if results.study is not None else ""
    lines = [f"# bidirect report: {md(results.study if results.study is not None else run_dir.name)}", ""]
    lines += [f"Run folder `{run_dir}`; protocol `{results.protocol}`, seed {results.seed}, "
              f"{data.get('individuals', '?')} individuals (P_train share {data.get('p_train', '?')}), "
              f"wall time {results.wall_seconds or 0:.0f} s.", ""]
    params = {c.backbone: c.parameters for c in results.cells if c.parameters is not None}
    if params:
        lines += ["| backbone | parameters | non-embedding | fine-tuning |", "| --- | ---: | ---: | --- |"]
        for name, counts in params.items():
            modes = {phase_mode(t) for c in results.cells if c.backbone == name
                     for p, t in (c.phases or {}).items() if p != "pretrain"}
            lines.append(f"| {md(name)} | {counts['total']:,} | {counts['non_embedding']:,} | "
                         f"{', '.join(sorted(modes)) or '-'} |")
        lines.append("")
    lines += ["## Exact-match accuracy (%)", "",
              LEVELS_NOTE, "",
              markdown(results), ""]
    baseline = results.majority
    for aug, cells in results.by_augmentation().items():
        by_backbone = {c.backbone: c.levels for c in cells}
        # error bars: the per-person bootstrap interval, drawn as its half-width
        errors = {b: {lv: {k: (ci[1] - ci[0]) / 2 for k, ci in (r.get("ci95") or {}).items() if ci}
                      for lv, r in levels.items()} for b, levels in by_backbone.items()}
        path = accuracy_figure(f"{study} | {aug}: exact match per attribute, 95% CI over people",
                               by_backbone, baseline, fig_dir / f"accuracy_{_slug(aug)}.png", errors)
        lines += [f"![accuracy, {md(aug)}]({_rel(path, base)})", ""]
    lines += ["## Training", "", training_markdown(results), ""]
    lines += _loss_lines(f"{study}: training loss", curves, fig_dir, base)
    lines += [f"Leak check: {_leaks([results])}.", "", "## Config", "",
              _config_block(RunFolder(run_dir).config.read_text() if RunFolder(run_dir).config.is_file()
                            else yaml.safe_dump(cfg, sort_keys=False)), ""]
    return "\n".join(lines)


def compute_figure(title: str, points: list[dict[str, Any]], path: Path) -> Path:
    """Held-out accuracy against training cost: a panel per cost (training FLOPs, labelled tokens), a colour
    per point ``{label, flops, tokens, levels: {level: (mean, low, high)}}``; QA P_test filled, inverse P_test
    hollow, each with its 95% interval."""
    costs = [("flops", "training FLOPs (every phase)"), ("tokens", "labelled tokens (every phase)")]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (cost, xlabel) in zip(axes, costs):
        for i, point in enumerate(points):
            color = PALETTE[i % len(PALETTE)]
            for level, fill in (("qa_test", True), ("inverse_test", False)):
                if level not in point["levels"]:
                    continue
                mean, low, high = (100 * v if v is not None else None for v in point["levels"][level])
                yerr = None if low is None else [[mean - low], [high - mean]]
                ax.errorbar([point[cost]], [mean], yerr=yerr, color=color, marker="o", markersize=7, capsize=3,
                            markerfacecolor=color if fill else "white", linestyle="none",
                            label=point["label"] if level == "qa_test" else None)
        xs = [p[cost] for p in points]
        ax.set_xscale("log")
        low, high = min(xs) / 1.3, max(xs) * 1.3
        ax.set_xlim(low, high)
        # 1, 1.5, 2, 3, 5 and 7 times each power of ten in view: a cost axis often spans less than a decade
        ticks = [m * 10.0**e for e in range(int(math.floor(math.log10(low))), int(math.log10(high)) + 1)
                 for m in (1, 1.5, 2, 3, 5, 7) if low <= m * 10.0**e <= high]
        ax.set_xticks(ticks, [f"{t:.2g}".replace("e+0", "e").replace("e+", "e") for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylim(-3, 104)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("held-out exact match (%)")
    handles, names = axes[0].get_legend_handles_labels()
    for fill, name in ((True, LEVEL_NAMES["qa_test"]), (False, LEVEL_NAMES["inverse_test"] + " (full name)")):
        handles.append(Line2D([], [], color="#444444", marker="o", linestyle="none",
                              markerfacecolor="#444444" if fill else "white"))
        names.append(name)
    fig.legend(handles, names, loc="outside right center", frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _compute_section(rows: list[dict[str, Any]], cells: list[SweepCell], keys: list[str], fig_dir: Path,
                     base: Path) -> list[str]:
    """Where cells record training FLOPs: each row's held-out accuracy beside its training cost (means over its
    cells), as a table and a figure, so that objectives are compared at equal cost. A row of one seed shows
    its per-person bootstrap interval, of several the interval over seeds."""
    by_name = {c.name: c.run for c in cells}
    # The swept values name a point, after the backbone and augmentation where the rows differ in them.
    varying = [k for k in ("backbone", "augmentation") if len({r[k] for r in rows}) > 1]
    points, table = [], []
    for row in rows:
        found = [by_name[name].cell(row["augmentation"], row["backbone"]) for name in row["cells"] if name in by_name]
        phases = [(c.phases if c is not None else None) or {} for c in found]
        if not phases or not all(p and all(ph.get("flops") for ph in p.values()) for p in phases):
            continue
        flops = sum(sum(ph["flops"] for ph in p.values()) for p in phases) / len(phases)
        tokens = sum(sum(ph["tokens"] for ph in p.values()) for p in phases) / len(phases)
        levels = {}
        for level in ("qa_test", "inverse_test"):
            stat = row["levels"].get(level, {}).get("mean")
            if stat is None:
                continue
            low, high = stat.get("low"), stat.get("high")
            if row["n"] == 1:  # one seed: the cell's own per-person interval
                cell = by_name[row["cells"][0]].cell(row["augmentation"], row["backbone"]).levels[level]
                low, high = interval(cell)
            levels[level] = (stat["mean"], low, high)
        label = " / ".join([row[k] for k in varying] + [value_label(row["values"][k]) for k in keys]) or \
            _row_label(row, keys)
        points.append({"label": label, "flops": flops, "tokens": tokens, "levels": levels})
        tied = row["levels"].get("name_tied", {}).get("mean", {}).get("mean")
        table.append(f"| {md(label)} | {flops:.3g} | {tokens:,.0f} | {pct(tied)} | "
                     f"{with_interval(*levels.get('qa_test', (None,)))} | "
                     f"{with_interval(*levels.get('inverse_test', (None,)))} |")
    if not points:
        return []
    path = compute_figure("held-out accuracy against training compute", points, fig_dir / "compute.png")
    return ["## Held-out accuracy against compute", "",
            "Training FLOPs (token positions computed, padding included, times the backbone's FLOPs per token, "
            "pretraining and fine-tuning) and labelled tokens (those with a loss) of each row, beside name-tied "
            "memorization and held-out accuracy (mean of six attributes; inverse search: the full name).", "",
            "| row | training FLOPs | labelled tokens | name-tied | QA P_test | inverse P_test |",
            "| --- | ---: | ---: | ---: | ---: | ---: |", *table, "",
            f"![held-out accuracy against compute]({_rel(path, base)})", ""]


def _numeric_axes(axes: dict[str, list]) -> list[str]:
    return [k for k, vs in axes.items() if k != SEED and len(vs) > 1
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)]


def _row_label(row: dict[str, Any], keys: Iterable[str]) -> str:
    extra = ", ".join(f"{k}={value_label(row['values'][k])}" for k in keys)
    return f"{row['backbone']} / {row['augmentation']}" + (f" ({extra})" if extra else "")


def _read_capacity(sweep_dir: Path, cells: list[SweepCell]) -> tuple[dict[str, Any], list[str], set[float]]:
    """The cells' capacity.json files (`bidirect capacity`), read before the report writes anything: the series of
    the figure, the table's rows and the ceilings; a damaged file is a `RunDirError` naming it."""
    series: dict[str, dict[str, Any]] = {}
    rows, ceilings = [], set()
    for cell in cells:
        path = sweep_dir / cell.name / CAPACITY_FILE
        if not path.is_file():
            continue
        try:  # every number first, so a damaged file stops with its name rather than a KeyError from deep inside
            found = [(f"{backbone} / {aug}", c["parameters"]["total"], c["parameters"]["non_embedding"],
                      float(c["bits"]), float(c["max_bits"]), c["bits_per_parameter"],
                      c["bits_per_non_embedding_parameter"])
                     for backbone, by_aug in json.loads(path.read_text()).get("results", {}).items()
                     for aug, c in by_aug.items()]
            rows += [f"| {md(cell.name)} | {md(label)} | {total:,} ({non_embedding:,}) | {bits:,.0f} | "
                     f"{100 * bits / max_bits:.1f}% | {per:.3f} ({per_non:.3f}) |"
                     for label, total, non_embedding, bits, max_bits, per, per_non in found]
        except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError, OSError) as err:
            raise RunDirError(f"{path}: not a capacity file bidirect wrote ({type(err).__name__}: {str(err)[:80]}); "
                              f"move it away (the report leaves that cell out), or write it again with "
                              f"`bidirect capacity {sweep_dir / cell.name}`") from None
        for label, total, _, bits, max_bits, _, _ in found:
            s = series.setdefault(label, {"label": label, "params": [], "bits": []})
            s["params"].append(total)
            s["bits"].append(bits)
            ceilings.add(round(max_bits, 1))
    return series, rows, ceilings


def _capacity_section(capacity: tuple[dict[str, Any], list[str], set[float]], fig_dir: Path,
                      base: Path) -> list[str]:
    """Where cells have a capacity.json (`_read_capacity`): bits stored against parameters."""
    series, rows, ceilings = capacity
    if not rows:
        return []
    path = capacity_figure("knowledge capacity: bits stored against model size", list(series.values()),
                           fig_dir / "capacity.png", max_bits=ceilings.pop() if len(ceilings) == 1 else None)
    return ["## Knowledge capacity", "",
            "From each cell's `capacity.json` (`bidirect capacity CELL`): bits of the generator's draws the model "
            "stores (first biography of each person), the share of what the data holds, and per parameter "
            "(total, and without embeddings).", "",
            "| cell | backbone / augmentation | parameters (non-embedding) | bits stored | of the data | "
            "bits per parameter (non-embedding) |", "| --- | --- | ---: | ---: | ---: | ---: |", *rows, "",
            f"![bits stored against parameters]({_rel(path, base)})", ""]


def sweep_report(sweep_dir: Path, out: Path) -> str:
    summary = aggregate(sweep_dir)  # summary.json's numbers, presented (`bidirect summary` writes the file)
    axes, cells = read_cells(sweep_dir)
    capacity = _read_capacity(sweep_dir, cells)  # a damaged file stops the report before it writes anything
    curves = []
    for cell in cells:
        other = ",".join(f"{k}={value_label(cell.values[k])}" for k in summary["group_by"])
        curves += _loss_curves(sweep_dir / cell.name, cell.run, alpha=0.75, label_extra=f"{other} " if other else "")
    # the figures of its earlier report, which this one may not redraw; a loss figure it cannot draw (no logs) stays
    fig_dir = ownership.clear_report(out, keep=_undrawable_loss(curves))
    base = out.parent
    rows, keys = summary["rows"], summary["group_by"]
    first = cells[0].run
    majority = [r["majority"] for r in rows if r["majority"] is not None]
    mean_majority = sum(majority) / len(majority) if majority else None
    manifest = sweep_dir / MANIFEST_FILE
    planned = len(read_manifest(manifest, "put back a good copy")["cells"]) if manifest.is_file() else len(cells)
    lines = [f"# bidirect sweep report: {md(first.study if first.study is not None else sweep_dir.name)}", ""]
    lines += [f"Sweep folder `{sweep_dir}`: {len(cells)} of {planned} cells have results. Swept: "
              + "; ".join(f"`{k}` in {', '.join(md(value_label(v)) for v in vs)}" for k, vs in axes.items()) + ".", "",
              f"Pooled over `{SEED}`: each number is the mean over seeds and, with two seeds or more, its 95% "
              "confidence interval `± t(0.975, n-1) s / sqrt(n)` (Student t, s the standard deviation over "
              "seeds); one seed shows no interval. Every number is in `summary.json`.", ""]
    lines += ["## Mean exact-match accuracy over the six attributes (%)", "", LEVELS_NOTE, "",
              summary_markdown(summary), ""]

    # Per attribute: per (other values, augmentation), bars of the means, 95% intervals as error bars
    by_panel: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = json.dumps([row["values"], row["augmentation"]], sort_keys=True)
        panel = by_panel.setdefault(key, {"values": row["values"], "aug": row["augmentation"], "means": {},
                                          "errs": {}, "majority": []})
        panel["means"][row["backbone"]] = {lv: {a: s["mean"] for a, s in d.items()} for lv, d in row["levels"].items()}
        panel["errs"][row["backbone"]] = {lv: {a: s["ci95"] for a, s in d.items()} for lv, d in row["levels"].items()}
    lines += ["## Per attribute", ""]
    baseline_attrs = first.majority
    one_seed = all(r["n"] == 1 for r in rows)
    for i, panel in enumerate(by_panel.values()):
        other = ", ".join(f"{k}={value_label(panel['values'][k])}" for k in keys)
        title = f"{panel['aug']}{' | ' + other if other else ''}: " + (
            "one seed" if one_seed else "mean over seeds, 95% CI")
        path = accuracy_figure(title, panel["means"], baseline_attrs,
                               fig_dir / f"accuracy_{i:02d}_{_slug(panel['aug'] + ('_' + other if other else ''))}.png",
                               errors=panel["errs"])
        lines += [f"![{md(title)}]({_rel(path, base)})", ""]

    # Against the swept values: the levels against each numeric one, or the seeds side by side
    lines += ["## Against the swept values", ""]
    numeric = _numeric_axes(axes)
    for axis in numeric:
        others = [k for k in keys if k != axis]
        series: dict[str, dict[str, Any]] = {}
        for row in rows:
            label = _row_label(row, others)
            s = series.setdefault(label, {"label": label, "xs": [], "levels": []})
            s["xs"].append(row["values"][axis])
            s["levels"].append(row["levels"])
        values = sorted(axes[axis])
        log_x = min(values) > 0 and max(values) / min(values) >= 8
        path = trend_figure(f"against {axis}: mean over seeds, 95% CI", axis, list(series.values()),
                            fig_dir / f"levels_vs_{_slug(axis)}.png", log_x=log_x, baseline=mean_majority)
        lines += [f"![the three levels against {axis}]({_rel(path, base)})", ""]
    exposures = {round(r["exposures"]["pretrain"], 3) for r in rows if r["exposures"].get("pretrain") is not None}
    if len(exposures) > 1:
        series = {}
        for row in rows:
            if row["exposures"].get("pretrain") is None:
                continue
            label = _row_label(row, [k for k in keys if k not in numeric])
            s = series.setdefault(label, {"label": label, "xs": [], "levels": []})
            s["xs"].append(row["exposures"]["pretrain"])
            s["levels"].append(row["levels"])
        path = trend_figure("against pretraining exposures (causal backbones): mean over seeds, 95% CI",
                            "pretraining exposures (labelled tokens seen / labelled tokens in the bios)",
                            list(series.values()), fig_dir / "levels_vs_exposures.png",
                            log_x=max(exposures) / max(min(exposures), 1e-9) >= 8, baseline=mean_majority,
                            exact_ticks=False)
        lines += [f"![the three levels against exposures]({_rel(path, base)})", ""]
    if not numeric:
        # One line each for the backbone, the augmentation and every other value (the last part of
        # its dotted name), so that several swept values fit under a tick.
        points = [{"label": "\n".join([r["backbone"], r["augmentation"],
                                       *(f"{k.rsplit('.', 1)[-1]}={value_label(r['values'][k])}" for k in keys)]),
                   "stat": r["levels"]["qa_test"]["mean"]} for r in rows if "qa_test" in r["levels"]]
        path = seeds_figure("QA P_test per seed, mean and 95% CI", points, fig_dir / "qa_test_seeds.png",
                            baseline=mean_majority)
        lines += [f"![QA P_test per seed]({_rel(path, base)})", ""]

    lines += _compute_section(rows, cells, keys, fig_dir, base)
    lines += _capacity_section(capacity, fig_dir, base)

    lines += ["## Training", "", "Every cell's loss; the seeds of one setting share a colour and line style.", ""]
    lines += _loss_lines("training loss of every cell", curves, fig_dir, base)
    lines += [f"Leak check over every cell: {_leaks([c.run for c in cells])}.", ""]

    lines += ["## Every cell", ""]
    for cell in cells:
        res = cell.run
        lines += ["<details>", f"<summary>{md(cell.name)}</summary>", "", markdown(res), "",
                  training_markdown(res), "", "</details>", ""]
    sweep_file = sweep_dir / SWEEP_FILE
    lines += ["## Sweep file", "", _config_block(sweep_file.read_text() if sweep_file.is_file()
                                                  else yaml.safe_dump(first.config or {}, sort_keys=False)), ""]
    return "\n".join(lines)


def write_report(directory: Path, out: Path | None = None) -> Path:
    """Write the report of a run folder or a sweep folder; returns the Markdown file."""
    if not directory.is_dir():
        raise RunDirError(f"{directory}: no such folder")
    out = out or directory / REPORT_FILE
    if out.suffix != ".md":  # `.` and `/` have no name to take a suffix from: they are folders
        where = f" (its figures go to {out.with_suffix('')}/)" if out.name else f", e.g. {out / REPORT_FILE}"
        raise RunDirError(f"--out {out}: expected a .md file{where}")
    sweep = is_sweep_dir(directory)
    if not sweep:
        read_results(directory)  # a folder without results says so before anything else
    # A report inside a folder writes into it: under the folder's lock, where it has one (a folder of a version
    # before the marker has none; what the report replaces is proved its own by `check_report_target` either way).
    inside = directory.resolve() in out.resolve().parents
    locked = inside and rundir.marker_kind(directory) is not None
    with ownership.writing(directory, "sweep" if sweep else "run") if locked else contextlib.nullcontext():
        ownership.check_report_target(out)  # a report and figures of someone else's are never overwritten
        out.parent.mkdir(parents=True, exist_ok=True)
        text = sweep_report(directory, out) if sweep else run_report(directory, out)
        rundir.write_text_atomic(out, text)
        ownership.record_report(out, sorted(out.with_suffix("").glob("*.png")))
    return out

