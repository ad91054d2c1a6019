"""The `bidirect` command (also `python -m bidirect`).

    bidirect data [CONFIG] --out RUN_DIR         generate bioS and the tokenizer
    bidirect run [CONFIG] --out RUN_DIR          the whole study: data, training, evaluation, table
    bidirect eval RUN_DIR                        evaluate the saved models of a run again
    bidirect summary RUN_DIR [RUN_DIR ...]       runs side by side
    bidirect backbones                           the registry

Without CONFIG the embedded default study runs: the dataclass defaults of config.py,
spelled out in configs/quick.yaml. Works unchanged under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from bidirect.config import ConfigError, StudyConfig, load, validate

console = Console()


def _config(path: str | None) -> StudyConfig:
    return load(path) if path else validate(StudyConfig())


def cmd_data(args: argparse.Namespace) -> None:
    from bidirect.report import data_summary
    from bidirect.study import open_run_dir, prepare_data

    cfg = _config(args.config)
    run_dir = Path(args.out)
    open_run_dir(run_dir, cfg, force=args.force)
    data, tokenizer = prepare_data(cfg, run_dir)
    data_summary(console, data, tokenizer)
    console.print(f"data and tokenizer written to {run_dir}")


def cmd_run(args: argparse.Namespace) -> None:
    from bidirect.report import print_results
    from bidirect.study import make_accelerator, open_run_dir, run_study

    cfg = _config(args.config)
    run_dir = Path(args.out)
    accelerator = make_accelerator(cfg)
    if accelerator.is_main_process:
        open_run_dir(run_dir, cfg, resume=args.resume, force=args.force)
    accelerator.wait_for_everyone()
    results = run_study(cfg, run_dir, accelerator)
    if accelerator.is_main_process:
        print_results(console, results)
        console.print(f"results: {run_dir / 'results.json'} ({results['wall_seconds']:.0f} s)")


def cmd_eval(args: argparse.Namespace) -> None:
    from bidirect.report import print_results
    from bidirect.study import reevaluate

    results = reevaluate(Path(args.run_dir))
    print_results(console, results)


def cmd_summary(args: argparse.Namespace) -> None:
    from bidirect.report import comparison_table, print_results
    from bidirect.study import read_results

    runs = {d: read_results(Path(d)) for d in args.run_dirs}
    if len(runs) == 1:
        print_results(console, next(iter(runs.values())))
    console.print(comparison_table(runs))


def cmd_backbones(args: argparse.Namespace) -> None:
    from bidirect.models import BACKBONES

    for name, spec in BACKBONES.items():
        console.print(f"[bold]{name:12s}[/bold] {spec.kind:7s} {spec.about}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidirect", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate the bioS data and tokenizer of a study")
    p.add_argument("config", nargs="?", help="study YAML (default: the embedded quick study)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--force", action="store_true", help="delete a non-empty run folder first")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help="run a whole study and print its table")
    p.add_argument("config", nargs="?", help="study YAML (default: the embedded quick study)")
    p.add_argument("--out", required=True, help="run folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    group.add_argument("--force", action="store_true", help="delete a non-empty run folder first")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="evaluate the saved models of a run again")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("summary", help="print the tables of one or several runs")
    p.add_argument("run_dirs", nargs="+")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("backbones", help="list the backbones")
    p.set_defaults(func=cmd_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bidirect.study import RunDirError
    from bidirect.trainer import TrainingError

    try:
        args.func(args)
    except (ConfigError, RunDirError, TrainingError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/bold red] {err}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
