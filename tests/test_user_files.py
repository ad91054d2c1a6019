"""Never touch what bidirect did not write (issue 22): a user's files beside and inside run and
sweep folders survive every command, byte for byte.

bidirect deletes or overwrites only what it can prove it wrote: a folder with its marker (a
regular file, not a link) or a run folder of a version before the marker whose results.json
records the config in its config.yaml; inside such a folder, only the names of its layout
(rundir.RUN_ENTRIES, SWEEP_ENTRIES); a report and figures listed in the report's own manifest.
Where it cannot prove it, it stops with one message (exit 2) and changes nothing. Every command
that writes into a run or sweep folder holds its lock.

Every folder here is a real one under pytest's tmp_path, with decoy files of a user's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_safety import _hold, _run, _snapshot
from tiny import ONE_CELL, single_study, write_config

from bidirect import ownership, rundir
from bidirect import sweep as sweep_lib
from bidirect.cli import main
from bidirect.config import ConfigError
from bidirect.results import Run
from bidirect.rundir import MARKER, RunDirError

FINETUNE = "models/single/gpt2-rope/finetune"


def _decoys(*folders: Path) -> None:
    """A user's notes beside and inside the folders a test works on."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("years of work\n")


# --------------------------------------------------------------------------- 1. --force proves before it deletes


@pytest.mark.parametrize("command", ["data", "run"])
def test_force_refuses_a_folder_that_merely_looks_like_an_old_run(tmp_path, finished, command, capsys):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "config.yaml").write_text("x: 1\n")
    (folder / "results.json").write_text("{}")
    _decoys(folder)
    before = _snapshot(tmp_path)
    code, text = _run([command, str(finished[0]), "--out", str(folder), "--force"], capsys)
    assert code == 2 and f"--out {folder}: --force will not delete it: it is not a folder bidirect wrote" in text
    assert "results.json is not a bidirect results file" in text
    assert _snapshot(tmp_path) == before


def test_force_refuses_a_folder_that_merely_looks_like_an_old_sweep(tmp_path, finished, capsys):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "sweep.yaml").write_text("x: 1\n")
    (folder / "sweep.json").write_text("{}")
    (folder / "thesis.tex").write_text("\\chapter{years of work}\n")
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(finished[0].read_text() + "sweep: {seed: [0, 1]}\n")
    before = _snapshot(tmp_path)
    code, text = _run(["sweep", str(sweep_file), "--out", str(folder), "--force"], capsys)
    assert code == 2 and "--force will not delete it: it is not a folder bidirect wrote" in text
    assert "sweep.json is not a sweep manifest" in text
    assert _snapshot(tmp_path) == before


def test_force_refuses_a_bidirect_run_holding_a_users_file(run_copy, capsys):
    config, run = run_copy
    _decoys(run)
    (run / "thesis.tex").write_text("draft")
    before = _snapshot(run)
    code, text = _run(["run", str(config), "--out", str(run), "--force"], capsys)
    assert code == 2
    assert f"--out {run}: --force will not delete it: it holds 2 entries bidirect did not write (notes.txt, " \
           "thesis.tex); move them out of it, or give another --out" in text
    assert _snapshot(run) == before and not ownership.aside_path(run).exists()


