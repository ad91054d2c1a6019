"""Rich console tables of the data and the results, and their Markdown twins for docs."""

from __future__ import annotations

from collections.abc import Iterable
from statistics import mean
from typing import Any

from rich.console import Console
from rich.table import Table

from bidirect.config import ALL_LEVELS, ATTRIBUTES, HELD_OUT_LEVELS, INVERSE_LEVELS, LEVELS

SHORT = {"birth_date": "date", "birth_city": "b.city", "university": "univ", "major": "major",
         "company": "company", "company_city": "c.city"}
LEVEL_NAMES = {"bio_recall": "bio recall", "qa_train": "QA P_train", "qa_test": "QA P_test",
               "inverse_train": "inverse P_train", "inverse_test": "inverse P_test"}


def shown_levels(present: Iterable[str]) -> list[str]:
    """The columns of a comparison: the three levels always, the inverse ones where present."""
    present = set(present)
    return [*LEVELS, *(lv for lv in INVERSE_LEVELS if lv in present)]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def data_summary(console: Console, data, tokenizer) -> None:
    """Counts, one example bio per augmentation and token statistics."""
    n_train = sum(1 for s in data.individuals["split"] if s == "train")
    table = Table(title="bioS data", show_header=True)
    for col in ("augmentation", "individuals", "P_train", "P_test", "bios", "QA train", "QA test",
                "tokens/bio (mean)", "tokens/bio (max)"):
        table.add_column(col, justify="right" if col != "augmentation" else "left")
    for aug in data.bios:
        lengths = [len(ids) for ids in tokenizer(data.bios[aug]["text"][:2000], add_special_tokens=False)["input_ids"]]
        table.add_row(aug, str(len(data.individuals)), str(n_train), str(len(data.individuals) - n_train),
                      str(len(data.bios[aug])), str(len(data.qa_train)), str(len(data.qa_test)),
                      f"{mean(lengths):.1f}", str(max(lengths)))
    console.print(table)
    console.print(f"tokenizer: {len(tokenizer)} tokens (specials {tokenizer.all_special_tokens})")
    for aug in data.bios:
        console.print(f"[bold]{aug}[/bold]: {data.bios[aug][0]['text']}")
    qa = data.qa_train[0]
    console.print(f"[bold]QA[/bold]: {qa['question']} -> {qa['answer']}")


def backbone_label(results: dict[str, Any], aug: str, name: str) -> str:
    """The backbone's name, with ``(LoRA r=8)`` when its fine-tuning was LoRA (full is the default)."""
    phase = results.get("training", {}).get(aug, {}).get(name, {}).get("finetune", {})
    return f"{name} (LoRA r={phase.get('lora_rank')})" if phase.get("mode") == "lora" else name


def results_tables(results: dict[str, Any]) -> list[Table]:
    """One table per augmentation: a row per backbone and level, a column per attribute."""
    tables = []
    baseline = results.get("majority_baseline", {})
    for aug, by_backbone in results["results"].items():
        table = Table(title=f"{results.get('study', '')} | {aug} | exact-match accuracy (%)")
        table.add_column("backbone", no_wrap=True)
        table.add_column("level", no_wrap=True)
        for a in ATTRIBUTES:
            table.add_column(SHORT[a], justify="right")
        table.add_column("mean", justify="right", style="bold")
        for name, levels in by_backbone.items():
            for i, level in enumerate(lv for lv in ALL_LEVELS if lv in levels):
                scores = levels[level]
                style = "bold" if level in HELD_OUT_LEVELS else None
                # a LoRA fine-tune says so on a second line under the name
                label = backbone_label(results, aug, name).replace(" (", "\n(") if i == 0 else ""
                table.add_row(label, LEVEL_NAMES[level], *[pct(scores.get(a)) for a in ATTRIBUTES],
                              pct(scores.get("mean")), style=style)
            table.add_section()
        if baseline:
            table.add_row("majority guess", "P_test", *[pct(baseline.get(a)) for a in ATTRIBUTES],
                          pct(baseline.get("mean")), style="dim")
        tables.append(table)
    return tables


def print_results(console: Console, results: dict[str, Any]) -> None:
    for table in results_tables(results):
        console.print(table)


def markdown(results: dict[str, Any]) -> str:
    """The results tables as Markdown (README, reports)."""
    lines = []
    header = "| augmentation | backbone | level | " + " | ".join(SHORT[a] for a in ATTRIBUTES) + " | mean |"
    lines += [header, "|" + " --- |" * (len(ATTRIBUTES) + 4)]
    for aug, by_backbone in results["results"].items():
        for name, levels in by_backbone.items():
            for level in (lv for lv in ALL_LEVELS if lv in levels):
                s = levels[level]
                cells = " | ".join(pct(s.get(a)) for a in ATTRIBUTES)
                label = backbone_label(results, aug, name)
                lines.append(f"| {aug} | {label} | {LEVEL_NAMES[level]} | {cells} | **{pct(s.get('mean'))}** |")
    base = results.get("majority_baseline")
    if base:
        cells = " | ".join(pct(base.get(a)) for a in ATTRIBUTES)
        lines.append(f"| | majority guess | P_test | {cells} | {pct(base.get('mean'))} |")
    return "\n".join(lines)


def comparison_table(runs: dict[str, dict[str, Any]]) -> Table:
    """Several runs side by side: the mean of each level per (run, augmentation, backbone)."""
    table = Table(title="bidirect summary: mean exact-match accuracy over the six attributes (%)")
    shown = shown_levels(lv for r in runs.values() for by_backbone in r["results"].values()
                         for lvs in by_backbone.values() for lv in lvs)
    for col in ("run", "augmentation", "backbone", *(LEVEL_NAMES[lv] for lv in shown), "majority"):
        table.add_column(col, justify="left" if col in ("run", "augmentation", "backbone") else "right", no_wrap=True)
    for run, results in runs.items():
        base = results.get("majority_baseline", {}).get("mean")
        for aug, by_backbone in results["results"].items():
            for name, levels in by_backbone.items():
                table.add_row(run, aug, backbone_label(results, aug, name),
                              *[pct(levels.get(lv, {}).get("mean")) for lv in shown], pct(base))
    return table
