"""`dsl-sweep validate`: every problem of a corpus in one report -> `dsl.data.validate.validate_and_save`."""
from __future__ import annotations

import argparse

HELP = "check a corpus for bad audio and labels, report all problems at once"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="corpus directory or CSV manifest")
    p.add_argument("--corpus", default="emodb", help="corpus format")
    p.add_argument("--folds", type=int, default=0, help="also check every class has at least this many utterances")
    p.add_argument("--report", help="write the report as JSON here")


def handle(args: argparse.Namespace) -> int:
    from dsl.data.validate import validate_and_save
    from sweeps.cli.errors import EXIT_PROBLEMS

    report = validate_and_save(args.corpus, args.data, args.folds, args.report)
    print(report.format())
    return 0 if report.ok else EXIT_PROBLEMS
