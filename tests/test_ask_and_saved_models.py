"""Saved models outside bidirect (issue 25): a saved gbert loads in plain transformers from the code saved beside
its weights, each model folder has a card with its levels, and `bidirect ask` answers as the evaluator decodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import write_config

from bidirect.api import ask
from bidirect.cli import main
from bidirect.data.generate import StudyData
from bidirect.evaluate import answer_questions
from bidirect.integrity import check_manifest
from bidirect.models import load_backbone
from bidirect.results import ATTRIBUTES
from bidirect.rundir import FILES_SHA_FILE, MODEL_CARD_FILE, RunDirError, RunFolder, read_tokenizer, require_run_dir
from bidirect.tokenizer import answer_ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both kinds, fine-tuned long enough to fit some of P_train's QA but not all (the masked model answers some
    questions right and some wrong), so that agreeing with the evaluator is a real comparison. About a minute."""
    root = tmp_path_factory.mktemp("ask")
    config = write_config(root / "ask.yaml", data__augmentations=["single"],
                          model={"layers": 2, "heads": 2, "width": 64, "mlp_width": 128, "context": 256},
                          pretrain={"steps": 6, "batch_size": 4, "warmup_steps": 1, "log_every": 3},
                          finetune={"steps": 1000, "batch_size": 8, "log_every": 500, "lr": 3e-3, "min_lr": 1e-3})
    run = root / "run"
    assert main(["run", str(config), "--out", str(run)]) == 0
    return run


def _qa_train(run: Path) -> tuple[list[str], list[str], list[str]]:
    qa = StudyData.load(RunFolder(run).data).qa_train
    return list(qa["question"]), list(qa["answer"]), list(qa["attribute"])


