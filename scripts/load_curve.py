"""The load curve (issue 31): the memorized causal-masked gap against what a model must store, people per
non-embedding parameter, from committed runs only.

Each point is one run folder (a seed): cpu_study's 300 people and cpu_study_1000's 1,000 at 2 x 128, and the cells of
runs/load_curve (100 people at 2 x 128, 2 x 64, 2 x 32; 300 people at 2 x 64, 2 x 32). Per point it reads, from the
run's results.json: the load (individuals / non-embedding parameters), each kind's memorization levels, P_test by
each answer-length rule, and the paired gap (gpt2-rope minus gbert over the same people) by each rule. Writes
runs/load_curve.json (every figure, per seed and pooled: mean and t interval over seeds),
docs/figures/load_curve.png, and prints the Markdown table docs/evidence.md holds.

    python scripts/load_curve.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bidirect.analysis.seeds import interval  # noqa: E402
from bidirect.results import Run  # noqa: E402
from bidirect.rundir import read_results, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures" / "load_curve.png"
TABLE = ROOT / "runs" / "load_curve.json"  # beside the sweep folder, not in it: bidirect did not write it
# (point, runs, one per seed); a run not committed yet is left out
POINTS = [
    ("100 people, 2 x 128", [f"load_curve/seed={s},point=people100_w128" for s in (0, 1)]),
    ("100 people, 2 x 64", [f"load_curve/seed={s},point=people100_w64" for s in (0, 1)]),
    ("300 people, 2 x 128", ["cpu_study", "cpu_study_seed1", "cpu_study_seed2"]),
    ("100 people, 2 x 32", [f"load_curve/seed={s},point=people100_w32" for s in (0, 1)]),
    ("1,000 people, 2 x 128", ["cpu_study_1000", "cpu_study_1000_seed1"]),
    ("300 people, 2 x 64", [f"load_curve/seed={s},point=people300_w64" for s in (0, 1)]),
    ("300 people, 2 x 32", [f"load_curve/seed={s},point=people300_w32" for s in (0, 1)]),
]
RULES = [("qa_test", "log-probability"), ("qa_test_prior", "length prior"), ("qa_test_given", "told the length")]
MEMORY = ["name_tied", "sentence_recall", "name_and_values", "values_only"]
# The runs follow the recipe stated before them (configs/load_curve.yaml); a point where either kind ties less
# than this share of values to the name did not memorize under it: drawn hollow, left out of the curve's line.
MEMORIZED = 0.5


def _read(run: str) -> Run | None:
    folder = ROOT / "runs" / run
    return read_results(folder) if (folder / "results.json").is_file() else None


def point(run: str) -> dict | None:
    found = _read(run)
    if found is None:
        return None
    (aug,) = {c.augmentation for c in found.cells}
    causal, masked = found.cell(aug, "gpt2-rope"), found.cell(aug, "gbert")
    if causal is None or masked is None:
        return None
    people = (found.config or {})["data"]["individuals"]
    params = causal.parameters["non_embedding"]
    gaps = {}
    for d in (found.paired or {}).get(aug, []):
        if (d["first"], d["second"]) == ("gpt2-rope", "gbert"):
            first, second = d["levels"]
            key = second if first == "qa_test" else first
            gaps[key] = {"difference": d["difference"], "ci95": d["ci95"]}
    levels = {kind: {lv: cell.levels[lv]["mean"] for lv in (*MEMORY, "qa_train", "qa_test", "qa_test_prior",
                                                            "qa_test_given") if lv in cell.levels}
              for kind, cell in (("gpt2-rope", causal), ("gbert", masked))}
    memorized = all(levels[k].get("name_tied", 0) >= MEMORIZED for k in levels)
    width = (found.config or {})["model"]["width"]
    return {"run": run, "seed": found.seed, "people": people, "width": width, "non_embedding_parameters": params,
            "load": people / params, "levels": levels, "paired_gap": gaps, "memorized": memorized,
            "wall_seconds": found.wall_seconds}


def pooled(values: list[float]) -> dict:
    """Mean over seeds with its 95% t interval (`bidirect.analysis.seeds.interval`; none for one seed)."""
    found = interval(values)
    return {"mean": found["mean"], "n": found["n"],
            **({"ci95": [found["low"], found["high"]]} if found["low"] is not None else {})}


def collect() -> list[dict]:
    rows = []
    for name, runs in POINTS:
        seeds = [p for p in (point(r) for r in runs) if p is not None]
        if not seeds:
            continue
        gap = {rule: pooled([s["paired_gap"][rule]["difference"] for s in seeds if rule in s["paired_gap"]])
               for rule, _ in RULES if any(rule in s["paired_gap"] for s in seeds)}
        memory = {k: {lv: pooled([s["levels"][k][lv] for s in seeds if lv in s["levels"][k]])
                      for lv in MEMORY if any(lv in s["levels"][k] for s in seeds)} for k in ("gpt2-rope", "gbert")}
        rows.append({"point": name, "load": seeds[0]["load"], "people": seeds[0]["people"], "width": seeds[0]["width"],
                     "seeds": seeds, "gap": gap, "memory": memory,
                     "memorized": all(s["memorized"] for s in seeds)})
    return sorted(rows, key=lambda r: r["load"])


ROUTES = [("more people at 2 x 128", lambda r: r["width"] == 128, "-"),
          ("narrower at 300 people", lambda r: r["people"] == 300, "--"),
          ("narrower at 100 people", lambda r: r["people"] == 100, ":")]


def figure(rows: list[dict]) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7.8), sharex=True, height_ratios=[3, 2])
    for k, (rule, label) in enumerate(RULES):
        color = f"C{k}"
        for row in rows:
            for s in row["seeds"]:
                if rule not in s["paired_gap"]:
                    continue
                d = s["paired_gap"][rule]
                x = row["load"] * (1 + 0.04 * (k - 1)) * (1 + 0.015 * s["seed"])
                y = 100 * d["difference"]
                top.errorbar([x], [y], yerr=[[y - 100 * d["ci95"][0]], [100 * d["ci95"][1] - y]], color=color,
                             marker="o", capsize=2, markerfacecolor=color if row["memorized"] else "white", ls="none",
                             label=label if row is rows[0] and s is row["seeds"][0] else None)
        for _, on, style in ROUTES:  # each route's memorized points, mean over seeds
            means = sorted((r["load"], 100 * r["gap"][rule]["mean"]) for r in rows
                           if rule in r["gap"] and r["memorized"] and on(r))
            if len(means) > 1:
                top.plot(*zip(*means, strict=True), color=color, lw=1.2, ls=style, alpha=0.7)
    for route, _, style in ROUTES:
        top.plot([], [], color="gray", ls=style, label=route)
    top.axhline(0, color="black", lw=1)
    top.set_ylabel("gpt2-rope minus gbert, P_test (points)\npaired 95% CI over the same people")
    top.set_title("The causal-masked gap against load, 2 layers (each dot a seed; hollow: a kind below 50% "
                  "name-tied)", fontsize=9)
    top.legend(fontsize=7, ncol=2)
    top.grid(alpha=0.3)
    for kind, marker in (("gpt2-rope", "s"), ("gbert", "o")):
        for j, (lv, label) in enumerate((("name_tied", "name-tied"), ("sentence_recall", "sentence recall"))):
            xs = [r["load"] for r in rows if lv in r["memory"][kind]]
            ys = [100 * r["memory"][kind][lv]["mean"] for r in rows if lv in r["memory"][kind]]
            bottom.scatter(xs, ys, marker=marker, color=f"C{3 + j}", facecolors="none" if kind == "gpt2-rope" else
                           f"C{3 + j}", label=f"{kind} {label}")
    bottom.set_ylabel("memorized (%), mean over seeds")
    bottom.set_xlabel("load: people per non-embedding parameter")
    bottom.set_xscale("log")
    bottom.set_ylim(-5, 118)
    bottom.legend(fontsize=7, ncol=2, loc="lower left")
    bottom.grid(alpha=0.3)
    for r in rows:
        bottom.annotate(r["point"].replace(" people, ", "\n"), (r["load"], 104), fontsize=6, ha="center")
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    plt.close(fig)
    return OUT


def _cell(p: dict) -> str:
    if "ci95" not in p:
        return f"{100 * p['mean']:.1f}"
    return f"{100 * p['mean']:.1f} ({100 * p['ci95'][0]:.0f} to {100 * p['ci95'][1]:.0f})"


def markdown(rows: list[dict]) -> str:
    lines = ["| point | load (x 1e-3) | seeds | gap: log-prob. | gap: prior | gap: told | name-tied c / m | "
             "sentence c / m | memorized |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        gap = [_cell(r["gap"][rule]) if rule in r["gap"] else "-" for rule, _ in RULES]
        mem = [f"{100 * r['memory']['gpt2-rope'][lv]['mean']:.0f} / {100 * r['memory']['gbert'][lv]['mean']:.0f}"
               for lv in ("name_tied", "sentence_recall")]
        lines.append(f"| {r['point']} | {1000 * r['load']:.2f} | {len(r['seeds'])} | {' | '.join(gap)} | "
                     f"{' | '.join(mem)} | {'yes' if r['memorized'] else 'no'} |")
    return "\n".join(lines)


def mechanism_markdown(rows: list[dict]) -> str:
    """Per seed of each point with the cue levels: each kind's sentence recall, name+values and values only."""
    lines = []
    for r in rows:
        for s in r["seeds"]:
            c, m = s["levels"]["gpt2-rope"], s["levels"]["gbert"]
            if "values_only" not in m:
                continue
            trio = [" / ".join(f"{100 * k[lv]:.1f}" for lv in ("sentence_recall", "name_and_values", "values_only"))
                    for k in (c, m)]
            lines.append(f"| {r['point']} ({s['seed']}) | {trio[0]} | {trio[1]} | {100 * m['qa_test_given']:.1f} |")
    return "\n".join(lines)


