"""Realistic bugs in the code that decides the published figures, made one at a time, each run against the tests
that should catch it: a hand-written mutation test (issue 25). mutmut's thousands of operator mutants cost hours
on 2 cores; these are the bugs a person would plausibly write, each of which moves a committed number.

    python scripts/mutants.py                  # every mutant: tests/test_numbers.py, then the older test files
    python scripts/mutants.py --only prior_ignored --only leak_reads_a_prefix   # updates those rows of the file

Each mutant is applied to a copy of the package in a temporary folder (the checkout is never changed); a mutant
is caught when pytest fails (tests marked slow left out). Each mutant runs tests/test_numbers.py, and the test
files that existed for that code before it. Writes runs/mutants/mutants.json and prints the table
(docs/reliability.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEW = "tests/test_numbers.py"
SCORING = ["tests/test_evaluate.py", "tests/test_answer_length.py", "tests/test_equal_terms.py",
           "tests/test_protocol.py"]
MASKING = ["tests/test_objectives.py", "tests/test_mlm_variants.py", "tests/test_answer_length.py",
           "tests/test_protocol.py"]
ANALYSIS = ["tests/test_probe_capacity.py"]
LEAK = ["tests/test_equal_terms.py", "tests/test_inverse.py", "tests/test_reverse.py"]


@dataclass
class Mutant:
    name: str
    family: str
    file: str
    edits: list[tuple[str, str]]  # (text that occurs once, what replaces it)
    tests: list[str]  # the test files that existed for this code
    why: str


MUTANTS = [
    # --- scoring
    Mutant("tie_keeps_the_longer", "scoring", "bidirect/protocol.py",
           [("        if score > best:\n", "        if score >= best:\n")], SCORING,
           "two lengths equally likely: the longer answer kept"),
    Mutant("prior_ignored", "scoring", "bidirect/protocol.py",
           [("score = score + prior.get(length, -math.inf)", "score = score + 0.0")], SCORING,
           "the prior rule is the free rule"),
    Mutant("lengths_compared_by_sum", "scoring", "bidirect/evaluate.py",
           [("return tokens, [sum(p) / len(p) for p in logp]", "return tokens, [sum(p) for p in logp]")], SCORING,
           "the length rule favours short answers"),
    Mutant("candidates_without_end_of_text", "scoring", "bidirect/evaluate.py",
           [("ids=item.ids[:q] + [mask] * length + tail", "ids=item.ids[:q] + [mask] * length")], SCORING,
           "candidate rows differ from the fine-tuning rows (no end-of-text after the masks)"),
    Mutant("causal_stop_not_required", "scoring", "bidirect/protocol.py",
           [("return question + answer + [eos], list(range(q - 1, q + len(answer))), answer + [eos]",
             "return question + answer + [eos], list(range(q - 1, q + len(answer) - 1)), answer")],
           SCORING, "a causal answer that goes on after the answer counts (nor is the stop trained)"),
    Mutant("window_stop_not_required", "scoring", "bidirect/evaluate.py",
           [("got = [RULES[rule].choose(g, {}, eos) for g in read_masks(model, its, pad, device, fill)[0]]\n"
             "            ok = [g == it.want for g, it in zip(got, its, strict=True)]",
             "got = [RULES[rule].choose(g, {}, eos) for g in read_masks(model, its, pad, device, fill)[0]]\n"
             "            ok = [g[: it.tokens] == it.want[:-1] for g, it in zip(got, its, strict=True)]")],
           SCORING, "a window answer without end-of-text counts"),
    Mutant("told_window_needs_the_stop", "scoring", "bidirect/evaluate.py",
           [('elif reads == "told" and its[0].want[-1:] == [eos]:', 'elif reads == "told" and False:')], SCORING,
           "told the length, a window model must also stop"),
    Mutant("confidence_fills_least_sure_first", "scoring", "bidirect/evaluate.py",
           [("k = max(range(len(at[i])), key=logp[i].__getitem__)",
             "k = min(range(len(at[i])), key=logp[i].__getitem__)")], SCORING,
           "the confidence order reversed"),
    # --- baselines and aggregates
    Mutant("baseline_pools_p_val", "baselines", "bidirect/evaluate.py",
           [('            if s == "train":\n', '            if s != "test":\n')], SCORING,
           "the majority value counted over P_train and P_val"),
    Mutant("baseline_lengths_in_characters", "baselines", "bidirect/evaluate.py",
           [("length = (lambda v: len(answer_ids(tokenizer, v)))", "length = (lambda v: len(v))")], SCORING,
           "the told-length baseline groups values by characters"),
    Mutant("mean_over_items", "baselines", "bidirect/evaluate.py",
           [('out["mean"] = sum(present) / len(present) if present else float("nan")',
             'out["mean"] = sum(correct) / len(correct) if correct else float("nan")')], SCORING,
           "a level's mean over items, not attributes"),
    # --- intervals
    Mutant("bootstrap_over_items", "intervals", "bidirect/evaluate.py",
           [("    for it, c in zip(items, correct, strict=True):\n        col = max(it.attribute, 0)",
             "    people = list(range(len(items)))\n    hits = [[0] * len(columns) for _ in people]\n"
             "    count = [[0] * len(columns) for _ in people]\n"
             "    for j, (it, c) in enumerate(zip(items, correct, strict=True)):\n        col = max(it.attribute, 0)"),
            ("        hits[row[it.person]][col] += int(c)\n        count[row[it.person]][col] += 1",
             "        hits[j][col] += int(c)\n        count[j][col] += 1")], SCORING,
           "intervals resample answers, not people"),
    Mutant("paired_resampled_apart", "intervals", "bidirect/evaluate.py",
           [("diffs = [np.nanmean(_resampled_accuracy(h, c, weights)[:, present], axis=1) for h, c in rows]",
             "diffs = [np.nanmean(_resampled_accuracy(h, c, _weights(len(shared), resamples, seed + k))[:, present],"
             " axis=1) for k, (h, c) in enumerate(rows)]")], SCORING,
           "the paired difference resamples the two backbones' people apart"),
    # --- the leak guard
    Mutant("leak_reads_a_prefix", "leak guard", "bidirect/study.py",
           [("for text in tokenizer.batch_decode(rows, skip_special_tokens=False):",
             "for text in tokenizer.batch_decode(rows[:1000], skip_special_tokens=False):")], LEAK,
           "the guard reads the first 1,000 documents"),
    Mutant("leak_misses_known_questions", "leak guard", "bidirect/study.py",
           [("if (_sha(question) in test_questions or answer in test_names",
             "if (answer in test_names")], LEAK,
           "a held-out question is found only through a name"),
    # --- masking
    Mutant("word_masking_per_token", "masking", "bidirect/objectives.py",
           [("starts = in_word & (word != torch.cat([torch.full((rows, 1), -1), word[:, :-1]], 1))",
             "starts = in_word")], MASKING,
           "whole-word masking masks tokens"),
    Mutant("value_masking_per_word", "masking", "bidirect/objectives.py",
           [("unit[has] = first.gather(1, value_at.gather(1, last.clamp(min=0)))[has]", "pass")], MASKING,
           "attribute masking masks words, not whole values"),
    Mutant("fates_swapped", "masking", "bidirect/objectives.py",
           [("to_mask = labelled & (r < self.masking.replace_mask)",
             "to_mask = labelled & (r < self.masking.replace_random)")], MASKING,
           "80/10/10 becomes 10/80/10"),
    Mutant("window_without_its_stop", "masking", "bidirect/protocol.py",
           [('return longest + 1 if answer == "window" else 0', 'return longest if answer == "window" else 0')],
           MASKING, "the answer window has no room for end-of-text after the longest answer"),
    # --- capacity and probe
    Mutant("capacity_clamped_after_summing", "capacity", "bidirect/analysis/capacity.py",
           [("per = (h - losses).clamp(min=0).sum(0)", "per = (h - losses).sum(0).clamp(min=0)")], ANALYSIS,
           "bits stored: a person's loss above the entropy offsets another's"),
    Mutant("log2_comb_off_by_one", "capacity", "bidirect/analysis/capacity.py",
           [("- math.lgamma(n - k + 1)) / math.log(2)", "- math.lgamma(n - k)) / math.log(2)")], ANALYSIS,
           "the names' entropy off"),
    Mutant("probe_scores_p_val_too", "probe", "bidirect/analysis/probe.py",
           [('test = [p for p in range(len(people)) if split[p] == "test"]',
             'test = [p for p in range(len(people)) if split[p] != "train"]')], ANALYSIS,
           "the probe's held-out people include P_val"),
]


def _pytest(folder: Path, tests: list[str]) -> tuple[bool, float]:
    """True when the tests fail (the mutant is caught)."""
    env = {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                           *tests], cwd=folder, env=env, capture_output=True, text=True)
    return done.returncode != 0, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="a mutant's name (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mutants" / "mutants.json")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        print(f"--only: unknown mutant; known: {', '.join(m.name for m in MUTANTS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for part in ("bidirect", "tests", "configs", "pyproject.toml", "setup.cfg"):
            (shutil.copytree if (ROOT / part).is_dir() else shutil.copy2)(ROOT / part, folder / part)
        env = {**os.environ, "PYTHONPATH": str(folder)}
        where = subprocess.run([sys.executable, "-c", "import bidirect; print(bidirect.__file__)"], env=env, cwd=folder,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(folder)):  # an installed bidirect first on the path would test nothing
            print(f"the copy is not the bidirect imported there ({where})", file=sys.stderr)
            return 1
        if _pytest(folder, [NEW])[0]:
            print(f"{NEW} fails on the unchanged code: fix it first", file=sys.stderr)
            return 1
        rows = []
        for m in chosen:
            path = folder / m.file
            original = path.read_text()
            text = original
            for old, new in m.edits:
                if text.count(old) != 1:
                    print(f"{m.name}: the text to change occurs {text.count(old)} times in {m.file}", file=sys.stderr)
                    return 1
                text = text.replace(old, new)
            path.write_text(text)
            try:
                new, t1 = _pytest(folder, [NEW])
                before, t2 = _pytest(folder, m.tests)
            finally:
                path.write_text(original)
            rows.append({**asdict(m), "caught_before": before, "caught_by_new": new, "caught_after": before or new,
                         "seconds": round(t1 + t2, 1)})
            print(f"{m.family:10} {m.name:34} older tests: {'caught' if before else 'MISSED':6}  "
                  f"test_numbers: {'caught' if new else 'MISSED':6} ({t1 + t2:.0f} s)", flush=True)
    if args.out.is_file():  # a partial measurement (--only) updates its rows and keeps the others
        kept = {r["name"]: r for r in json.loads(args.out.read_text())["rows"]}
        kept.update({r["name"]: r for r in rows})
        rows = [kept[m.name] for m in MUTANTS if m.name in kept]
    summary = {"mutants": len(rows), "caught_before": sum(r["caught_before"] for r in rows),
               "caught_by_new": sum(r["caught_by_new"] for r in rows),
               "caught_after": sum(r["caught_after"] for r in rows)}
    print(f"caught {summary['caught_before']} of {len(rows)} with the older tests, {summary['caught_by_new']} with "
          f"{NEW} alone, {summary['caught_after']} with both")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
