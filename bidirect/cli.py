"""The `bidirect` command (also `python -m bidirect`).

    bidirect data [CONFIG] --out RUN_DIR         generate bioS and the tokenizer
    bidirect run [CONFIG] --out RUN_DIR          the whole study: data, training, evaluation, table
    bidirect eval RUN_DIR                        evaluate the saved models of a run again
    bidirect summary RUN_DIR [RUN_DIR ...]       runs side by side; a sweep folder: seeds pooled, 95% CIs
    bidirect summary --pool-seeds SWEEP SWEEP    one grid's sweep folders, one per seed, pooled
    bidirect sweep SWEEP_CONFIG --out DIR        a grid of studies, one run folder per combination (--workers N)
    bidirect report DIR [--out FILE.md]          Markdown report with PNG figures of a run or sweep folder
    bidirect probe RUN_DIR [--steps N]           P- and Q-probing of the trained models (RUN_DIR/probe.json)
    bidirect capacity RUN_DIR                    knowledge capacity: bits stored per parameter (RUN_DIR/capacity.json)
    bidirect ask RUN_DIR "QUESTION"              each trained model's answer, by the evaluator's decoding rule
    bidirect backbones                           the registry
    bidirect bench [--size S] [--backbone B ...] training tokens/s: the package's path against a plain loop

Without CONFIG the embedded default study runs: the dataclass defaults of config.py,
spelled out in configs/quick.yaml. Works unchanged under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from bidirect import __version__
from bidirect.config import ConfigError, StudyConfig
from bidirect.results import Run
from bidirect.rundir import CAPACITY_FILE, PROBE_FILE, RunDirError, environment_fault

# Piped or logged output is read by people later and by scripts: no wrapping at 80 columns in the
# middle of a path or a number (a terminal keeps its own width).
console = Console() if sys.stdout.isatty() else Console(width=200, soft_wrap=True)


def cmd_data(args: argparse.Namespace) -> None:
    from bidirect.api import study_config
    from bidirect.ownership import open_run_dir
    from bidirect.report.tables import data_summary
    from bidirect.study import start_study

    cfg = study_config(args.config, args.set)
    run_dir = Path(args.out)
    opened = open_run_dir(run_dir, cfg, force=args.force, command="data")
    started = time.perf_counter()
    with contextlib.closing(opened):
        data, tokenizer = start_study(cfg, run_dir, opened=opened, train=False)
    seconds = time.perf_counter() - started
    data_summary(console, data, tokenizer)
    # The generation benchmark of the paper's scale: `bidirect data configs/paper.yaml --out ...`.
    console.print(f"data and tokenizer written to {run_dir} in {seconds:.1f} s")


def cmd_run(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from bidirect.api import run
    from bidirect.report.tables import print_results
    from bidirect.rundir import RESULTS_FILE

    if args.workers < 1:
        raise ConfigError(f"--workers: at least 1, got {args.workers}")
    results = run(args.config, args.out, args.set, resume=args.resume, force=args.force,
                  pretrained_from=args.pretrained_from, workers=args.workers, console=console)
    if PartialState().is_main_process:
        print_results(console, Run.from_json(results))
        console.print(f"results: {Path(args.out) / RESULTS_FILE} ({results['wall_seconds']:.0f} s)")


def cmd_train_cells(args: argparse.Namespace) -> None:
    from bidirect.study import train_cells

    cells = []
    for cell in args.cell:
        augmentation, _, backbone = cell.partition("/")
        if not augmentation or not backbone:
            raise ConfigError(f"--cell {cell}: expected AUGMENTATION/BACKBONE, e.g. single/gpt2-rope")
        cells.append((augmentation, backbone))
    train_cells(Path(args.run_dir), cells)


def cmd_eval(args: argparse.Namespace) -> None:
    from bidirect.report.tables import print_results
    from bidirect.study import reevaluate

    results = reevaluate(Path(args.run_dir))
    print_results(console, results)


def cmd_summary(args: argparse.Namespace) -> None:
    from bidirect import sweep as sweep_lib
    from bidirect.report.tables import (
        comparison_tables,
        print_results,
        runs_markdown,
        summary_markdown,
        summary_table,
    )
    from bidirect.rundir import RESULTS_FILE, SUMMARY_FILE, RunFolder, read_results

    sweeps = [Path(d) for d in args.run_dirs if sweep_lib.is_sweep_dir(Path(d))]
    for d in map(Path, args.run_dirs):
        # Only a sweep bidirect wrote pools its cells as seeds: a folder of unrelated runs is not one.
        if d not in sweeps and not RunFolder(d).results.exists() and any(d.glob(f"*/{RESULTS_FILE}")):
            raise RunDirError(f"{d}: not a run folder (no {RESULTS_FILE}) nor a sweep folder (no .bidirect marker, "
                              f"nor a sweep.yaml and sweep.json of one); to compare the runs in it: "
                              f"`bidirect summary {d}/*`")
    if args.pool_seeds:
        others = [d for d in args.run_dirs if Path(d) not in sweeps]
        if others:
            raise ConfigError(f"--pool-seeds: {others[0]} is not a sweep folder; pool sweep folders of one grid")
        pooled = sweep_lib.aggregate_seeds(sweeps)
        if args.markdown:
            print(summary_markdown(pooled))
        else:
            console.print(summary_table(pooled))
        return
    for sweep_dir in sweeps:
        states = sweep_lib.cell_states(sweep_dir)
        if any(state != "finished" for state in states.values()):  # in progress: who does what
            for name, state in states.items():
                console.print(f"{sweep_dir}: cell {name}: {state}", markup=False, highlight=False)
        console.print(summary_table(sweep_lib.summarize(sweep_dir)))
        console.print(f"summary: {sweep_dir / SUMMARY_FILE}")
    runs = {d: read_results(Path(d)) for d in args.run_dirs if Path(d) not in sweeps}
    if args.backbone and runs:  # a name in no run left no rows, and the table code failed on none
        have = list(dict.fromkeys(c.backbone for r in runs.values() for c in r.cells))
        for name in args.backbone:
            if name not in have:
                raise ConfigError(f"--backbone {name}: not in {'this run' if len(runs) == 1 else 'these runs'} "
                                  f"(it has {', '.join(have) or 'no results'})")
    if len(runs) == 1 and not sweeps:
        print_results(console, next(iter(runs.values())))
    if args.backbone:  # only these backbones' rows
        runs = {d: dataclasses.replace(r, cells=[c for c in r.cells if c.backbone in args.backbone])
                for d, r in runs.items()}
    if runs and args.markdown:
        print(runs_markdown(runs))
    elif runs:
        for table in comparison_tables(runs, console.width):
            console.print(table)


def cmd_sweep(args: argparse.Namespace) -> int:
    import os

    from bidirect.api import sweep
    from bidirect.report.tables import summary_table
    from bidirect.rundir import SUMMARY_FILE
    from bidirect.workers import WORKER_ENV

    if args.workers < 1:
        raise ConfigError(f"--workers: at least 1, got {args.workers}")
    if args.workers > 1:
        return _sweep_workers(args)
    summary = sweep(args.config, args.out, force=args.force, pretrained_from=args.pretrained_from, console=console)
    if summary is not None and os.environ.get(WORKER_ENV) is None:  # one of --workers: its parent prints it
        console.print(summary_table(summary))
    if summary is not None:
        console.print(f"summary: {Path(args.out) / SUMMARY_FILE}")
    return 0


def _sweep_workers(args: argparse.Namespace) -> int:
    """`bidirect sweep --workers N`: the sweep checked and its folder made here (a bad file or folder is one
    error, exit 2, before any worker starts), then N workers, then the summary the last of them wrote."""
    from bidirect.api import prepare_sweep
    from bidirect.report.tables import summary_table
    from bidirect.rundir import SUMMARY_FILE, read_json
    from bidirect.workers import launch

    if args.force:
        raise ConfigError("--workers with --force: --force keeps the old folder until the first cell passes its "
                          "checks, which one process must see; replace the folder with one worker (or delete it), "
                          "then add workers")
    prepare_sweep(args.config, args.out, pretrained_from=args.pretrained_from)
    argv = ["sweep", args.config, "--out", args.out]
    if args.pretrained_from:
        argv += ["--pretrained-from", args.pretrained_from]
    code = launch([argv] * args.workers, console)
    summary = Path(args.out) / SUMMARY_FILE
    if code == 0 and summary.is_file():
        console.print(summary_table(read_json(summary, "the summary", "run `bidirect summary` again")))
        console.print(f"summary: {summary}")
    return code


def cmd_report(args: argparse.Namespace) -> None:
    from bidirect.report.markdown import write_report

    path = write_report(Path(args.dir), Path(args.out) if args.out else None)
    console.print(f"report: {path} (figures in {path.with_suffix('')})")


def cmd_backbones(args: argparse.Namespace) -> None:
    from bidirect.models import BACKBONES

    for name, spec in BACKBONES.items():
        console.print(f"[bold]{name:12s}[/bold] {spec.kind:7s} {spec.about}")


def cmd_bench(args: argparse.Namespace) -> None:
    from bidirect.analysis.bench import (
        DEFAULT_BACKBONES,
        BenchConfig,
        default_out,
        parse_size,
        print_bench,
        run_bench,
        write_report,
    )

    size, batch = parse_size(args.size)
    cfg = BenchConfig(
        backbones=args.backbone or list(DEFAULT_BACKBONES), size=size, size_name=args.size,
        batch=batch if args.batch is None else args.batch, steps=args.steps, warmup=args.warmup,
        individuals=args.individuals, augmentation=args.augmentation, mixed_precision=args.mixed_precision,
        compile=args.compile, eval_batch=args.eval_batch, eval_items=args.eval_items, peak_tflops=args.peak_tflops,
        threads=args.threads, seed=args.seed,
    ).check()
    def out(report: dict) -> Path:
        return Path(args.out) if args.out else default_out(report)

    report = run_bench(cfg, console, partial=lambda report: write_report(report, out(report)))
    print_bench(console, report)
    console.print(f"report: {out(report)}")


MAX_PROBE_STEPS = 100_000  # a probe is a rank-2 update and a linear layer: 300 steps fit it


def cmd_probe(args: argparse.Namespace) -> None:
    from bidirect.analysis.probe import probe_table, run_probe

    if args.steps < 1:
        raise ConfigError(f"--steps: {args.steps}; give a positive number of probe training steps")
    if args.steps > MAX_PROBE_STEPS:  # 10**9 ran for days without a line; the default is 300
        raise ConfigError(f"--steps: at most {MAX_PROBE_STEPS:,}, got {args.steps:,} (probe training steps per cell; "
                          "the default is 300)")
    out = run_probe(Path(args.run_dir), args.augmentation, args.backbone, args.phase, args.steps)
    console.print(probe_table(out))
    console.print(f"probe results: {Path(args.run_dir) / PROBE_FILE}")


def cmd_capacity(args: argparse.Namespace) -> None:
    from bidirect.analysis.capacity import capacity_table, run_capacity

    out = run_capacity(Path(args.run_dir), args.augmentation, args.backbone, args.phase)
    console.print(capacity_table(out))
    console.print(f"capacity: {Path(args.run_dir) / CAPACITY_FILE}")


def cmd_ask(args: argparse.Namespace) -> None:
    from bidirect.api import ask

    answers = ask(Path(args.run_dir), args.question, args.backbone, args.augmentation, args.length)
    for row in answers.itertuples():
        said = row.answer if row.answer else "(nothing)"
        console.print(f"[bold]{escape(row.augmentation)}/{escape(row.backbone)}[/bold] ({row.kind}, {row.rule}): "
                      f"{escape(said)}", highlight=False)


class _Once(argparse.Action):
    """An option that takes one value, refused when given twice: argparse kept the last without a word
    (`ask --backbone gbert --backbone gpt2-rope` answered with gpt2-rope only). Options that add up say so
    (`--set`, `summary --backbone`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given = namespace.__dict__.setdefault("_given_once", {})
        if self.option_strings and self.dest in given:  # a positional is matched once, by argparse
            raise argparse.ArgumentError(self, f"given twice ({given[self.dest]!r} and {values!r}); give it once, "
                                               "or run the command once for each")
        given[self.dest] = values
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """bidirect's parsers (the subcommands' too: argparse makes them of the parent's class): a plain option
    given twice is refused (`_Once`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)


def _study_arguments(p: argparse.ArgumentParser) -> None:
    """A study and where it goes, as `data` and `run` take them."""
    p.add_argument("config", nargs="?", help="study YAML (default: the embedded quick study)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. --set pretrain.steps=400 data.individuals=200 "
                        "'backbones=[gpt2-rope]' (values read as YAML, checked like the file; recorded in config.yaml)")
    p.add_argument("--out", required=True, help="run folder")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    """What `bidirect bench` times and on what."""
    p.add_argument("--backbone", action="append", metavar="NAME",
                   help="a backbone to time; repeat for several (default: gpt2-rope, gbert, bert)")
    p.add_argument("--size", default="quick",
                   help="tiny, quick, gpt2-small, bert-base, LxW (e.g. 8x512) or "
                        "layers=8,heads=8,width=512,mlp=2048,context=256 (default: quick)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per path (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    p.add_argument("--batch", type=int, help="windows of `context` tokens per step (default: the size's, 32)")
    p.add_argument("--individuals", type=int, default=1000, help="people in the bioS corpus (default: 1000)")
    p.add_argument("--augmentation", default="multi5+permute", help="bios to train on (default: multi5+permute)")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                   help="the package path's precision (default: auto, bf16 where the GPU has it)")
    p.add_argument("--compile", action="store_true",
                   help="also time the package path under torch.compile, with static shapes ('compiled'); on a "
                        "CPU it has been slower than the package path (docs/speed.md)")
    p.add_argument("--eval-batch", type=int, default=256, help="evaluation batch size (default: 256)")
    p.add_argument("--eval-items", type=int, default=0,
                   help="time the evaluator on this many QA items, P_test's repeated (default: P_test's as generated)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: from the GPU's name)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: one per core); 1 on a CPU shared with other jobs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON report (default: runs/bench/<device>.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bidirect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bidirect {__version__}")
    sections = ", ".join(f.name for f in dataclasses.fields(StudyConfig))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate the bioS data and tokenizer of a study",
                       epilog=f"config keys: {sections} (defaults: configs/quick.yaml)")
    _study_arguments(p)
    p.add_argument("--force", action="store_true", help="replace a run folder bidirect wrote")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help="run a whole study and print its table",
                       epilog=f"config keys: {sections} (defaults: configs/quick.yaml)")
    _study_arguments(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    group.add_argument("--force", action="store_true", help="replace a run folder bidirect wrote")
    p.add_argument("--pretrained-from", metavar="RUN_DIR",
                   help="start from this run's pretrained models (same data, model and pretraining; only "
                        "fine-tuning and evaluation may differ): trains the fine-tuning only")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train the cells (backbone x augmentation) in N processes side by side, one torch thread "
                        "each on a CPU, one GPU each where there are GPUs; then evaluate (default: 1)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train-cells", help="a worker of `run --workers`: trains cells of a run its parent holds")
    p.add_argument("run_dir")
    p.add_argument("--cell", action="append", required=True, metavar="AUGMENTATION/BACKBONE",
                   help="a cell to train; repeat for several")
    p.set_defaults(func=cmd_train_cells)

    p = sub.add_parser("eval", help="evaluate the saved models of a run again")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("summary", help="print the tables of runs; of a sweep folder: seeds pooled with 95%% CIs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--markdown", action="store_true",
                   help="runs as one Markdown table, a row per backbone, intervals beside held-out levels")
    p.add_argument("--backbone", action="append", metavar="NAME", help="only this backbone's rows; repeat for several")
    p.add_argument("--pool-seeds", action="store_true",
                   help="sweep folders of one grid, each run on its own seed: seeds pooled across them (prints only)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("sweep", help="run a grid of studies (a study file with a top-level sweep: mapping)")
    p.add_argument("config", help="sweep YAML: a study plus sweep: {dotted.field: [values, ...]}")
    p.add_argument("--out", required=True, help="sweep folder; run again to resume it or to add values")
    p.add_argument("--force", action="store_true", help="replace a sweep folder bidirect wrote")
    p.add_argument("--pretrained-from", metavar="RUN_DIR",
                   help="every cell starts from this run's pretrained models (a grid of fine-tuning or evaluation "
                        "choices on one pretraining)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N processes share the cells, one torch thread each on a CPU, one GPU each where there are "
                        "GPUs (default: 1); on a cluster, start one `bidirect sweep` per task instead")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write a Markdown report with PNG figures of a run or sweep folder")
    p.add_argument("dir", help="run folder or sweep folder")
    p.add_argument("--out", help="Markdown file (default: DIR/report.md); figures go next to it in FILE's stem/")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("backbones", help="list the backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("bench", help="time training per backbone: the package's path against a plain loop")
    _bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("ask", help="each trained model's answer to a question, by the evaluator's decoding rule")
    p.add_argument("run_dir", help="a finished run folder")
    p.add_argument("question", help='in the study\'s form, e.g. "What is the birth city of Anya Briar Forger?"')
    p.add_argument("--backbone", help="only this backbone (default: every one of the run)")
    p.add_argument("--augmentation", help="only this augmentation (default: every one of the run)")
    p.add_argument("--length", type=int, metavar="N",
                   help="tell masked models the answer's length in tokens (the given rule; default: the run's "
                        "eval.masked_length)")
    p.set_defaults(func=cmd_ask)

    for name, func, about in (
        ("probe", cmd_probe, "P- and Q-probing: a frozen model, a rank-2 embedding update and a linear probe"),
        ("capacity", cmd_capacity, "knowledge capacity: bits stored (entropy minus the model's loss) per parameter"),
    ):
        p = sub.add_parser(name, help=about)
        p.add_argument("run_dir", help="a finished run folder")
        p.add_argument("--augmentation", help="only this augmentation (default: every one of the run)")
        p.add_argument("--backbone", help="only this backbone (default: every one of the run)")
        p.add_argument("--phase", help="which saved model (default: pretrain; mixed under the mixed protocol)")
        if name == "probe":
            p.add_argument("--steps", type=int, default=300, help="Adam steps per probe (default: 300)")
        p.set_defaults(func=func)
    return parser


def _again(args: argparse.Namespace) -> str:
    """How to continue a command that stopped: only what that command can do."""
    if args.command == "run":
        config = f"{args.config} " if args.config else ""
        return f"continue with `bidirect run {config}--out {args.out} --resume`"
    if args.command == "sweep":
        return f"continue with `bidirect sweep {args.config} --out {args.out}` (finished cells are kept)"
    if args.command == "data":
        return f"start it again with `bidirect data ... --out {args.out} --force`"
    return "run the same command again"


def _error(text: str) -> None:
    # escape: a message holds paths and fields like backbones[0], which are not markup
    console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=not console.is_terminal)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (named in one message), 1 a fault of the machine (disk full),
    130 interrupted."""
    args = build_parser().parse_args(argv)
    try:  # torch and transformers take seconds to import: Ctrl-C then was a KeyboardInterrupt traceback
        from bidirect.api import quiet_libraries
        from bidirect.trainer import TrainingError

        quiet_libraries()
    except KeyboardInterrupt:
        _error("interrupted while starting; nothing was done")
        return 130
    try:
        code = args.func(args)
    except (ConfigError, RunDirError, TrainingError, FileNotFoundError) as err:
        _error(str(err))
        return 2
    except KeyboardInterrupt:
        _error(f"interrupted; what was saved is kept: {_again(args)}")
        return 130
    except OSError as err:  # after FileNotFoundError: what the user gave cannot be written or read
        where = f"{err.filename}: " if err.filename else ""
        if environment_fault(err):
            _error(f"{where}{err.strerror}; free space (or fix the disk), then {_again(args)}")
            return 1
        _error(f"{where}{err.strerror or err}")
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