def mechanism() -> dict:
    """Across every committed masked pretraining fine-tuned exactly (the answer-window fine-tunings of the same
    pretrainings left out: same memorization, another P_test), each memorization level of gbert against its P_test
    told the answer's length: the runs, and Pearson's r of each level with it, over all runs and over those with
    name-tied at least MEMORIZED."""
    runs = []
    for path in sorted((ROOT / "runs").rglob("results.json")):
        name = path.parent.relative_to(ROOT / "runs").as_posix()
        if "window" in name or name.startswith("answer_window"):
            continue
        found = read_results(path.parent)
        for c in found.cells:
            if c.backbone == "gbert" and {"qa_test_given", "name_tied", "sentence_recall"} <= set(c.levels):
                runs.append({"run": name, "told": c.levels["qa_test_given"]["mean"],
                             **{lv: c.levels[lv]["mean"] for lv in MEMORY if lv in c.levels}})
    out = {"runs": runs, "r": {}, "r_memorized": {}}
    for lv in MEMORY:
        for key, rows in (("r", runs), ("r_memorized", [r for r in runs if r["name_tied"] >= MEMORIZED])):
            pairs = [(r[lv], r["told"]) for r in rows if lv in r]
            if len(pairs) >= 3:
                out[key][lv] = {"r": _pearson(pairs), "runs": len(pairs)}
    return out


def _pearson(pairs: list[tuple[float, float]]) -> float:
    n = len(pairs)
    mx, my = sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return sxy / (sxx * syy) ** 0.5


if __name__ == "__main__":
    rows = collect()
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    why = mechanism()
    write_json_atomic(TABLE, {"memorized": f"name-tied of both kinds at least {MEMORIZED}", "points": rows,
                              "mechanism": why})
    print(f"wrote {figure(rows).relative_to(ROOT)} and {TABLE.relative_to(ROOT)}")
    print(markdown(rows))
    print(mechanism_markdown(rows))
    for key in ("r", "r_memorized"):
        print(key, {lv: f"{v['r']:.2f} over {v['runs']} runs" for lv, v in why[key].items()})
