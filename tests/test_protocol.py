"""The evaluation protocol (bidirect.protocol): the rules' decoders, the answer's layout, the levels a cell reports,
and that a new answer-length rule is one entry in `protocol.RULES` with everything downstream following from it."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bidirect.config import ConfigError, from_dict
from bidirect.protocol import (
    ALL_LEVELS,
    RULES,
    answer_window,
    cell_levels,
    choose_length,
    lay_out,
    level_name,
    read_window,
    rules_for,
)

ROOT = Path(__file__).resolve().parents[1]
EOS, MASK = 2, 4


def test_read_window_keeps_what_precedes_the_first_end_of_text():
    assert read_window([11, 12, EOS, 13, EOS], EOS) == [11, 12, EOS]
    assert read_window([11, 12, 13], EOS) == [11, 12, 13]  # no end-of-text: no answer ends


def test_choose_length_with_and_without_the_prior():
    candidates = [(-0.1, [21]), (-0.5, [22, 22]), (-2.0, [23, 23, 23])]
    assert choose_length(candidates) == [21]  # best mean log-probability
    prior = {1: math.log(0.1), 2: math.log(0.1), 3: math.log(0.8)}
    # by hand: -0.1 - 2.303 = -2.403, -0.5 - 2.303 = -2.803, -2.0 - 0.223 = -2.223
    assert choose_length(candidates, prior) == [23, 23, 23]
    assert choose_length([(-1.0, [21]), (-1.0, [22, 22])]) == [21]  # a tie keeps the shorter


def test_each_rule_decodes_its_reading():
    candidates = [(-0.1, [21]), (-2.0, [23, 23])]
    assert RULES["free"].choose(candidates, {1: -9.0, 2: 0.0}, EOS) == [21]  # the prior is the prior rule's only
    assert RULES["prior"].choose(candidates, {1: -9.0, 2: 0.0}, EOS) == [23, 23]
    assert RULES["prior"].choose(candidates, {}, EOS) == []  # no prior (an attribute unknown): no length at all
    assert RULES["window"].choose([11, EOS, 12], {}, EOS) == [11, EOS]
    assert RULES["given"].choose([11, 12], {}, EOS) == [11, 12]


def test_the_answer_layouts_by_hand():
    q, a = [7, 8, 9], [11, 12]
    # causal: read from the last question token, the answer then end-of-text
    assert lay_out("causal", q, a, EOS, MASK) == ([7, 8, 9, 11, 12, EOS], [2, 3, 4], [11, 12, EOS])
    # masked, one mask per answer token, end-of-text after them (read: the masks)
    assert lay_out("masked", q, a, EOS, MASK) == ([7, 8, 9, MASK, MASK, EOS], [3, 4], [11, 12])
    # an answer window of 4: all four read, the answer then end-of-text wanted
    assert lay_out("masked", q, a, EOS, MASK, 4) == ([7, 8, 9, MASK, MASK, MASK, MASK], [3, 4, 5, 6], [11, 12, EOS])


def test_the_answer_window_has_room_for_the_longest_answer_and_its_end():
    assert answer_window("window", 5) == 6
    assert answer_window("exact", 5) == 0


def test_rules_by_way_of_fine_tuning_and_level_names():
    assert rules_for("exact") == ("free", "prior", "given")
    assert rules_for("window") == ("window", "given")
    assert level_name("qa_test_given") == "QA P_test*"
    assert level_name("qa_test_prior") == "QA P_test (prior)"
    assert level_name("qa_test_prior", short=True) == "QA P_test^"
    assert level_name("inverse_val_free", short=True) == "inverse P_val~"
    assert level_name("name_tied") == "name-tied"


def test_a_cell_reports_the_other_rules_its_fine_tuning_allows():
    sets = ["qa_train", "qa_test"]
    assert cell_levels("causal", "exact", "free", sets) == ["qa_train", "qa_test"]
    assert cell_levels("masked", "exact", "free", sets) == ["qa_train", "qa_test", "qa_train_prior", "qa_test_prior",
                                                            "qa_train_given", "qa_test_given"]
    assert cell_levels("masked", "window", "given", sets) == ["qa_train", "qa_test", "qa_train_window",
                                                              "qa_test_window"]


def test_eval_masked_length_allows_the_protocols_rules():
    with pytest.raises(ConfigError, match="eval.masked_length: got 'longest'; allowed: 'free', 'prior', 'window', "
                                          "'given'"):
        from_dict({"eval": {"masked_length": "longest"}})
    with pytest.raises(ConfigError, match="allowed with it: 'window', 'given'"):
        from_dict({"backbones": ["gbert"], "masking": {"answer": "window"}, "eval": {"masked_length": "free"}})


# A rule a newcomer might add: keep the one-token candidate. This is the whole change it takes.
TOY_RULE = '''
    LengthRule("shortest", "lengths", ("exact",), lambda candidates, prior, eos: candidates[0][1], "<",
               "the shortest length", "the shortest length (one token)"),
'''


def test_a_new_rule_is_one_entry_in_the_protocol(tmp_path):
    """The toy rule added to a copy of the package (`TOY_RULE`, nothing else changed): config takes it, a masked cell
    reports its levels, the evaluator scores them (on a model that knows every true answer, the one-token
    candidate is right exactly for the one-token answers), and the tables name and mark it."""
    shutil.copytree(ROOT / "bidirect", tmp_path / "bidirect", ignore=shutil.ignore_patterns("__pycache__"))
    protocol = tmp_path / "bidirect" / "protocol.py"
    text = protocol.read_text()
    anchor = "\n)}\n# The paper's rule"  # the end of RULES
    assert text.count(anchor) == 1
    protocol.write_text(text.replace(anchor, TOY_RULE.rstrip("\n") + anchor))
    check = textwrap.dedent('''
        import bidirect
        assert bidirect.__file__.startswith("COPY"), bidirect.__file__
        from bidirect.config import Augmentation, DataConfig, EvalConfig, from_dict
        from bidirect.data.generate import generate
        from bidirect.evaluate import evaluate_model
        from bidirect.protocol import cell_levels
        from bidirect.report.tables import LEVEL_NAMES, SHORT_NAMES, note
        from bidirect.results import Run
        from bidirect.tokenizer import qa_text, train_tokenizer
        from test_evaluate import Table, masked_rule

        cfg = from_dict({"backbones": ["gbert"], "eval": {"masked_length": "shortest"}})
        assert "qa_test_free" in cell_levels("masked", "exact", cfg.eval.masked_length, ["qa_test"])
        assert "qa_test_shortest" in cell_levels("masked", "exact", "free", ["qa_test"])
        assert "qa_test_shortest" not in cell_levels("masked", "window", "window", ["qa_test"])
        assert LEVEL_NAMES["qa_test_shortest"] == "QA P_test (shortest)", LEVEL_NAMES["qa_test_shortest"]
        assert SHORT_NAMES["qa_test_shortest"] == "QA P_test<"
        caption = note(Run(config={"eval": {"masked_length": "shortest"}}))
        assert "by the shortest length (one token);" in caption and "<: the shortest length" in caption, caption

        data = generate(DataConfig(individuals=40, p_train=0.5), [Augmentation.parse("single")], seed=0)
        qa = [qa_text(q, a) for q, a in zip(data.qa_train["question"], data.qa_train["answer"])]
        tokenizer = train_tokenizer(list(data.bios["single"]["text"]) + qa, "word")
        model = Table(len(tokenizer), masked_rule(tokenizer, data), tokenizer.unk_token_id)
        got = evaluate_model(model, "masked", tokenizer, data, "single",
                             EvalConfig(batch_size=16, max_individuals=12, masked_length="free"),
                             levels=("qa_test", "qa_test_shortest"))
        assert got["qa_test"]["mean"] == 1.0, got["qa_test"]["mean"]
        by = got["qa_test_shortest"]["by_length"]
        assert by["one_token"]["accuracy"] == 1.0 and by["several_tokens"]["accuracy"] == 0.0, by
        assert got["qa_test_shortest"]["true_length"] == by["one_token"]["n"] / got["qa_test_shortest"]["n"]
        print("toy rule ok")
    ''').replace("COPY", str(tmp_path))
    env_path = f"{tmp_path}:{ROOT / 'tests'}"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path, "HOME": str(tmp_path)})
    assert done.returncode == 0 and "toy rule ok" in done.stdout, done.stderr[-3000:]


def test_every_level_has_a_name():
    assert all(level_name(lv) for lv in ALL_LEVELS)
