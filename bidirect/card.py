"""The model card: README.md in each saved model's folder, for someone who finds the folder without the run.

It says what the model is (backbone, study, phase, the data's hash), how well it did (each level it was
evaluated on, with its 95% interval over people) and how to load and query it with plain transformers. Written
when the model is evaluated (`study.evaluate_cell`, by `bidirect run` and `bidirect eval`), the only time its
levels are known; evaluating again rewrites it, which is why files.sha256 leaves it out (integrity.py). Paths in it
are relative to the run folder, so that two runs of one config write the same bytes wherever they are.

Light on purpose (no torch at import), like rundir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bidirect.config import StudyConfig
from bidirect.results import final_phase, interval
from bidirect.rundir import MODEL_CARD_FILE, TOKENIZER_DIR, RunFolder, write_text_atomic


def _percent(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}%"  # x != x: NaN (a level without items)


def _levels_table(scores: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| level | accuracy | 95% interval | items | people |", "|---|---|---|---|---|"]
    for level, s in scores.items():
        low, high = interval(s)
        span = "-" if low is None else f"{_percent(low)} to {_percent(high)}"
        rows.append(f"| {level} | {_percent(s.get('mean'))} | {span} | {s.get('n', '-')} | "
                    f"{s.get('people', '-')} |")
    return rows


def _snippet(run: RunFolder, model_dir: Path, question: str, mask: str, eos: str) -> list[str]:
    """How plain transformers loads and queries this folder, read from its own config.json: the pipeline its
    architecture needs, and trust_remote_code where its code is saved beside it (``auto_map``: gbert)."""
    saved = json.loads((model_dir / "config.json").read_text())
    masked = any(a.endswith("ForMaskedLM") for a in saved.get("architectures") or [])
    remote = "auto_map" in saved
    trust = ", trust_remote_code=True" if remote else ""
    lines = ["```python", "from transformers import pipeline", "",
             'run = "."  # the run folder (four folders above this card\'s): the paths below are inside it',
             f'model, tokenizer = f"{{run}}/{model_dir.relative_to(run.root).as_posix()}", '
             f'f"{{run}}/{run.tokenizer.relative_to(run.root).as_posix()}"']
    if masked:
        lines += [f'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer{trust})',
                  "# the question, one mask per answer token, end-of-text: the QA format of fine-tuning;",
                  "# the pipeline fills each mask in one pass",
                  f'fill("{question}{mask}{eos}")', "```"]
        if not remote:  # saved before the code went beside the weights
            lines.append("\nSaved without its code: `import bidirect.models` first, which registers its class.")
    else:
        lines += ['generate = pipeline("text-generation", model=model, tokenizer=tokenizer)',
                  f'generate("{question}", max_new_tokens=16, do_sample=False, return_full_text=False)', "```"]
    return lines


def write_card(cfg: StudyConfig, run_dir: Path, augmentation: str, backbone: str, phase: str,
               scores: dict[str, dict[str, Any]], data_sha: str, parameters: dict[str, int], question: str,
               tokenizer: Any) -> Path:
    """Write the card of one phase's saved model (``scores``: its levels as evaluate_model returns them;
    ``question``: an example in the study's QA form). Returns its path."""
    from bidirect.models import BACKBONES  # torch: only when a card is written, after an evaluation

    run = RunFolder(run_dir)
    model_dir = run.model(augmentation, backbone, phase)
    spec = BACKBONES[backbone]
    pipeline_tag = "fill-mask" if spec.kind == "masked" else "text-generation"
    lines = [
        "---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "tags: [bidirect, bioS]", "---", "",
        f"# {cfg.name}: {backbone} on {augmentation}, {phase}", "",
        f"`{backbone}` ({spec.kind}: {spec.about}), {parameters['total']:,} parameters "
        f"({parameters['non_embedding']:,} non-embedding), trained from scratch by bidirect in the study "
        f"`{cfg.name}` (seed {cfg.seed}, protocol {cfg.protocol}): its `{phase}` phase on the `{augmentation}` "
        f"biographies. Data: bioS of {cfg.data.individuals:,} people, sha256 `{data_sha}` (the run's data/sha256).",
        "",
        "## Accuracy",
        "",
        "Exact match of whole answers, mean of the six attributes, 95% interval from a bootstrap over people "
        "(the run's results.json has each attribute). Written when this model was evaluated.",
        "",
        *_levels_table(scores),
        "",
        *([f"qa_train and qa_test choose the answer's length as the run does (eval.masked_length: "
           f"{cfg.eval.masked_length}); a level ending in a rule's name reads it by that rule (given: told the "
           "length).", ""] if spec.kind == "masked" and phase == final_phase(cfg.protocol) else []),
        "## Load and query",
        "",
        f"The tokenizer is the run's (`{TOKENIZER_DIR}/` in the run folder), shared by every backbone of the study.",
        "",
        *_snippet(run, model_dir, question, tokenizer.mask_token or "", tokenizer.eos_token),
        "",
    ]
    if phase == final_phase(cfg.protocol):  # `bidirect ask` reads the final model
        ask = f'bidirect ask . "{question}" --backbone {backbone} --augmentation {augmentation}'
        lines += ["With bidirect installed, its answer by the evaluator's own decoding rule (in the run folder):", "",
                  f"    {ask}", ""]
    path = model_dir / MODEL_CARD_FILE
    write_text_atomic(path, "\n".join(lines))
    return path
