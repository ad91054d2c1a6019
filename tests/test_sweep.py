"""Named variants in a sweep: an axis whose values are names, each a set of settings that go together."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from tiny import single_study as tiny

from bidirect import sweep as sweep_lib
from bidirect.cli import main
from bidirect.rundir import RunDirError

OBJECTIVES = {
    "causal": {"backbones": ["gpt2-rope"]},
    "causal-reverse": {"backbones": ["gpt2-rope"], "causal.reverse": True},
    "mlm-u": {"backbones": [{"name": "gbert", "pretrain": {"steps": 8}}], "masking.rate": "uniform",
              "masking.span": "attribute"},
}


def write_sweep(path: Path, axes: dict) -> Path:
    path.write_text(yaml.safe_dump({**tiny(), "sweep": axes}, sort_keys=False))
    return path


def test_each_variant_sets_its_values_and_names_its_cell():
    sweep = sweep_lib.parse({**tiny(), "sweep": {"objective": OBJECTIVES, "seed": [0, 1]}})
    assert [c.name for c in sweep.cells] == ["objective=causal,seed=0", "objective=causal,seed=1",
                                             "objective=causal-reverse,seed=0", "objective=causal-reverse,seed=1",
                                             "objective=mlm-u,seed=0", "objective=mlm-u,seed=1"]
    configs = {c.name: c.config for c in sweep.cells}
    assert configs["objective=causal,seed=1"].seed == 1 and not configs["objective=causal,seed=1"].causal.reverse
    assert configs["objective=causal-reverse,seed=0"].causal.reverse
    mlm_u = configs["objective=mlm-u,seed=0"]
    assert [b.name for b in mlm_u.backbones] == ["gbert"]
    assert mlm_u.train_config(mlm_u.backbones[0], "pretrain").steps == 8
    assert (mlm_u.masking.rate, mlm_u.masking.span, mlm_u.masking.probability) == ("uniform", "attribute", 0.15)
    assert sweep.cells[-1].values == {"objective": "mlm-u", "seed": 1}
    assert sweep.manifest()["axes"] == {"objective": ["causal", "causal-reverse", "mlm-u"], "seed": [0, 1]}


BAD = [
    ({"masking": {"a": {"masking.rate": "uniform"}}}, r"sweep: 'masking' maps names to settings, so it must be a name "
                                                       r"that is not a field of the study"),
    ({"objective": {}}, r"sweep\.objective: no variants"),
    ({"objective": {"a b": {"seed": 1}}}, r"sweep\.objective: variant name 'a b' must be letters"),
    ({"objective": {"a": {}}}, r"sweep\.objective\.a: expected a mapping of dotted field paths"),
    ({"objective": {"a": {"masking.rat": "uniform"}}}, r"sweep\.objective\.a: masking\.rat: unknown key masking\.rat"),
    ({"objective": {"a": {"masking.rate": "sometimes"}}},
     r"sweep\.objective\.a: masking\.rate: got 'sometimes'; allowed: 'fixed', 'uniform', 'diffusion'"),
    ({"objective": {"a": {"causal.reverse": True, "backbones": ["gbert"]}}},
     r"sweep\.objective\.a: causal\.reverse: true, but no causal backbone"),
    ({"objective": {"a": {"pretrain.steps": 5}}, "pretrain": [{"steps": 4}]},
     r"sweep\.objective\.a\.pretrain\.steps: also swept as sweep\.pretrain"),
]


@pytest.mark.parametrize("axes,message", BAD, ids=[m[:30] for _, m in BAD])
def test_a_bad_variant_is_named_before_anything_is_created(axes, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path / "bad.yaml", axes)), "--out", str(out)]) == 2
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(message, text), text
    assert not out.exists()


def test_a_sweep_folder_gains_variants_and_keeps_their_settings(tmp_path):
    first = sweep_lib.load(write_sweep(tmp_path / "a.yaml", {"objective": {"causal": OBJECTIVES["causal"]}}))
    sweep_lib.open_sweep_dir(tmp_path / "out", first, tmp_path / "a.yaml")
    second = sweep_lib.load(write_sweep(tmp_path / "b.yaml", {"objective": {"mlm-u": OBJECTIVES["mlm-u"]}}))
    merged = sweep_lib.open_sweep_dir(tmp_path / "out", second, tmp_path / "b.yaml")
    assert [c.name for c in merged.cells] == ["objective=causal", "objective=mlm-u"]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["axes"] == {"objective": ["causal", "mlm-u"]}
    swept = yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())["sweep"]["objective"]
    assert swept == {"causal": OBJECTIVES["causal"], "mlm-u": OBJECTIVES["mlm-u"]}  # the file can run them all again
    changed = sweep_lib.load(write_sweep(tmp_path / "c.yaml", {"objective": {"causal": OBJECTIVES["causal-reverse"]}}))
    with pytest.raises(RunDirError, match=r"sweep\.objective\.causal has other settings than when its cell ran"):
        sweep_lib.open_sweep_dir(tmp_path / "out", changed, tmp_path / "c.yaml")
