"""How often a masked model, left to choose its answer's length, chooses the true one (P_test).

    python scripts/length_choice.py RUN_DIR [AUGMENTATION] [BACKBONE]   # writes RUN_DIR/length_choice.json

For each P_test question: the answer read with the true number of masks (the paper's rule), the
answer chosen over lengths 1 to the longest P_train answer (the evaluator's free length), and the
length it chose. The table splits the gap between the two decodings into "chose another length"
and the rest. Uses the evaluator's own reading functions, so the figures are those of results.json.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import torch

from bidirect.config import ATTRIBUTES
from bidirect.evaluate import _read, _read_any_length, level_items
from bidirect.rundir import read_cell
from bidirect.tokenizer import answer_ids


def main(run: Path, augmentation: str | None, backbone: str) -> dict:
    _, tok, data, augmentation, model = read_cell(run, backbone, "finetune", augmentation)
    items = level_items("qa_test", tok, data, augmentation, "masked")
    longest = max(len(answer_ids(tok, a)) for a in data.qa_train["answer"])
    mask, pad, cpu = tok.mask_token_id, tok.pad_token_id, torch.device("cpu")
    counts = {a: collections.Counter() for a in (*ATTRIBUTES, "all")}
    with torch.no_grad():
        for start in range(0, len(items), 64):
            batch = items[start:start + 64]
            given, _ = _read(model, batch, pad, cpu, "one_pass")
            chosen = _read_any_length(model, batch, mask, pad, cpu, "one_pass", longest)
            for it, g, free in zip(batch, given, chosen):
                length = len(free)  # one token per mask: the length it chose
                for key in (ATTRIBUTES[it.attribute], "all"):
                    c = counts[key]
                    c["items"] += 1
                    c["right_told_length"] += g == it.want
                    c["right_choosing"] += free == it.want
                    c["chose_true_length"] += length == len(it.want)
                    c["chose_shorter"] += length < len(it.want)
                    c["right_told_but_chose_other_length"] += g == it.want and length != len(it.want)
    out = {"run": str(run), "augmentation": augmentation, "backbone": backbone, "longest": longest,
           "shares": {k: {f: c[f] / c["items"] for f in c if f != "items"} | {"items": c["items"]}
                      for k, c in counts.items()}}
    (run / "length_choice.json").write_text(json.dumps(out, indent=1))
    print(f"{'attribute':13s} {'items':>5s} {'told':>6s} {'choosing':>8s} {'true len':>8s} {'shorter':>7s} "
          f"{'told right, other len':>21s}")
    for k, s in out["shares"].items():
        print(f"{k:13s} {s['items']:5d} {100 * s['right_told_length']:6.1f} {100 * s['right_choosing']:8.1f} "
              f"{100 * s['chose_true_length']:8.1f} {100 * s['chose_shorter']:7.1f} "
              f"{100 * s['right_told_but_chose_other_length']:21.1f}")
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    main(Path(args[0]), args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else "gbert")