def _plain_python(script: str, cwd: Path) -> dict:
    """Run ``script`` in a fresh interpreter where bidirect cannot be imported (it is installed editable, so it
    is blocked, not just left off the path), offline; its last line of output is JSON."""
    guard = "import sys\nsys.modules['bidirect'] = None  # any `import bidirect...` now raises ImportError\n"
    env = {**os.environ, "HF_MODULES_CACHE": str(cwd / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", guard + textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_saved_gbert_loads_and_fills_masks_without_bidirect(trained, tmp_path):
    run = RunFolder(trained)
    model_dir = run.model("single", "gbert", "finetune")
    assert json.loads((model_dir / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "gbert.GBertConfig", "AutoModelForMaskedLM": "gbert.GBertForMaskedLM"}
    tokenizer = read_tokenizer(trained)
    question = _qa_train(trained)[0][0]
    text = f"{question}{tokenizer.mask_token}{tokenizer.eos_token}"  # the fine-tuned QA format, one mask
    out = _plain_python(f"""
        import json
        try:
            import bidirect  # noqa: F401
            blocked = False
        except ImportError:
            blocked = True
        from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
        model = AutoModelForMaskedLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained({str(run.tokenizer)!r})
        ids = tok({text!r}, return_tensors="pt")["input_ids"]
        fill = pipeline("fill-mask", model={str(model_dir)!r}, tokenizer={str(run.tokenizer)!r},
                        trust_remote_code=True)
        print(json.dumps({{"blocked": blocked, "module": type(model).__module__, "causal": model.config.is_causal,
                          "ids": ids[0].tolist(), "logits": model(input_ids=ids).logits[0].tolist(),
                          "filled": fill({text!r}, top_k=1)[0]["token"]}}))
    """, tmp_path)
    assert out["blocked"], "the subprocess could import bidirect: the test would prove nothing"
    assert out["module"].startswith("transformers_modules"), out["module"]  # the code saved beside the weights
    assert out["causal"] is False
    ours = load_backbone(model_dir).eval()
    ids = torch.tensor([out["ids"]])
    with torch.no_grad():
        logits = ours(input_ids=ids).logits[0]
    torch.testing.assert_close(torch.tensor(out["logits"]), logits, rtol=1e-5, atol=1e-5)
    mask_at = out["ids"].index(tokenizer.mask_token_id)
    assert out["filled"] == int(logits[mask_at].argmax())


def test_saved_code_is_part_of_the_manifest(trained, tmp_path):
    """The saved gbert.py runs when the model loads: it is hashed with the weights, so an edited copy is refused.
    The card is not (evaluation rewrites it), and the folder still checks with it there."""
    run_dir = Path(shutil.copytree(trained, tmp_path / "run"))
    model_dir = RunFolder(run_dir).model("single", "gbert", "finetune")
    listed = [line.split("  ", 1)[1] for line in (model_dir / FILES_SHA_FILE).read_text().splitlines()]
    assert "gbert.py" in listed and MODEL_CARD_FILE not in listed
    assert (model_dir / MODEL_CARD_FILE).is_file()
    check_manifest(model_dir, "the saved model", "advice")
    with (model_dir / "gbert.py").open("a") as f:
        f.write("\nprint('not the code that was saved')\n")
    with pytest.raises(RunDirError, match="gbert.py: damaged"):
        load_backbone(model_dir)


def test_gbert_saved_without_its_code_still_loads(trained, tmp_path):
    """Runs saved before the code went beside the weights (no gbert.py, no auto_map) load with bidirect's
    registered classes, as before."""
    model_dir = Path(shutil.copytree(RunFolder(trained).model("single", "gbert", "finetune"), tmp_path / "model"))
    (model_dir / "gbert.py").unlink()
    (model_dir / FILES_SHA_FILE).unlink()
    config = json.loads((model_dir / "config.json").read_text())
    del config["auto_map"]
    (model_dir / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        old = load_backbone(model_dir).eval()(input_ids=ids).logits
        new = load_backbone(RunFolder(trained).model("single", "gbert", "finetune")).eval()(input_ids=ids).logits
    assert type(load_backbone(model_dir)).__module__ == "bidirect.gbert"
    torch.testing.assert_close(old, new)


def test_each_model_folder_has_a_card_with_its_levels(trained):
    results = json.loads(RunFolder(trained).results.read_text())["results"]["single"]
    for backbone in ("gpt2-rope", "gbert"):
        for phase, levels in (("pretrain", ["bio_recall", "name_tied"]), ("finetune", ["qa_train", "qa_test"])):
            card = (RunFolder(trained).model("single", backbone, phase) / MODEL_CARD_FILE).read_text()
            assert f"# tiny: {backbone} on single, {phase}" in card
            assert (RunFolder(trained).data / "sha256").read_text().split()[0] in card
            for level in levels:
                scores = results[backbone][level]
                low, high = scores["ci95"]["mean"]
                row = f"| {level} | {100 * scores['mean']:.1f}% | {100 * low:.1f}% to {100 * high:.1f}% |"
                assert row in card, (backbone, phase, row)
            assert ("trust_remote_code=True" in card) == (backbone == "gbert")
            assert ('pipeline("fill-mask"' in card) == (backbone == "gbert")
            assert ("\n    bidirect ask " in card) == (phase == "finetune")
    assert "qa_train_given" in (RunFolder(trained).model("single", "gbert", "finetune") / MODEL_CARD_FILE).read_text()


@pytest.mark.parametrize(("backbone", "level"), [("gpt2-rope", "qa_train"), ("gbert", "qa_train"),
                                                 ("gbert", "qa_train_prior"), ("gbert", "qa_train_given")])
def test_answers_agree_with_the_evaluator(trained, backbone, level):
    """Asked every P_train question, a model's answers are right exactly as often, per attribute, as the
    evaluator scored it at that level (its rule: the run's free length, the prior, or told the length)."""
    cfg = require_run_dir(trained)
    tokenizer, data = read_tokenizer(trained), StudyData.load(RunFolder(trained).data)
    model = load_backbone(RunFolder(trained).model("single", backbone, "finetune")).eval()
    questions, truths, attributes = _qa_train(trained)
    rule = level.removeprefix("qa_train").lstrip("_") or cfg.eval.masked_length
    kind = "masked" if backbone == "gbert" else "causal"
    if rule == "given":  # told each answer's length
        said = [answer_questions(model, kind, tokenizer, data, [q], cfg.eval, cfg.masking.answer,
                                 len(answer_ids(tokenizer, t)))[0] for q, t in zip(questions, truths)]
    else:
        said = answer_questions(model, kind, tokenizer, data, questions, replace(cfg.eval, masked_length=rule),
                                cfg.masking.answer)
    scored = json.loads(RunFolder(trained).results.read_text())["results"]["single"][backbone][level]
    right = [s == t for s, t in zip(said, truths, strict=True)]
    assert 0 < sum(right), "no answer right: the comparison would be empty"
    if backbone == "gbert":
        assert not all(right), "every answer right: the comparison would not tell rules apart"
    for name in ATTRIBUTES:
        hits = [r for r, a in zip(right, attributes) if a == name]
        assert sum(hits) / len(hits) == scored[name], (name, level)


def test_ask_prints_each_backbones_answer(trained, capsys):
    questions, truths, _ = _qa_train(trained)
    cfg = require_run_dir(trained)
    tokenizer, data = read_tokenizer(trained), StudyData.load(RunFolder(trained).data)
    causal = load_backbone(RunFolder(trained).model("single", "gpt2-rope", "finetune")).eval()
    said = answer_questions(causal, "causal", tokenizer, data, questions, cfg.eval)
    right = next(i for i, (s, t) in enumerate(zip(said, truths)) if s == t)  # one the evaluator counts right
    frame = ask(trained, questions[right])
    assert list(frame.backbone) == ["gpt2-rope", "gbert"]
    assert frame.answer[0] == truths[right]
    capsys.readouterr()
    assert main(["ask", str(trained), questions[right], "--backbone", "gpt2-rope"]) == 0
    assert capsys.readouterr().out.strip() == f"single/gpt2-rope (causal, greedy): {truths[right]}"
    told = len(answer_ids(tokenizer, truths[right]))
    assert main(["ask", str(trained), questions[right], "--backbone", "gbert", "--length", str(told)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"single/gbert (masked, given length ({told} tokens), one_pass fill): ")
    assert line.endswith(ask(trained, questions[right], "gbert", length=told).answer[0] or "(nothing)")


@pytest.mark.parametrize(("args", "names"), [
    (["NOWHERE", "What major did A B C study?"], "NOWHERE: no such run folder"),
    (["RUN", "What major did A B C study?", "--backbone", "bert"], "--backbone bert: not in this run"),
    (["RUN", "What major did A B C study?", "--augmentation", "multi5"], "--augmentation multi5: not in this run"),
    (["RUN", "  "], "question: empty"),
    (["RUN", "What major did A B C study?", "--length", "0"], "--length: 0"),
])
def test_ask_refuses_bad_input_in_one_line(trained, tmp_path, capsys, args, names):
    args = [str(tmp_path / "nowhere") if a == "NOWHERE" else str(trained) if a == "RUN" else a for a in args]
    names = names.replace("NOWHERE", str(tmp_path / "nowhere"))
    capsys.readouterr()
    assert main(["ask", *args]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: ") and names in out and "\n" not in out, out