def test_force_refuses_a_sweep_whose_cell_holds_a_users_file(tmp_path, finished, capsys):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({**single_study(), "sweep": {"seed": [0]}}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    _decoys(out / "seed=0")
    before = _snapshot(out)
    code, text = _run(["sweep", str(sweep_file), "--out", str(out), "--force"], capsys)
    assert code == 2 and "bidirect did not write (seed=0/notes.txt)" in text
    assert _snapshot(out) == before


def test_force_refuses_a_report_it_did_not_write(run_copy, capsys):
    """report.md is a name of the layout, but a user's report.md is not bidirect's: the report's own
    manifest must list it."""
    config, run = run_copy
    (run / "report.md").write_text("# my own report\n")
    before = _snapshot(run)
    code, text = _run(["data", str(config), "--out", str(run), "--force"], capsys)
    assert code == 2 and "did not write (report.md)" in text
    assert _snapshot(run) == before


def test_force_on_an_old_run_folder_moves_nothing_and_says_how_to_mark_it(run_copy, capsys):
    """A genuine run of a version before the marker (results.json records config.yaml's config)
    is not replaced by --force: it is marked by a resume, which deletes nothing."""
    config, run = run_copy
    (run / MARKER).unlink()
    assert rundir.folder_kind(run) == "run"  # proved by its results.json
    before = _snapshot(run)
    code, text = _run(["run", str(config), "--out", str(run), "--force"], capsys)
    assert code == 2 and "a run folder of a bidirect version before the .bidirect marker" in text
    assert f"`bidirect run {run / 'config.yaml'} --out {run} --resume`" in text
    assert _snapshot(run) == before
    advice = text[text.index("`") + 1:text.index("`", text.index("`") + 1)].split()
    assert main(advice[1:]) == 0 and (run / MARKER).is_file()  # the advice works: marked, then replaceable
    ownership.check_replaceable(run, "run")


def test_legacy_proof_needs_matching_config(run_copy):
    _, run = run_copy
    (run / MARKER).unlink()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "seed": 7}))
    assert rundir.folder_kind(run) is None
    assert "does not record the config in config.yaml" in rundir.legacy_why_not(run, "run")


# --------------------------------------------------------------------------- 2. --resume adopts only a proven run


@pytest.mark.parametrize("where", ["out", "dot"])
def test_resume_does_not_adopt_a_users_folder(tmp_path, finished, where, monkeypatch, capsys):
    folder = tmp_path / "p"
    (folder / "data").mkdir(parents=True)
    shutil.copy(finished[0], folder / "config.yaml")
    (folder / "data" / "survey.csv").write_text("id,answer\n1,yes\n")
    _decoys(folder)
    before = _snapshot(tmp_path)
    out = str(folder)
    if where == "dot":
        monkeypatch.chdir(folder)
        out = "."
    code, text = _run(["run", str(finished[0]), "--out", out, "--resume"], capsys)
    assert code == 2 and f"--resume {out}: not a bidirect run folder (no {MARKER} marker" in text
    assert "bidirect will not write into it" in text
    assert _snapshot(tmp_path) == before


def test_resume_marks_a_proven_old_run_and_deletes_nothing(run_copy, capsys):
    config, run = run_copy
    (run / MARKER).unlink()
    _decoys(run)
    code, _ = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 0 and (run / MARKER).is_file() and (run / "notes.txt").read_text() == "years of work\n"


def test_data_it_did_not_write_is_not_replaced(run_copy, capsys):
    """A run folder of bidirect's whose data/ is not bidirect's data (a user's survey): the data is
    made again only where bidirect can prove the old data is its own."""
    config, run = run_copy
    shutil.rmtree(run / "tokenizer")
    (run / "tokenizer.sha256").unlink()
    shutil.rmtree(run / "data")
    (run / "data").mkdir()
    (run / "data" / "survey.csv").write_text("id,answer\n")
    before = _snapshot(run)
    code, text = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 2 and f"{run / 'data'}: not data bidirect saved (survey.csv)" in text
    assert _snapshot(run) == before


def test_data_of_a_killed_run_is_made_again(run_copy, capsys):
    """What a run killed between its data and its tokenizer leaves: its own data, replaced."""
    config, run = run_copy
    shutil.rmtree(run / "tokenizer")
    shutil.rmtree(run / "models")
    (run / "results.json").unlink()
    code, _ = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 0 and (run / "tokenizer" / "tokenizer.json").is_file()


def test_tokenizer_folder_it_did_not_write_is_not_replaced(run_copy, capsys):
    config, run = run_copy
    (run / "tokenizer" / "tokenizer.json").unlink()
    (run / "tokenizer" / "vocab_notes.txt").write_text("mine")
    before = _snapshot(run)
    code, text = _run(["run", str(config), "--out", str(run), "--resume"], capsys)
    assert code == 2 and f"{run / 'tokenizer'}: holds no tokenizer.json" in text
    assert _snapshot(run) == before


