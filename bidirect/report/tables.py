"""Rich console tables of the data and the results, and their Markdown twins for docs."""

from __future__ import annotations

import html
import re
from pathlib import Path
from statistics import mean
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bidirect.protocol import ALL_LEVELS, HELD_OUT_LEVELS, RULES, TOLD, in_order, level_name
from bidirect.results import ATTRIBUTES, Run, interval
from bidirect.results import BASELINES as BASELINE_KEYS
from bidirect.sweep import value_label

SHORT = {"birth_date": "date", "birth_city": "b.city", "university": "univ", "major": "major",
         "company": "comp.", "company_city": "c.city"}
LEVEL_NAMES = {lv: level_name(lv) for lv in ALL_LEVELS}
# On a terminal's 80 columns each rule is a mark after the level's name (the caption says which).
SHORT_NAMES = {lv: level_name(lv, short=True) for lv in ALL_LEVELS}
# The baselines and the level they go with; * marks what is told the answer's length in tokens.
BASELINES = dict(zip(BASELINE_KEYS, (("majority", "P_test"), ("majority", f"P_test{RULES[TOLD].mark}")), strict=True))
GIVEN_NOTE = f"{RULES[TOLD].mark}: {RULES[TOLD].legend}"


def note(results: Run) -> str:
    """What the marked rows mean, and which rule a masked model's plain QA rows used (from the run's
    config; older runs chose by ``free``)."""
    rule = results.masked_length
    marks = ", ".join(f"{r.mark}: {r.legend}" for r in RULES.values() if r.name != TOLD)
    return (f"{GIVEN_NOTE}; a masked model's QA rows choose the answer's length by {RULES[rule].words}; {marks}; "
            "len: the share of its answers of the true length")


def pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def ci(level: dict[str, Any], key: str = "mean") -> str:
    """A level's 95% interval as ``lo-hi`` in percent; "-" for results made before intervals."""
    low, high = interval(level, key)
    return "-" if low is None else _span(low, high)


def _span(low: float, high: float) -> str:
    return f"{100 * low:.0f}-{100 * high:.0f}"


def with_interval(mean: float | None, low: float | None = None, high: float | None = None, bold: bool = False) -> str:
    """An accuracy and its 95% interval in percent, as every table writes them: ``41.2 (38-44)``; ``41.2`` without
    an interval, ``-`` without a number. ``bold``: Markdown emphasis on the number."""
    text = f"**{pct(mean)}**" if bold else pct(mean)
    return text if low is None else f"{text} ({_span(low, high)})"


def data_summary(console: Console, data, tokenizer) -> None:
    """Counts, one example bio per augmentation and token statistics."""
    splits = list(data.individuals["split"])
    table = Table(title="bioS data", show_header=True)
    for col in ("augmentation", "individuals", "P_train", "P_val", "P_test", "bios", "QA train", "QA test",
                "tokens/bio (mean)", "tokens/bio (max)"):
        table.add_column(col, justify="right" if col != "augmentation" else "left")
    for aug in data.bios:
        lengths = [len(ids) for ids in tokenizer(data.bios[aug]["text"][:2000], add_special_tokens=False)["input_ids"]]
        table.add_row(aug, str(len(splits)), *(str(splits.count(s)) for s in ("train", "val", "test")),
                      str(len(data.bios[aug])), str(len(data.qa_train)), str(len(data.qa_test)),
                      f"{mean(lengths):.1f}", str(max(lengths)))
    console.print(table)
    console.print(f"tokenizer: {len(tokenizer)} tokens (specials {tokenizer.all_special_tokens})")
    for aug in data.bios:
        console.print(f"[bold]{aug}[/bold]: {data.bios[aug][0]['text']}")
    qa = data.qa_train[0]
    console.print(f"[bold]QA[/bold]: {qa['question']} -> {qa['answer']}")


def backbone_label(name: str, finetune: dict[str, Any] | None) -> str:
    """The backbone's name, with ``(LoRA r=4)`` when its fine-tuning phase (``finetune``, its summary) was LoRA."""
    return f"{name} (LoRA r={finetune['lora_rank']})" if finetune and finetune.get("mode") == "lora" else name


def plain(text: str) -> Text:
    """``text`` (a study's name, a path: the user's words) as printed, not read as rich markup, its control
    characters (an ANSI colour code) shown escaped rather than sent to the terminal."""
    return Text(re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text))


