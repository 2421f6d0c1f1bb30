"""`dsl-sweep report`: result files or a sweep's MLflow runs as Markdown tables ->
`sweeps.sweep_report.report_sweep_runs` (files pass through to `dsl.results.report.report_result_files`)."""
from __future__ import annotations

import argparse

from tracking.client import DEFAULT_URI_TEXT

HELP = ("render result JSONs (runs, replicate studies) or a sweep's runs (the paper's tables II-IV) as Markdown "
        "tables")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="result JSON files of `dsl-sweep run` (with or without --seeds), "
                   "sweep exports, or a sweep name (read from MLflow)")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI for a sweep name (default: {DEFAULT_URI_TEXT})")
    p.add_argument("--block", default="", help="with --into: fill the block whose markers carry this name "
                   "(`<!-- dsl-sweep report: begin NAME -->`), for documents with several")
    p.add_argument("--save-sweep", help="write the sweep's trials read from MLflow to this JSON (commit it: "
                   "`dsl-sweep report FILE` renders the same tables)")
    p.add_argument("--paired-with", metavar="STUDY", action="append", default=[],
                   help="a replicate study whose iteration 0 is the baseline (repeatable: one per corpus/protocol/"
                        "test corpus/outer partition): each study row in that setting also gets its UA minus that "
                        "baseline, paired by seed (method comparisons on the same folds and seeds)")
    p.add_argument("--same-iteration", action="store_true",
                   help="with --paired-with: pair each row with the reference's iteration of the same number "
                        "(not its iteration 0), for UA and selected UA: a change that is not a DSL iteration, such "
                        "as the stage input, on the same folds and seeds")
    p.add_argument("--out", help="also write the Markdown here")
    p.add_argument("--figure", help="plot UA per iteration to this PNG (studies: mean and 95 %% interval; a "
                   "sweep: mean per rule)")
    p.add_argument("--into", help="replace the block between the report markers of this Markdown file "
                   "(the pages under docs/ are made this way)")


def handle(args: argparse.Namespace) -> int:
    from sweeps.sweep_report import report_sweep_runs

    text = report_sweep_runs(args.results, out=args.out, figure=args.figure, into=args.into,
                             command=args.command_line, tracking_uri=args.tracking_uri, save_sweep=args.save_sweep,
                             block=args.block, paired_with=args.paired_with,
                             same_iteration=args.same_iteration)
    print(text, end="")
    return 0
