"""`bidirect bench` on a tiny model: the report's shape, the FLOPs formula, clear errors; and the FSDP launch config.

No speed is asserted: CI machines are shared and the figures only mean something on the device they describe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bidirect.analysis.bench import parse_size, peak_tflops
from bidirect.cli import main
from bidirect.config import ConfigError, ModelSize
from bidirect.models import FLOPS_FORMULA, flops_per_token

CONFIGS = Path(__file__).parent.parent / "configs"
TINY_OPTIONS = {"--size": "tiny", "--steps": "2", "--warmup": "1", "--batch": "2", "--individuals": "30",
                "--augmentation": "single", "--eval-batch": "64", "--threads": "1"}


def tiny(*extra: str, **changes: str) -> list[str]:
    """The tiny bench's command line with ``changes`` (``steps="1"`` for --steps 1) in place of its own values: an
    option given twice is refused."""
    options = {**TINY_OPTIONS, **{f"--{k.replace('_', '-')}": v for k, v in changes.items()}}
    return ["bench", *(x for kv in options.items() for x in kv), *extra]


TINY = tiny()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "sub" / "cpu.json"  # the parent folder does not exist yet
    assert main([*TINY, "--backbone", "gpt2-rope", "--backbone", "bert", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_report_has_both_paths_and_their_ratio(report):
    assert set(report["backbones"]) == {"gpt2-rope", "bert"}
    for name, r in report["backbones"].items():
        assert r["kind"] == ("causal" if name == "gpt2-rope" else "masked")
        for path in ("package", "plain"):
            f = r[path]
            assert f["tokens_per_second"] > 0 and f["real_tokens_per_step"] > 0, (name, path)
            assert 0 <= f["padding_share"] < 1 and 0 <= f["host_share"] <= 1
            assert f["device_share"] == pytest.approx(1 - f["host_share"])
            assert f["timed_steps"] == 2 and f["warmup_steps"] == 1
            assert f["peak_memory_bytes"] > 0
            # a CPU has no listed peak: its MFU is the share of its own fp32 matmul at the model's shapes
            assert f["mfu"] == pytest.approx(f["tflops"] / report["peak_tflops"])
            assert f["tflops"] == pytest.approx(f["tokens_per_second"] * r["flops_per_token"]["total"] / 1e12)
        assert r["package"]["attention"] == "sdpa" and r["plain"]["attention"] == "eager"
        assert r["speedup"] == pytest.approx(r["package"]["tokens_per_second"] / r["plain"]["tokens_per_second"])
        assert r["eval"]["items"] == 15 * 6 and r["eval"]["qa_per_second"] > 0
        if r["kind"] == "masked":  # every candidate length against one pass over the answer window
            assert r["eval"]["forward_passes_per_batch"] > 1 and r["eval"]["rule"] == "free"
            assert r["eval_window"]["forward_passes_per_batch"] == 1 and r["eval_window"]["items"] == 15 * 6
        else:
            assert "eval_window" not in r
    assert report["data"]["generate_seconds"] > 0 and report["data"]["bios"] == 30
    matmul = report["cpu_matmul_tflops"]
    assert report["device_type"] == "cpu" and report["peak_tflops"] == max(matmul["mlp"], matmul["projection"]) > 0
    assert report["peak_source"] == "measured: fp32 matmul at the model's shapes" and matmul["square_2048"] > 0
    assert {"torch", "transformers", "accelerate"} <= set(report["versions"])
    assert report["config"]["size"]["layers"] == 2 and report["cpu_threads"] == 1 and report["complete"] is True


@pytest.mark.slow
def test_compiled_path_and_the_evaluator_at_scale(tmp_path):
    """--compile adds the package path under torch.compile (static shapes); --eval-items times the evaluator on
    that many QA items, P_test's repeated."""
    out = tmp_path / "cpu.json"
    assert main([*TINY, "--backbone", "gpt2-rope", "--compile", "--eval-items", "500", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["backbones"]["gpt2-rope"]
    assert r["compiled"]["compile"] is True and r["package"]["compile"] is False
    assert r["compiled"]["timed_steps"] == 2 and r["compiled"]["tokens_per_second"] > 0
    assert r["eval"]["items"] == 500 and r["eval"]["forward_passes_per_batch"] == 1


def test_a_report_is_written_after_each_backbone(tmp_path, monkeypatch):
    """A bench cut short by a time limit (the GPU check's) keeps the backbones it finished."""
    import copy

    from bidirect.analysis import bench

    written, real = [], bench.write_report
    monkeypatch.setattr(bench, "write_report", lambda report, path: (written.append(copy.deepcopy(report)),
                                                                     real(report, path)))
    out = tmp_path / "cpu.json"
    assert main(tiny("--backbone", "gpt2-rope", "--backbone", "gbert", "--out", str(out), steps="1",
                     warmup="0")) == 0
    assert [(sorted(r["backbones"]), r["complete"]) for r in written] == [
        (["gpt2-rope"], False), (["gbert", "gpt2-rope"], False), (["gbert", "gpt2-rope"], True)]
    assert json.loads(out.read_text()) == written[-1]


def test_flops_fields_follow_the_formula(report):
    assert report["flops_formula"] == FLOPS_FORMULA == "6*N_nonembedding + 6*N_lm_head + 12*layers*context*width"
    size = report["config"]["size"]
    for r in report["backbones"].values():
        f = r["flops_per_token"]
        assert f["non_embedding_params"] == r["parameters"]["non_embedding"]
        assert f["lm_head_params"] == report["data"]["vocab_size"] * size["width"]  # tied head: V x W
        attention = 12 * size["layers"] * size["context"] * size["width"]
        assert f["total"] == 6 * f["non_embedding_params"] + 6 * f["lm_head_params"] + attention


def test_flops_per_token_by_hand(tokenizer):
    from bidirect.models import build_backbone

    size = ModelSize(layers=1, heads=2, width=16, mlp_width=32, context=8)
    model = build_backbone("gpt2", size, tokenizer)
    # one GPT-2 block: qkv 16x48+48, proj 16x16+16, mlp 16x32+32 and 32x16+16, two LayerNorms, the final one
    block = (16 * 48 + 48) + (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16) + 2 * 2 * 16
    non_embedding = block + 2 * 16
    got = flops_per_token(model, size)
    assert got["non_embedding_params"] == non_embedding
    assert got["total"] == 6 * non_embedding + 6 * len(tokenizer) * 16 + 12 * 1 * 8 * 16


def test_sizes():
    assert parse_size("quick") == (ModelSize(), 32)  # the quick study's model, whatever config.py makes it
    assert parse_size("gpt2-small")[0] == ModelSize(layers=12, heads=12, width=768, mlp_width=3072, context=512)
    assert parse_size("bert-base")[0] == parse_size("gpt2-small")[0]
    assert parse_size("8x512")[0] == ModelSize(layers=8, heads=8, width=512, mlp_width=2048, context=256)
    size, _ = parse_size("layers=2,heads=2,width=32,context=64")
    assert size == ModelSize(layers=2, heads=2, width=32, mlp_width=128, context=64)
    for bad, says in [("huge", "not a size"), ("layers=2,depth=3", "unknown key 'depth'"),
                      ("layers=2,heads=3,width=32", "does not divide"), ("layers=x", "positive integer"),
                      ("0x64", "model.layers")]:
        with pytest.raises(ConfigError, match=says):
            parse_size(bad)


def test_peaks_from_device_names():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert peak_tflops("NVIDIA H100 PCIe") == 756
    assert peak_tflops("NVIDIA H200") == 989
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("cpu: AMD EPYC") is None


@pytest.mark.parametrize(
    "argv, says",
    [
        ({"backbone": "gpt5"}, "unknown backbone 'gpt5'"),
        ({"size": "12x"}, "not a size"),
        ({"size": "layers=2,heads=3,width=32"}, "does not divide"),
        ({"steps": "0"}, "--steps: must be >= 1"),
        ({"augmentation": "multi5+shuffle"}, "unknown augmentation"),
    ],
)
def test_bad_input_exits_2_with_one_clear_error(argv, says, tmp_path, capsys):
    assert main(tiny("--out", str(tmp_path / "x.json"), **argv)) == 2
    out = capsys.readouterr().out
    assert "error:" in out and says in " ".join(out.split()), out
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- the FSDP launch config


def test_accelerate_fsdp_config(tokenizer):
    """What `accelerate launch --config_file configs/accelerate_fsdp.yaml` reads, checked with accelerate's own
    loader. A CPU launch cannot test it: accelerate turns FSDP on only for GPU-like distributed types (on CPU it
    stays MULTI_CPU, i.e. DDP over gloo), so such a run would not shard anything."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from accelerate.utils.dataclasses import get_module_class_from_name

    from bidirect.config import load
    from bidirect.models import build_backbone

    path = CONFIGS / "accelerate_fsdp.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] == "FSDP" and raw["num_processes"] == 8 and raw["mixed_precision"] == "bf16"
    assert raw["use_cpu"] is False
    fsdp = raw["fsdp_config"]
    # FSDP2: accelerate re-points an optimizer built before prepare() (as the trainer builds it) only for FSDP2.
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's FULL_SHARD
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] in ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
    # The block class to wrap must exist in every backbone of the paper study, or accelerate stops at prepare().
    paper = load(CONFIGS / "paper.yaml")
    size = ModelSize(layers=1, heads=2, width=16, mlp_width=32, context=8)
    for backbone in paper.backbones:
        model = build_backbone(backbone.name, size, tokenizer)
        assert get_module_class_from_name(model, fsdp["fsdp_transformer_layer_cls_to_wrap"]) is not None, backbone

    cluster = load_config_from_file(str(path))
    assert cluster.distributed_type == DistributedType.FSDP and cluster.num_processes == 8
    assert cluster.fsdp_config["fsdp_version"] == 2