def plain_lines(*parts: str) -> Text:
    """``parts`` (names from a run's files) each `plain`, one a line."""
    return Text("\n").join(plain(part) for part in parts)


def md(text: Any) -> str:
    """A name from a run's files (a backbone, an augmentation, a study, a swept value) as Markdown text: HTML
    escaped, so that a received results.json cannot put a <script> or an <img onerror> into a rendered report;
    ``|`` escaped, so that it stays in its table cell; control characters shown escaped, as `plain` shows them."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], str(text))
    return html.escape(text, quote=False).replace("|", "\\|")


def results_tables(run: Run) -> list[Table]:
    """One table per augmentation: a row per backbone and level, a column per attribute."""
    tables = []
    for aug, cells in run.by_augmentation().items():
        # No vertical rules and one space between columns: the table fits 80 columns.
        table = Table(title=plain(f"{run.study if run.study is not None else ''} | {aug} | exact match (%), 95% CI "
                                  "over people"),
                      caption=escape(note(run)), box=box.SIMPLE_HEAD, padding=0, show_edge=False)
        lengths = any("true_length" in lv for c in cells for lv in c.levels.values())
        table.add_column("backbone", no_wrap=True)
        table.add_column("level", no_wrap=True)
        for a in ATTRIBUTES:
            table.add_column(SHORT[a], justify="right", no_wrap=True)
        table.add_column("mean", justify="right", style="bold", no_wrap=True)
        table.add_column("95% CI", justify="right", no_wrap=True)
        if lengths:
            table.add_column("len", justify="right", no_wrap=True)
        for cell in cells:
            for i, level in enumerate(cell.shown_levels()):
                scores = cell.levels[level]
                style = "bold" if level in HELD_OUT_LEVELS else None
                # a LoRA fine-tune says so on a second line under the name
                lora = backbone_label("", cell.finetune).strip()
                label = plain_lines(cell.backbone, *([lora] if lora else [])) if i == 0 else ""
                length = [pct(scores["true_length"]) if "true_length" in scores else ""] if lengths else []
                table.add_row(label, SHORT_NAMES[level], *[pct(scores.get(a)) for a in ATTRIBUTES],
                              pct(scores.get("mean")), ci(scores), *length, style=style)
            table.add_section()
        for key, (label, level) in BASELINES.items():
            baseline = run.baselines.get(key)
            if baseline:
                table.add_row(label, level, *[pct(baseline.get(a)) for a in ATTRIBUTES],
                              pct(baseline.get("mean")), "", *([""] if lengths else []), style="dim")
        tables.append(table)
    return tables


def paired_lines(results: Run) -> list[str]:
    """Per augmentation and pair of backbones, their differences on the same people with the paired 95% interval
    (results.json's ``paired``), one line a pair."""
    lines = []
    for aug, records in (results.paired or {}).items():
        pairs: dict[tuple[str, str], list[str]] = {}
        for r in records:
            a, b = r["levels"]
            name = LEVEL_NAMES[a] if a == b else f"{LEVEL_NAMES[a]} - {LEVEL_NAMES[b]}"
            low, high = (100 * x for x in r["ci95"])
            pairs.setdefault((r["first"], r["second"]), []).append(
                f"{name} {100 * r['difference']:+.1f} ({low:+.0f} to {high:+.0f})")
        for (first, second), cells in pairs.items():
            lines.append(f"{aug}: {first} - {second}, paired over the same people: " + "; ".join(cells))
    return lines


def print_results(console: Console, results: Run) -> None:
    for table in results_tables(results):
        console.print(table)
    for line in paired_lines(results):
        console.print(plain(line))


def markdown(run: Run) -> str:
    """The results tables as Markdown (README, reports)."""
    lines = []
    header = "| augmentation | backbone | level | " + " | ".join(SHORT[a] for a in ATTRIBUTES) + " | mean | 95% CI |"
    lines += [header, "|" + " --- |" * (len(ATTRIBUTES) + 5)]
    for cell in run.cells:
        for level in cell.shown_levels():
            s = cell.levels[level]
            cells = " | ".join(pct(s.get(a)) for a in ATTRIBUTES)
            label = md(backbone_label(cell.backbone, cell.finetune))
            lines.append(f"| {md(cell.augmentation)} | {label} | {LEVEL_NAMES[level]} | {cells} | "
                         f"**{pct(s.get('mean'))}** | {ci(s)} |")
    for key, (label, level) in BASELINES.items():
        base = run.baselines.get(key)
        if base:
            cells = " | ".join(pct(base.get(a)) for a in ATTRIBUTES)
            lines.append(f"| | {label} | {level} | {cells} | {pct(base.get('mean'))} | |")
    lines.append(f"\n{note(run)}")
    lines += [f"\n{md(line)}" for line in paired_lines(run)]
    return "\n".join(lines)


def level_cell(level: dict[str, Any] | None, name: str, bold: bool = False) -> str:
    """A level's mean over the six attributes, with its interval over people where it is held out
    (P_val, P_test): a held-out accuracy is never shown without it. ``bold``: Markdown emphasis on
    the held-out levels that are the result (P_test)."""
    if level is None:
        return "-"
    bounds = interval(level) if name in HELD_OUT_LEVELS or name in ("qa_val", "inverse_val") else (None, None)
    return with_interval(level.get("mean"), *bounds, bold=name in HELD_OUT_LEVELS and bold)


def headline_markdown(run: Run) -> str:
    """One row per (augmentation, backbone): each level's mean over the six attributes, P_test with its
    interval over people, and the majority baselines; the table the README and docs lead with."""
    shown = in_order(run.levels_present())
    lines = ["| augmentation | backbone | " + " | ".join(LEVEL_NAMES[lv] for lv in shown) + " |",
             "| --- | --- |" + " ---: |" * len(shown)]
    for cell in run.cells:
        cells = [level_cell(cell.levels.get(lv), lv, bold=True) for lv in shown]
        lines.append(f"| {md(cell.augmentation)} | {md(backbone_label(cell.backbone, cell.finetune))} | "
                     + " | ".join(cells) + " |")
    base = {level: pct(run.baselines[key]["mean"]) for key, (_, level) in BASELINES.items() if run.baselines.get(key)}
    cells = [base.get("P_test*" if lv == "qa_test_given" else "P_test", "") if lv in ("qa_test", "qa_test_given")
             else "" for lv in shown]
    lines.append("| | majority | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_markdown(runs: dict[str, Run]) -> str:
    """Several runs as one Markdown table, a row per (run, augmentation, backbone): each level's mean,
    the held-out levels with their interval over people, and both majority baselines (plain / told the
    length). What `bidirect summary --markdown` prints: the README's table of what changes extraction."""
    shown = in_order(lv for r in runs.values() for lv in r.levels_present())
    lines = ["| study | augmentation | backbone | " + " | ".join(LEVEL_NAMES[lv] for lv in shown) + " | majority |",
             "| --- | --- | --- |" + " ---: |" * (len(shown) + 1)]
    for name, run in runs.items():
        base = " / ".join(pct(run.baselines[key]["mean"]) for key in BASELINES if run.baselines.get(key))
        for cell in run.cells:
            cells = [level_cell(cell.levels.get(lv), lv, bold=True) for lv in shown]
            label = md(backbone_label(cell.backbone, cell.finetune))
            lines.append(f"| {md(Path(name).name)} | {md(cell.augmentation)} | {label} | " + " | ".join(cells)
                         + f" | {base} |")
    return "\n".join(lines)


def comparison_tables(runs: dict[str, Run], width: int = 80) -> list[Table]:
    """Several runs side by side, a column per (run, augmentation, backbone) and a row per level (its
    mean over the six attributes; held-out levels and P_val with their interval over people), split
    into as many tables as it takes to fit ``width`` columns without cutting a number."""
    shown = in_order(lv for r in runs.values() for lv in r.levels_present())
    cells = []
    for name, run in runs.items():
        base = {lv: pct(run.baselines[key]["mean"]) for key, (_, lv) in BASELINES.items() if run.baselines.get(key)}
        for cell in run.cells:
            values = [level_cell(cell.levels.get(lv), lv) for lv in shown]
            values += [base.get("P_test", "-"), base.get("P_test*", "-")]
            cells.append((plain_lines(Path(name).name, cell.augmentation, backbone_label(cell.backbone, cell.finetune)),
                          values))
    labels = [SHORT_NAMES[lv] for lv in shown] + ["majority", "majority*"]
    per_table = max(1, (width - 16) // 15)  # a level column of ~15 characters, ~15 for each cell
    tables = []
    for start in range(0, len(cells), per_table):
        part = cells[start:start + per_table]
        table = Table(title="bidirect summary: mean exact match over the six attributes (%), 95% CI over people"
                      if start == 0 else None, box=box.SIMPLE_HEAD, padding=(0, 1))
        table.add_column("level", no_wrap=True)
        for header, _ in part:
            table.add_column(header, justify="right", overflow="fold", min_width=12)
        for k, label in enumerate(labels):
            table.add_row(label, *[values[k] for _, values in part])
        tables.append(table)
    tables[-1].caption = GIVEN_NOTE
    return tables


# --------------------------------------------------------------------------- a sweep's summary


def fmt_ci(stat: dict[str, Any] | None, seeds: int | None = None) -> str:
    """``41.2 ± 3.1`` in percent; ``41.2`` with one seed; ``-`` when missing. ``seeds``: the row's count; a level
    measured in fewer of its cells says so (``41.2 (1 of 2 seeds)``), or it read as the row's pool."""
    if not stat:
        return "-"
    text = f"{100 * stat['mean']:.1f}" if stat.get("ci95") is None else \
        f"{100 * stat['mean']:.1f} ± {100 * stat['ci95']:.1f}"
    n = stat.get("n")
    return f"{text} ({n} of {seeds} seeds)" if seeds is not None and isinstance(n, int) and n < seeds else text


def _levels_shown(summary: dict[str, Any]) -> list[str]:
    return in_order(lv for row in summary["rows"] for lv in row["levels"])


def summary_table(summary: dict[str, Any]):
    """One row per (backbone, augmentation, other swept values); fits an 80-column terminal
    (100 with the inverse levels)."""
    from rich.table import Table

    levels_shown = _levels_shown(summary)
    table = Table(title=plain(f"sweep {summary['sweep_dir']}: mean of the six attributes (%), mean ± 95% CI over "
                              f"{summary['pooled']}s"), caption=f"majority guess: {_majority_range(summary)}")
    table.add_column("backbone / augmentation" + "".join(f" / {k}" for k in summary["group_by"]), ratio=1,
                     overflow="fold")
    table.add_column("seeds", justify="right", no_wrap=True)
    for level in levels_shown:
        table.add_column(SHORT_NAMES[level], justify="right", no_wrap=True,
                         style="bold" if level in HELD_OUT_LEVELS else None)
    for row in summary["rows"]:
        levels = row["levels"]
        name = [f"{backbone_label(row['backbone'], row.get('finetune'))} / {row['augmentation']}"]
        if summary["group_by"]:
            name.append(", ".join(f"{k}={value_label(row['values'][k])}" for k in summary["group_by"]))
        table.add_row(plain_lines(*name), str(row["n"]),
                      *[fmt_ci(levels.get(lv, {}).get("mean"), row["n"]) for lv in levels_shown],
                      end_section=bool(summary["group_by"]))
    return table


def _majority_range(summary: dict[str, Any]) -> str:
    values = [r["majority"] for r in summary["rows"] if r["majority"] is not None]
    if not values:
        return "-"
    low, high = 100 * min(values), 100 * max(values)
    return f"{low:.1f}%" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}% to {high:.1f}% (the split differs per seed)"


def summary_markdown(summary: dict[str, Any]) -> str:
    keys, levels_shown = summary["group_by"], _levels_shown(summary)
    head = [*keys, "augmentation", "backbone", "seeds", *(LEVEL_NAMES[lv] for lv in levels_shown), "majority"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + " --- |" * len(keys) + " --- | --- |" + " ---: |" * (len(levels_shown) + 2)]
    for row in summary["rows"]:
        levels = row["levels"]
        scores = [fmt_ci(levels.get(lv, {}).get("mean"), row["n"]) for lv in levels_shown]
        scores = [f"**{x}**" if lv in HELD_OUT_LEVELS else x for lv, x in zip(levels_shown, scores)]
        backbone = md(backbone_label(row["backbone"], row.get("finetune")))
        cells = [*[md(value_label(row["values"][k])) for k in keys], md(row["augmentation"]), backbone, str(row["n"]),
                 *scores,
                 "-" if row["majority"] is None else f"{100 * row['majority']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
