"""`dsl-sweep`: run one chain, validate a corpus, run a sweep, pick the best config, report, predict.

A command is a module of this package with `HELP` (one line), `add_arguments(parser)` and
`handle(args) -> exit code`, which turns the parsed arguments into one typed library call; adding a
command is such a module plus its name in `COMMANDS`. Heavy imports (torch, Ray, MLflow) happen inside
`handle`, so `dsl-sweep --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from collections.abc import Sequence

from sweeps.cli.errors import run_handled

# The commands, in the order `dsl-sweep --help` lists them: each is the module sweeps/cli/<name>.py.
COMMANDS = ("run", "validate", "sweep", "best", "report", "agreement", "leakcheck", "predict")


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("dsl-sweeps")
    except PackageNotFoundError:  # run from a checkout that is not installed
        v = "unknown (not installed)"
    return f"dsl-sweep {v} (Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsl-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback behind an error")
    parser.add_argument("--version", action="version", version=version_text())
    # -v after the command too (`dsl-sweep run ... -v`); SUPPRESS keeps it from undoing a -v given before
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and the traceback behind an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"sweeps.cli.{name}")
        p = sub.add_parser(name, help=command.HELP, description=command.HELP, parents=[common])
        command.add_arguments(p)
        p.set_defaults(handler=command.handle)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "dsl-sweep " + shlex.join(argv)  # recorded in result JSONs, so each row can be rerun
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return run_handled(args.handler, args, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
