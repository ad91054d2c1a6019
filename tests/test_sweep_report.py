"""Sweeps with confidence intervals over seeds, and the Markdown report, on tiny runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from tiny import TINY, write_config
from tiny import single_study as tiny

from bidirect import rundir, study
from bidirect import sweep as sweep_lib
from bidirect.analysis import seeds
from bidirect.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def write_sweep(path: Path, axes: dict, **changes) -> Path:
    path.write_text(yaml.safe_dump({**tiny(**changes), "sweep": axes}, sort_keys=False))
    return path


def check_pngs(folder: Path, md: Path) -> list[Path]:
    pngs = sorted(folder.glob("*.png"))
    assert pngs
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, png
    text = md.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((md.parent / link).is_file() for link in links)  # every figure it shows is there
    assert {md.parent / link for link in links} == set(pngs)  # and nothing it does not show
    return pngs


# --------------------------------------------------------------------------- statistics and parsing


def test_t_quantile_matches_tables():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 30: 2.0423, 120: 1.9799}
    for dof, value in table.items():
        assert seeds.t_quantile_975(dof) == pytest.approx(value, abs=1e-4)


def test_interval():
    one = seeds.interval([0.4])
    assert one["mean"] == 0.4 and one["ci95"] is None and one["low"] is None
    three = seeds.interval([0.2, 0.4, 0.6])
    assert three["mean"] == pytest.approx(0.4)
    assert three["ci95"] == pytest.approx(4.3027 * 0.2 / 3 ** 0.5, rel=1e-4)  # s = 0.2
    assert three["low"] < 0.4 < three["high"]


def test_cells_are_the_cartesian_product_in_file_order():
    sweep = sweep_lib.parse({**tiny(), "sweep": {"seed": [0, 1, 2], "pretrain.steps": [4, 8],
                                                  "data.augmentations": [["single"], ["single", "multi2+permute"]]}})
    assert len(sweep.cells) == 12
    assert sweep.cells[0].name == "seed=0,pretrain.steps=4,data.augmentations=single"
    assert sweep.cells[-1].name == "seed=2,pretrain.steps=8,data.augmentations=single_multi2+permute"
    last = sweep.cells[-1].config
    assert (last.seed, last.pretrain.steps, last.data.augmentations) == (2, 8, ["single", "multi2+permute"])
    assert last.finetune.steps == TINY["finetune"]["steps"]  # the rest is the study's


BAD_SWEEPS = [
    ({"pretrain.stepz": [1, 2]}, r"sweep\.pretrain\.stepz: unknown key pretrain\.stepz; the keys of pretrain are"),
    ({"seedz": [1]}, r"sweep\.seedz: unknown key seedz; the keys are name, seed,"),
    ({"pretrain.steps": [4, 0]}, r"sweep\.pretrain\.steps\[1\] = 0: .*pretrain\.steps: must be > 0"),
    ({"pretrain.steps": 4}, r"sweep\.pretrain\.steps: expected a non-empty list"),
    ({"seed": []}, r"sweep\.seed: expected a non-empty list"),
    ({"seed": [1, 1]}, r"sweep\.seed: a value is listed twice"),
    ({"seed.x": [1]}, r"sweep\.seed\.x: seed is a single value, not a section"),
    ({"backbones.gpt2.pretrain.lr": [1]}, r"sweep\.backbones\.gpt2\.pretrain\.lr: backbones is a single value"),
    ({"model.heads": [2, 3]}, r"sweep\.model\.heads\[1\] = 3: model\.heads: 3 does not divide"),
    ({"pretrain": [{}], "pretrain.steps": [4]}, r"sweep\.pretrain: overlaps sweep\.pretrain\.steps"),
    ({"backbones": [["gpt5"]]}, r"sweep\.backbones\[0\] = \['gpt5'\]: backbones\[0\]: unknown backbone"),
]


@pytest.mark.parametrize("axes,message", BAD_SWEEPS, ids=[str(list(a)) for a, _ in BAD_SWEEPS])
def test_bad_sweep_is_refused_before_anything_is_created(axes, message, tmp_path, capsys):
    config = write_sweep(tmp_path / "bad.yaml", axes)
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out)]) == 2
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert re.search(message, text), text
    assert not out.exists()


def test_sweep_without_sweep_key_and_run_with_one(tmp_path, capsys):
    plain = write_config(tmp_path / "plain.yaml")
    assert main(["sweep", str(plain), "--out", str(tmp_path / "a")]) == 2
    assert "needs a top-level 'sweep:' mapping" in " ".join(capsys.readouterr().out.split())
    swept = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1]})
    assert main(["run", str(swept), "--out", str(tmp_path / "b")]) == 2
    assert "run it with `bidirect sweep" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- a tiny sweep end to end


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    config = write_sweep(root / "sweep.yaml", {"seed": [0, 1], "pretrain.steps": [4]})
    out = root / "out"
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    return config, out


def test_sweep_runs_every_cell_and_pools_the_seeds(tiny_sweep):
    _, out = tiny_sweep
    cells = ["seed=0,pretrain.steps=4", "seed=1,pretrain.steps=4"]
    for name in cells:
        results = json.loads((out / name / "results.json").read_text())
        assert results["seed"] == int(name[5]) and results["config"]["pretrain"]["steps"] == 4
        assert "sweep" not in yaml.safe_load((out / name / "config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group_by"] == ["pretrain.steps"] and summary["pooled"] == "seed"
    [row] = summary["rows"]
    assert (row["values"], row["augmentation"], row["backbone"]) == ({"pretrain.steps": 4}, "single", "gpt2-rope")
    assert row["n"] == 2 and sorted(row["seeds"]) == [0, 1] and row["cells"] == cells
    for level in ("bio_recall", "qa_train", "qa_test"):
        for attr in ("mean", "birth_date", "company_city"):
            stat = row["levels"][level][attr]
            assert stat["n"] == 2 and len(stat["values"]) == 2
            assert stat["ci95"] is not None and stat["ci95"] >= 0
            assert stat["low"] <= stat["mean"] <= stat["high"]
            assert stat["mean"] == pytest.approx(sum(stat["values"]) / 2)
    assert row["exposures"]["pretrain"] > 0 and row["modes"] == ["finetune:full", "pretrain:full"]


def test_second_sweep_trains_nothing(tiny_sweep, monkeypatch):
    config, out = tiny_sweep
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished sweep cell was trained again")

    monkeypatch.setattr(study, "train_phase", refuse)
    monkeypatch.setattr(study, "run_study", refuse)
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == stamps


def test_unfinished_cell_is_resumed(tiny_sweep, tmp_path, monkeypatch):
    """A cell killed after its pretraining: only its fine-tuning runs again."""
    config, out = tiny_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    cell = copy / "seed=1,pretrain.steps=4"
    (cell / "results.json").unlink()
    shutil.rmtree(cell / "models" / "single" / "gpt2-rope" / "finetune")
    trained, real = [], study.train_phase

    def spy(model, collate, stream, cfg, out_dir, *args, **kwargs):
        trained.append(out_dir.relative_to(copy).as_posix())
        return real(model, collate, stream, cfg, out_dir, *args, **kwargs)

    monkeypatch.setattr(study, "train_phase", spy)
    assert main(["sweep", str(config), "--out", str(copy)]) == 0
    assert trained == ["seed=1,pretrain.steps=4/models/single/gpt2-rope/finetune"]
    assert json.loads((cell / "results.json").read_text())["results"]["single"]["gpt2-rope"]["qa_test"]["n"] == 72


def test_sweep_folder_of_another_study_is_refused(tiny_sweep, tmp_path, capsys):
    _, out = tiny_sweep
    other = write_sweep(tmp_path / "other.yaml", {"seed": [0, 1], "pretrain.steps": [4]}, data__individuals=30)
    before = sorted(p.name for p in out.iterdir())
    assert main(["sweep", str(other), "--out", str(out)]) == 2
    assert "holds a sweep of another study" in " ".join(capsys.readouterr().out.split())
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_sweep_folder_can_gain_values(tmp_path):
    """Opening a sweep folder again with more values keeps the old cells and adds the new ones."""
    first = sweep_lib.load(write_sweep(tmp_path / "a.yaml", {"seed": [0, 1], "pretrain.steps": [4]}))
    sweep_lib.open_sweep_dir(tmp_path / "out", first, tmp_path / "a.yaml")
    second = sweep_lib.load(write_sweep(tmp_path / "b.yaml", {"seed": [2, 1], "pretrain.steps": [4]}))
    merged = sweep_lib.open_sweep_dir(tmp_path / "out", second, tmp_path / "b.yaml")
    assert merged.axes == {"seed": [0, 1, 2], "pretrain.steps": [4]}
    assert [c.name for c in merged.cells] == ["seed=0,pretrain.steps=4", "seed=2,pretrain.steps=4",
                                              "seed=1,pretrain.steps=4"]
    assert merged.cells[0].config is None  # kept for the summary, not run by this file
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [c["name"] for c in manifest["cells"]] == [c.name for c in merged.cells]
    assert yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())["sweep"]["seed"] == [0, 1, 2]


def test_summary_command_on_a_sweep_folder(tiny_sweep, tmp_path, capsys):
    _, out = tiny_sweep
    copy = tmp_path / "s"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("models", "data", "tokenizer", "summary.json"))
    assert main(["summary", str(copy)]) == 0
    text = capsys.readouterr().out
    assert "±" in text and "gpt2-rope" in text
    assert json.loads((copy / "summary.json").read_text())["rows"][0]["n"] == 2
    # Without sweep.json the axes are read off the cells' configs: what differs between them.
    (copy / "sweep.json").unlink()
    axes, cells = sweep_lib.read_cells(copy)
    assert axes == {"seed": [0, 1]} and len(cells) == 2
    assert main(["summary", str(tmp_path / "nowhere")]) == 2


def test_summary_pools_inverse_levels_where_cells_have_them(tiny_sweep, tmp_path, capsys, monkeypatch):
    """Inverse search levels (data.inverse) are pooled like the others and get their own columns
    and panels; a sweep without them shows none."""
    monkeypatch.setenv("COLUMNS", "110")  # two more columns than fit 80
    _, out = tiny_sweep
    assert main(["summary", str(out)]) == 0
    assert "inverse" not in capsys.readouterr().out
    copy = tmp_path / "s"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("models", "data", "tokenizer", "summary.json"))
    for cell, (train, test) in zip(sorted(copy.glob("seed=*")), [(1.0, 0.25), (0.5, 0.75)]):
        results = json.loads((cell / "results.json").read_text())
        results["results"]["single"]["gpt2-rope"].update(
            inverse_train={"full_name": train, "mean": train, "n": 4},
            inverse_test={"full_name": test, "mean": test, "n": 4})
        (cell / "results.json").write_text(json.dumps(results))
    assert main(["summary", str(copy)]) == 0
    assert "inverse P_test" in capsys.readouterr().out
    [row] = json.loads((copy / "summary.json").read_text())["rows"]
    assert row["levels"]["inverse_test"]["mean"]["mean"] == pytest.approx(0.5)
    assert row["levels"]["inverse_train"]["mean"]["values"] == [1.0, 0.5]
    assert main(["report", str(copy)]) == 0
    text = (copy / "report.md").read_text()
    assert "| inverse P_train | inverse P_test |" in text.replace(" | majority", "")[: text.index("majority") + 20]
    assert "**50.0 ±" in text  # inverse P_test, bold like QA P_test
    check_pngs(copy / "report", copy / "report.md")


def test_pool_seeds_across_sweep_folders(tiny_sweep, tmp_path, capsys):
    """One grid run once per seed, in two sweep folders (as runs/objectives and runs/objectives_seed1): pooled
    across them it gives what the two seeds give in one folder; a seed counted twice, runs of another study, one
    folder or a run folder are refused, and nothing is written."""
    _, out = tiny_sweep
    one_folder = json.loads((out / "summary.json").read_text())["rows"][0]
    folders = {}
    for seed in (0, 1):
        folders[seed] = tmp_path / f"seed{seed}"
        shutil.copytree(out, folders[seed], ignore=shutil.ignore_patterns("models", "data", "tokenizer",
                                                                          "summary.json"))
        shutil.rmtree(folders[seed] / f"seed={1 - seed},pretrain.steps=4")
    pooled = sweep_lib.aggregate_seeds([folders[0], folders[1]])
    [row] = pooled["rows"]
    assert pooled["group_by"] == ["pretrain.steps"] and row["n"] == 2 and sorted(row["seeds"]) == [0, 1]
    for level in ("qa_train", "qa_test"):
        assert row["levels"][level]["mean"]["mean"] == pytest.approx(one_folder["levels"][level]["mean"]["mean"])
        assert row["levels"][level]["mean"]["ci95"] == pytest.approx(one_folder["levels"][level]["mean"]["ci95"])
    assert main(["summary", "--pool-seeds", str(folders[0]), str(folders[1])]) == 0
    assert "±" in capsys.readouterr().out
    assert main(["summary", "--pool-seeds", "--markdown", str(folders[0]), str(folders[1])]) == 0
    assert "| pretrain.steps | augmentation | backbone | seeds |" in capsys.readouterr().out
    assert not any(f.joinpath("summary.json").exists() for f in folders.values())

    twice = tmp_path / "seed0_again"
    shutil.copytree(folders[0], twice)
    assert main(["summary", "--pool-seeds", str(folders[0]), str(twice)]) == 2
    assert "seed 0 twice" in capsys.readouterr().out
    results = folders[1] / "seed=1,pretrain.steps=4" / "results.json"
    edited = json.loads(results.read_text())
    edited["config"]["finetune"]["lr"] *= 2
    results.write_text(json.dumps(edited))
    assert main(["summary", "--pool-seeds", str(folders[0]), str(folders[1])]) == 2
    assert "differ in finetune.lr, not only in the seed" in " ".join(capsys.readouterr().out.split())
    assert main(["summary", "--pool-seeds", str(folders[0])]) == 2
    assert "two or more sweep folders" in capsys.readouterr().out
    assert main(["summary", "--pool-seeds", str(folders[0]), str(folders[0] / "seed=0,pretrain.steps=4")]) == 2
    assert "is not a sweep folder" in capsys.readouterr().out


# --------------------------------------------------------------------------- reports


def test_report_of_a_sweep_folder(tiny_sweep, tmp_path):
    _, out = tiny_sweep
    copy = tmp_path / "s"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("data", "tokenizer"))
    assert main(["report", str(copy)]) == 0
    md = copy / "report.md"
    pngs = check_pngs(copy / "report", md)
    assert {"loss.png", "qa_test_seeds.png"} <= {p.name for p in pngs}
    text = md.read_text()
    assert "± " in text and "95% confidence interval" in text and "seed=1,pretrain.steps=4" in text
    assert "sweep:" in text  # the sweep file, quoted


def test_report_of_a_sweep_shows_capacity_where_cells_have_it(tiny_sweep, tmp_path):
    _, out = tiny_sweep
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    assert main(["report", str(copy)]) == 0
    assert "Knowledge capacity" not in (copy / "report.md").read_text()
    cell = copy / "seed=1,pretrain.steps=4"
    assert main(["capacity", str(cell)]) == 0
    stored = json.loads((cell / "capacity.json").read_text())["results"]["gpt2-rope"]["single"]
    assert main(["report", str(copy)]) == 0
    text = (copy / "report.md").read_text()
    assert "## Knowledge capacity" in text and "capacity.png" in text
    assert f"| seed=1,pretrain.steps=4 | gpt2-rope / single | {stored['parameters']['total']:,} " in text
    assert "seed=0,pretrain.steps=4 | gpt2-rope" not in text.split("## Knowledge capacity")[1].split("![")[0]
    assert "capacity.png" in {p.name for p in check_pngs(copy / "report", copy / "report.md")}


def test_report_of_a_sweep_over_a_number(tiny_sweep, tmp_path):
    """The tiny sweep's two cells relabelled as one seed at two pretraining lengths: the report
    plots the levels against the swept number and, as they differ, against exposures."""
    _, out = tiny_sweep
    copy = tmp_path / "s"
    copy.mkdir()
    cells = []
    for old, steps in (("seed=0,pretrain.steps=4", 4), ("seed=1,pretrain.steps=4", 8)):
        name = f"seed=0,pretrain.steps={steps}"
        shutil.copytree(out / old, copy / name, ignore=shutil.ignore_patterns("data", "tokenizer"))
        cells.append({"name": name, "values": {"seed": 0, "pretrain.steps": steps}})
    (copy / "sweep.json").write_text(json.dumps({"axes": {"seed": [0], "pretrain.steps": [4, 8]}, "cells": cells}))
    assert main(["report", str(copy)]) == 2  # a folder bidirect did not mark is no sweep (issue 22)
    rundir.write_marker(copy, "sweep")
    assert main(["report", str(copy)]) == 0
    pngs = {p.name for p in check_pngs(copy / "report", copy / "report.md")}
    assert {"levels_vs_pretrain.steps.png", "loss.png"} <= pngs and "qa_test_seeds.png" not in pngs
    assert not (copy / "summary.json").exists()  # the report presents; `bidirect summary` writes the file
    assert main(["summary", str(copy)]) == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert [row["n"] for row in summary["rows"]] == [1, 1]
    assert all(row["levels"]["qa_test"]["mean"]["ci95"] is None for row in summary["rows"])  # one seed: no interval
    assert "| 4 | single | gpt2-rope | 1 |" in (copy / "report.md").read_text()


def test_report_of_a_run_folder(lora_run, tmp_path):
    out = tmp_path / "elsewhere" / "lora.md"
    assert main(["report", str(lora_run), "--out", str(out)]) == 0
    pngs = check_pngs(tmp_path / "elsewhere" / "lora", out)
    assert {p.name for p in pngs} == {"accuracy_single.png", "loss.png"}
    text = out.read_text()
    assert "gpt2-rope (LoRA r=4)" in text and "| finetune | lora (r=4) |" in text
    assert "finetune_mode: lora" in text  # the config
    assert not (lora_run / "report.md").exists()


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results.json" in " ".join(capsys.readouterr().out.split())


def test_pool_seeds_says_when_a_level_has_fewer_seeds_than_its_row(tiny_sweep, tmp_path, capsys):
    """A level missing in one seed's cells (a results.json older than the level): the row said 2 seeds and that
    level showed the other seed's value with no note."""
    _, out = tiny_sweep
    folders = []
    for seed in (0, 1):
        folders.append(tmp_path / f"seed{seed}")
        shutil.copytree(out, folders[-1], ignore=shutil.ignore_patterns("models", "data", "tokenizer", "summary.json"))
        shutil.rmtree(folders[-1] / f"seed={1 - seed},pretrain.steps=4")
    results = folders[1] / "seed=1,pretrain.steps=4" / "results.json"
    edited = json.loads(results.read_text())
    del edited["results"]["single"]["gpt2-rope"]["bio_recall"]
    results.write_text(json.dumps(edited))
    for markdown in ([], ["--markdown"]):
        assert main(["summary", "--pool-seeds", *markdown, str(folders[0]), str(folders[1])]) == 0
        text = capsys.readouterr().out
        assert text.count(" of 2 seeds)") == 1 and re.search(r"\d\.\d \(1 of 2 seeds\)", text), text