# --------------------------------------------------------------------------- 3. report: only its own figures


def test_report_does_not_overwrite_a_users_markdown_or_figures(run_copy, tmp_path, capsys):
    _, run = run_copy
    out = tmp_path / "paper" / "x.md"
    figures = out.with_suffix("")
    figures.mkdir(parents=True)
    (figures / "figure1.png").write_bytes(b"\x89PNG my figure")
    before = _snapshot(tmp_path / "paper")
    code, text = _run(["report", str(run), "--out", str(out)], capsys)
    assert code == 2 and f"{figures}: holds files bidirect did not write (figure1.png)" in text
    assert _snapshot(tmp_path / "paper") == before
    (figures / "figure1.png").unlink()
    out.write_text("# chapter 3\n")
    before = _snapshot(tmp_path / "paper")
    code, text = _run(["report", str(run), "--out", str(out)], capsys)
    assert code == 2 and f"--out {out}: exists and bidirect did not write it" in text
    assert _snapshot(tmp_path / "paper") == before


def test_report_rewrites_its_own_and_only_its_own(run_copy, tmp_path, capsys):
    _, run = run_copy
    out = tmp_path / "x.md"
    assert _run(["report", str(run), "--out", str(out)], capsys)[0] == 0
    manifest = json.loads((tmp_path / "x" / rundir.FIGURES_MANIFEST).read_text())
    assert set(manifest["figures"]) == {p.name for p in (tmp_path / "x").glob("*.png")}
    assert _run(["report", str(run), "--out", str(out)], capsys)[0] == 0  # its own: rewritten
    (tmp_path / "x" / "mine.png").write_bytes(b"mine")
    code, text = _run(["report", str(run), "--out", str(out)], capsys)
    assert code == 2 and "did not write (mine.png)" in text and (tmp_path / "x" / "mine.png").read_bytes() == b"mine"
    (tmp_path / "x" / "mine.png").unlink()
    out.write_text(out.read_text() + "\nmy edit\n")  # edited since: no longer what bidirect wrote
    code, text = _run(["report", str(run), "--out", str(out)], capsys)
    assert code == 2 and "changed since bidirect wrote it" in text and out.read_text().endswith("my edit\n")


def test_report_of_an_old_report_with_only_its_figures_is_rewritten(run_copy, tmp_path, capsys):
    """Reports written before the manifest (runs/*/report.md): a bidirect heading and a folder holding
    only the figures it links to."""
    _, run = run_copy
    out = tmp_path / "x.md"
    assert _run(["report", str(run), "--out", str(out)], capsys)[0] == 0
    (tmp_path / "x" / rundir.FIGURES_MANIFEST).unlink()
    assert _run(["report", str(run), "--out", str(out)], capsys)[0] == 0


# --------------------------------------------------------------------------- 4. summary: only a real sweep is pooled


def test_summary_of_a_plain_folder_of_runs_is_no_sweep(run_copy, tmp_path, capsys):
    _, run = run_copy
    folder = tmp_path / "many"
    folder.mkdir()
    shutil.copytree(run, folder / "a", ignore=shutil.ignore_patterns("models", "data", "tokenizer"))
    shutil.copytree(run, folder / "b", ignore=shutil.ignore_patterns("models", "data", "tokenizer"))
    (folder / "summary.json").write_text('{"my": "numbers"}')
    before = _snapshot(folder)
    code, text = _run(["summary", str(folder)], capsys)
    assert code == 2 and f"{folder}: not a run folder (no results.json) nor a sweep folder" in text
    assert f"bidirect summary {folder}/*" in text
    assert _snapshot(folder) == before
    assert not sweep_lib.is_sweep_dir(folder)


