"""`dsl-sweep agreement`: listener agreement per iteration -> `dsl.results.listeners.agreement_report`."""
from __future__ import annotations

import argparse

HELP = ("listener agreement per iteration: Spearman of EmoDB's recognition rates with the model's confidence and "
        "the DSL targets' entropy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="run JSONs, replicate studies (their .seeds/ folders are read)")
    p.add_argument("--listeners", help="EmoDB's erkennung.txt (default: beside the results' data folder)")
    p.add_argument("--out", help="also write the Markdown here")
    p.add_argument("--into", help="replace a report block of this Markdown file")
    p.add_argument("--block", default="", help="the block's name (`<!-- dsl-sweep report: begin NAME -->`)")


def handle(args: argparse.Namespace) -> int:
    from dsl.results.listeners import agreement_report

    print(agreement_report(args.results, args.listeners, args.out, args.into, args.block, args.command_line), end="")
    return 0
