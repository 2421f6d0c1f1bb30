"""`dsl-sweep leakcheck CONFIG|FLAGS`: the label-perturbation leak test on the user's own configuration ->
`dsl.studies.leakcheck.run_leakcheck`. Exit 0 clean, 1 a leak, 2 inconclusive (nothing moved anywhere)
or a bad config."""
from __future__ import annotations

import argparse

from sweeps.cli.run import add_run_flags, overrides_from

HELP = ("rotate the labels of one outer test fold on a small subset, rerun, and check that none of its "
        "predictions, probabilities, validation UA or picks moved (exit 0 clean, 1 leak)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (e.g. a best.yaml); flags override it")
    p.add_argument("--preset", choices=["cpu", "paper"], help="cpu or paper preset (as for `dsl-sweep run`)")
    p.add_argument("--speakers", type=int, default=3,
                   help="run on the first N speakers in name order (cross_corpus: N of each corpus; 0: all)")
    p.add_argument("--step-cache", default="", metavar="DIR", help="fold trainings from/to this step cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_run_flags(p)


def handle(args: argparse.Namespace) -> int:
    from dsl.studies.leakcheck import run_leakcheck

    check = run_leakcheck(args.config, args.preset, overrides_from(args), args.speakers, args.quiet, args.step_cache)
    return check.exit_code