def test_summary_does_not_overwrite_a_users_summary_json(tmp_path, capsys):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({**single_study(), "sweep": {"seed": [0]}}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    (out / "summary.json").write_text('{"my": "numbers"}')
    before = _snapshot(out)
    code, text = _run(["summary", str(out)], capsys)
    assert code == 2 and f"{out / 'summary.json'}: not a summary bidirect wrote" in text
    assert _snapshot(out) == before


def test_committed_runs_are_still_read_and_reported(tmp_path, capsys):
    """The runs/ of the repository (no marker: written before it) stay inputs of summary and report: copies
    of them are proved by content, their reports (written before the report manifest) rewritten, and
    nothing is added to them but what the commands write."""
    root = Path(__file__).resolve().parents[1] / "runs"
    run = Path(shutil.copytree(root / "example_lora", tmp_path / "example_lora"))
    sweep = Path(shutil.copytree(root / "example_sweep", tmp_path / "example_sweep"))
    assert rundir.folder_kind(run) == "run" and rundir.folder_kind(sweep) == "sweep"
    assert _run(["summary", str(run)], capsys)[0] == 0
    assert _run(["summary", str(sweep)], capsys)[0] == 0
    assert _run(["report", str(run)], capsys)[0] == 0
    assert (run / "report" / rundir.FIGURES_MANIFEST).is_file() and not (run / MARKER).exists()


# --------------------------------------------------------------------------- 5. a marker that is a link


@pytest.mark.parametrize("command", ["resume", "eval", "force"])
def test_symlinked_marker_is_neither_trusted_nor_written_through(run_copy, tmp_path, command, capsys):
    config, run = run_copy
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("a user's file\n")
    (run / MARKER).unlink()
    (run / MARKER).symlink_to(theirs)
    before = _snapshot(tmp_path)
    argv = {"resume": ["run", str(config), "--out", str(run), "--resume"], "eval": ["eval", str(run)],
            "force": ["run", str(config), "--out", str(run), "--force"]}[command]
    code, text = _run(argv, capsys)
    assert code == 2 and f"{run / MARKER}: a symbolic link, not bidirect's marker" in text
    assert _snapshot(tmp_path) == before and theirs.read_text() == "a user's file\n"


def test_atomic_writes_never_go_through_a_link(tmp_path):
    target = tmp_path / "theirs.txt"
    target.write_text("mine")
    (tmp_path / ".results.json.tmp").symlink_to(target)  # a leftover temporary name, now a link
    rundir.write_json_atomic(tmp_path / "results.json", {"a": 1})
    assert target.read_text() == "mine" and json.loads((tmp_path / "results.json").read_text()) == {"a": 1}


# --------------------------------------------------------------------------- 6. every writer holds the lock


@pytest.mark.parametrize("command", ["eval", "report", "capacity"])
def test_writers_into_a_run_folder_take_its_lock(run_copy, command, capsys):
    _, run = run_copy
    holder = _hold(run)
    try:
        before = _snapshot(run)
        code, text = _run([command, str(run)], capsys)
        assert code == 2 and f"{run}: in use by process {holder.pid} on {socket.gethostname()}" in text
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_summary_takes_the_sweeps_lock(tmp_path, capsys):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({**single_study(), "sweep": {"seed": [0]}}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    holder = _hold(out)
    try:
        before = _snapshot(out)
        for argv in (["summary", str(out)], ["report", str(out)]):
            code, text = _run(argv, capsys)
            assert code == 2 and f"{out}: in use by process {holder.pid}" in text, argv
            assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- silent: it did something else


def test_sweep_values_mapping_to_one_folder_refused(tmp_path, capsys):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({**single_study(), "sweep": {"name": ["run 1", "run-1", "run/1"]}}))
    code, text = _run(["sweep", str(sweep_file), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "sweep.name: 'run 1' and 'run-1' give one folder name (name=run-1)" in text
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="give one folder name"):
        sweep_lib.parse({**single_study(), "sweep": {"name": ["a.b", "a?b", "a/b"], "seed": [0]}})


def test_api_refuses_resume_with_force(run_copy):
    from bidirect import api

    config, run = run_copy
    _decoys(run)
    before = _snapshot(run)
    with pytest.raises(RunDirError, match="resume=True and force=True contradict each other"):
        api.run(config, run, resume=True, force=True)
    assert _snapshot(run) == before


def test_damaged_model_of_a_finished_run_advice_works(run_copy, capsys):
    config, run = run_copy
    model = run / FINETUNE / "model" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    code, text = _run(["eval", str(run)], capsys)
    assert code == 2 and "model.safetensors: damaged" in text  # its hash, checked before it is loaded
    # the advice: delete the phase, move results.json away, resume
    assert f"delete {run / FINETUNE}" in text and f"move {run / 'results.json'} away" in text
    shutil.rmtree(run / FINETUNE)
    (run / "results.json").rename(run.parent / "results.json.old")
    advice = text[text.index("`") + 1:text.rindex("`")].split()
    assert advice[:2] == ["bidirect", "run"] and main(advice[1:]) == 0
    assert main(["eval", str(run)]) == 0


@pytest.mark.parametrize("kind", ["fifo", "devnull", "loop", "dangling"])
def test_config_that_is_no_regular_file_named_as_what_it_is(tmp_path, kind, capsys):
    path = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(path)
        message = f"config file {path} is a named pipe (FIFO), not a YAML file"
    elif kind == "devnull":
        path = Path("/dev/null")
        message = "config file /dev/null is a character device, not a YAML file"
    elif kind == "loop":
        path.symlink_to(path)
        message = f"config file {path} is a symbolic link that loops"
    else:
        path.symlink_to(tmp_path / "gone.yaml")
        message = f"config file {path} is a symbolic link to {tmp_path / 'gone.yaml'}, which does not exist"
    code, text = _run(["run", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in text and not (tmp_path / "o").exists()


def test_markup_in_a_run_name_is_printed_as_written(tmp_path, capsys):
    from rich.console import Console

    from bidirect.report.tables import print_results

    console = Console(width=200, record=True)
    name = "[bold red]x[/bold red] \x1b[31mred"
    # one cell: a table per augmentation that has one (results.Run keeps no augmentation without a backbone)
    print_results(console, Run.from_json({"study": name, "results": {"single": {"gpt2-rope": {}}}}))
    text = console.export_text()
    assert "[bold red]x[/bold red]" in text and "\x1b" not in text


def test_no_removed_shared_tensor_line_at_save(tmp_path, capfd):
    config = write_config(tmp_path / "tiny.yaml", **ONE_CELL)
    capfd.readouterr()
    proc = subprocess.run([sys.executable, "-m", "bidirect", "run", str(config), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Removed shared tensor" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- 7. names and writes probe 22 found


@pytest.mark.parametrize("name,command", [("probe.json", ["probe", "--steps", "1"]), ("capacity.json", ["capacity"])])
def test_an_analysis_does_not_overwrite_a_users_file_of_its_name(run_copy, name, command, capsys):
    """A user's notes saved as probe.json (or a JSON of theirs as capacity.json) were replaced whole; and --force
    counted them as the run's own."""
    config, run = run_copy
    _decoys(run.parent)
    (run / name).write_text("my notes\n" if name == "probe.json" else '{"mine": 1}\n')
    before = _snapshot(run.parent)
    code, text = _run([command[0], str(run), *command[1:]], capsys)
    assert code == 2 and f"{run / name}: not a {name[:-5]} file bidirect wrote; bidirect will not overwrite it" in text
    code, text = _run(["run", str(config), "--out", str(run), "--force"], capsys)
    assert code == 2 and f"it holds 1 entry bidirect did not write ({name})" in text
    assert _snapshot(run.parent) == before


def test_a_folder_under_a_file_name_of_bidirects_is_refused_and_no_temporary_file_is_left(run_copy, capsys):
    """A user's folder named capacity.json: `.capacity.json.tmp: Is a directory`, and that temporary file stayed."""
    _, run = run_copy
    _decoys(run / "capacity.json")
    before = _snapshot(run)
    code, text = _run(["capacity", str(run)], capsys)
    assert code == 2 and f"{run / 'capacity.json'}: not a capacity file bidirect wrote" in text
    with pytest.raises(RunDirError, match="capacity.json: a folder, not a file bidirect wrote"):
        rundir.write_json_atomic(run / "capacity.json", {})  # every writer of a file of bidirect's, not only capacity
    assert _snapshot(run) == before


def test_a_results_json_that_cannot_be_replaced_is_named_and_leaves_no_temporary_file(run_copy, monkeypatch, capsys):
    """As a read-only or immutable results.json answers a rename: the message named `.results.json.tmp`, left behind."""
    _, run = run_copy
    replace = os.replace

    def refuse(src, dst, *args, **kwargs):
        if Path(dst).name == "results.json":
            raise PermissionError(1, "Operation not permitted", str(src), None, str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    code, text = _run(["eval", str(run)], capsys)
    assert code == 2 and text.endswith(f"error: {run / 'results.json'}: Operation not permitted")
    assert not (run / ".results.json.tmp").exists()


@pytest.mark.parametrize("figure", [1, 2])
def test_a_report_stopped_while_drawing_is_replaced_by_the_next(run_copy, tmp_path, figure, monkeypatch, capsys):
    """Ctrl-C while a first report drew its figures left figures no manifest listed: the next report called them
    a user's ("holds files bidirect did not write"), though the interrupt had said to run it again."""
    from matplotlib.figure import Figure

    _, run = run_copy
    out = tmp_path / "paper" / "x.md"
    _decoys(out.parent)
    savefig, calls = Figure.savefig, []

    def interrupted(self, path, **kwargs):
        calls.append(path)
        if len(calls) == figure:
            Path(path).write_bytes(b"\x89PNG cut")  # half a figure
            raise KeyboardInterrupt
        return savefig(self, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", interrupted)
    code, text = _run(["report", str(run), "--out", str(out)], capsys)
    assert code == 130 and "interrupted" in text
    assert not [p for p in out.with_suffix("").iterdir() if p.name.endswith(".tmp")]  # no half figure kept
    monkeypatch.setattr(Figure, "savefig", savefig)
    assert _run(["report", str(run), "--out", str(out)], capsys)[0] == 0
    assert (out.parent / "notes.txt").read_text() == "years of work\n"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_pretrained_from_inside_out_is_refused_before_force_moves_it(run_copy, tmp_path, command, capsys):
    """`--out R --force --pretrained-from R`: R was moved aside, then "its pretraining is not finished"."""
    config, run = run_copy
    _decoys(tmp_path)
    before = _snapshot(tmp_path)
    if command == "run":
        argv = ["run", str(config), "--out", str(run), "--force", "--pretrained-from", f"{run}/"]
    else:
        sweep_file = tmp_path / "s.yaml"
        sweep_file.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "sweep": {"finetune.lr": [0.01]}}))
        before = _snapshot(tmp_path)
        argv = ["sweep", str(sweep_file), "--out", str(tmp_path), "--force", "--pretrained-from", str(run)]
    code, text = _run(argv, capsys)
    assert code == 2 and "is the --out folder" in text and "or inside it" in text
    assert _snapshot(tmp_path) == before


def test_report_keeps_the_loss_figure_it_cannot_draw_again(run_copy, capsys):
    """A committed run keeps its report but not its training logs (git clone, then `bidirect report`): the
    loss figure of the earlier report stays, linked, instead of being deleted with nothing to draw it again."""
    _, run = run_copy
    code, _ = _run(["report", str(run)], capsys)
    loss = run / "report" / "loss.png"
    assert code == 0 and loss.is_file()
    drawn = loss.read_bytes()
    shutil.rmtree(run / "models")  # what a committed run folder holds: no models, no logs
    code, _ = _run(["report", str(run)], capsys)
    text = (run / "report.md").read_text()
    assert code == 0 and loss.read_bytes() == drawn and "](report/loss.png)" in text
    assert "Drawn by an earlier report from the training logs" in text
    assert ownership.report_why_not(run / "report.md") is None  # still bidirect's: the next report may replace it


EVIL = "\x1b[31mevil[bold]<script>alert(1)</script><img src=x onerror=alert(2)>|x"


def test_a_received_results_json_with_escapes_and_html_in_a_name(run_copy, tmp_path, capsys):
    """A backbone named with terminal escapes, rich markup and HTML in a results.json someone sent: raw ESC bytes in
    `summary`'s tables, raw <script> and <img onerror> in report.md. Names are escaped where they are written out."""
    _, run = run_copy
    path = run / "results.json"
    path.write_text(path.read_text().replace('"gpt2-rope"', json.dumps(EVIL)))
    other = Path(shutil.copytree(run, tmp_path / "other", symlinks=True))
    for argv in (["summary", str(run)], ["summary", str(run), str(other)], ["summary", "--markdown", str(run)]):
        capsys.readouterr()
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\\x1b[31mevil[bold]" in out.replace("\n", ""), argv  # as written, no markup
        if "--markdown" in argv:  # after the run's terminal table
            table = "\n".join(line for line in out.splitlines() if line.startswith("|"))
            assert "<script>" not in table and "&lt;script&gt;" in table and "\\|x" in table
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "\x1b" not in report and "<script>" not in report and "<img" not in report
    assert "\\x1b[31mevil[bold]&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;\\|x" in report


def test_a_tokenizer_json_linked_out_of_the_run_is_not_read(run_copy, tmp_path, capsys):
    """tokenizer.json linked to a file outside the run was read, and reported as a JSON error of the run's."""
    _, run = run_copy
    (tmp_path / "secrets.txt").write_text("a user's file, not JSON")
    link = run / "tokenizer" / "tokenizer.json"
    link.unlink()
    link.symlink_to(tmp_path / "secrets.txt")
    before = _snapshot(tmp_path)
    for argv in (["eval", str(run)], ["ask", str(run), "What is the birth city of A B C?"]):
        code, text = _run(argv, capsys)
        assert code == 2 and text == (f"error: {link}: a symbolic link out of the run folder (to "
                                      f"{tmp_path / 'secrets.txt'}); bidirect reads and writes a run's files only "
                                      "inside it. Put the files themselves there, or give another run"), text
        assert _snapshot(tmp_path) == before


def test_eval_does_not_write_cards_into_a_models_folder_linked_out_of_the_run(run_copy, tmp_path, capsys):
    """`models/` a link to a folder outside the run: eval rewrote the model cards (README.md) there."""
    _, run = run_copy
    elsewhere = Path(shutil.move(run / "models", tmp_path / "elsewhere"))
    (run / "models").symlink_to(elsewhere)
    before = _snapshot(tmp_path)
    code, text = _run(["eval", str(run)], capsys)
    model = run / "models/single/gpt2-rope/pretrain/model"
    assert code == 2 and text.startswith(f"error: {model}: a symbolic link out of the run folder (to "
                                         f"{elsewhere / 'single/gpt2-rope/pretrain/model'})"), text
    assert _snapshot(tmp_path) == before


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("where", ["run", "model"])
def test_eval_of_an_immutable_folder_is_refused_before_evaluating(run_copy, where, capsys):
    """`eval` on an immutable folder evaluated every model, then failed on the first card (or results.json)."""
    _, run = run_copy
    folder = run if where == "run" else run / "models/single/gpt2-rope/finetune/model"
    if not _chattr("+i", folder):
        pytest.skip("needs chattr on a file system with immutable folders (root, ext4)")
    try:
        before = _snapshot(run)
        code, text = _run(["eval", str(run)], capsys)
        name = "results.json" if where == "run" else "README.md"
        assert code == 2 and text == (f"error: {folder}: cannot write {name} there (Operation not permitted); make the "
                                      "folder writable (chmod u+w, or chattr -i where it is immutable), then run the "
                                      "same command again"), text
        assert _snapshot(run) == before
    finally:
        _chattr("-i", folder)
