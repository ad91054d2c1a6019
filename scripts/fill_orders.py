"""A masked model's QA read three ways: masks filled in one pass, left to right, or most confident first
(masked-diffusion order), each choosing the answer's length by the run's rule (its answer window, if it was
fine-tuned with one) and told it, with the answer-length split; and
inverse search on P_test where the run has it (the full name, its length chosen, and told it:
``inverse_test_given``, the evaluator's level, here for every fill order).

    python scripts/fill_orders.py RUN_DIR [AUGMENTATION] [BACKBONE]   # writes RUN_DIR/fill_orders.json

Evaluation only: the run's saved fine-tuned model, the evaluator itself (`evaluate_model` with ``eval.fill``
set), P_train and P_test QA.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from bidirect.analysis.cells import read_cell
from bidirect.evaluate import evaluate_model
from bidirect.report.tables import with_interval

FILLS = ("one_pass", "left_to_right", "confidence")
# those the run has; P_val to choose a fill order on, P_test to report it
LEVELS = ("qa_train", "qa_val", "qa_test", "qa_train_given", "qa_val_given", "qa_test_given", "inverse_test",
          "inverse_test_given")


def main(run: Path, augmentation: str | None, backbone: str) -> dict:
    cfg, tokenizer, data, augmentation, model = read_cell(run, backbone, "finetune", augmentation)
    out = {"run": cfg.name, "augmentation": augmentation, "backbone": backbone, "fills": {}}
    for fill in FILLS:
        started = time.perf_counter()
        scores = evaluate_model(model, "masked", tokenizer, data, augmentation, replace(cfg.eval, fill=fill),
                                levels=LEVELS, answer=cfg.masking.answer)
        out["fills"][fill] = {level: {k: scores[level][k] for k in ("mean", "ci95", "n", "by_length", "true_length")
                                      if k in scores[level]} for level in LEVELS if level in scores}
        out["fills"][fill]["seconds"] = round(time.perf_counter() - started, 1)
    return out


def _cell(level: dict) -> str:
    return with_interval(level["mean"], *level["ci95"]["mean"])


def _split(level: dict) -> str:
    groups = level["by_length"]
    return " / ".join(f"{100 * groups[k]['accuracy']:.1f}" if k in groups else "-"
                      for k in ("one_token", "several_tokens"))


def table(out: dict) -> str:
    lines = [f"{out['run']} / {out['augmentation']} / {out['backbone']}: QA mean exact match (%), 95% CI over people",
             "| fill | P_train | P_val | P_test | P_test, 1 token / more | true length | P_test* "
             "| P_test*, 1 token / more | inverse P_test | inverse P_test* |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fill, s in out["fills"].items():
        inverse = _cell(s["inverse_test"]) if "inverse_test" in s else "-"
        inverse_told = _cell(s["inverse_test_given"]) if "inverse_test_given" in s else "-"
        val = _cell(s["qa_val"]) if "qa_val" in s else "-"
        length = f"{100 * s['qa_test']['true_length']:.0f}" if "true_length" in s["qa_test"] else "-"
        lines.append(f"| {fill} | {100 * s['qa_train']['mean']:.1f} | {val} | {_cell(s['qa_test'])} | "
                     f"{_split(s['qa_test'])} | {length} | {_cell(s['qa_test_given'])} | {_split(s['qa_test_given'])} "
                     f"| {inverse} | {inverse_told} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run = Path(sys.argv[1])
    result = main(run, sys.argv[2] if len(sys.argv) > 2 else None, sys.argv[3] if len(sys.argv) > 3 else "gbert")
    (run / "fill_orders.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
