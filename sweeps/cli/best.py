"""`dsl-sweep best SWEEP`: re-evaluate the top configurations leak-free, write best.yaml ->
`sweeps.selection.best.choose_best`."""
from __future__ import annotations

import argparse

HELP = "re-evaluate the sweep's top configurations on fresh seeds, leak-free, and write the winner as best.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep name (MLflow experiment) or sweep YAML file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--out", default="best.yaml", help="where to write the best config (studies go to <out>_reeval/)")
    p.add_argument("--top-k", type=int, help="configurations to re-evaluate (default: the sweep's select.top_k, 3)")
    p.add_argument("--fresh-seeds", type=int, help="fresh seeds per configuration (default: select.seeds, 5)")
    from dsl.protocols.plans import leak_free_protocols

    p.add_argument("--protocol", help=f"leak-free protocol of the re-evaluation ({', '.join(leak_free_protocols())}; "
                   "default: select.protocol, refinery)")
    p.add_argument("--no-reeval", action="store_true", help="skip re-evaluation: the sweep's own (self-graded) pick")
    p.add_argument("--register", action="store_true", help="train the final model on all data and register it")
    p.add_argument("--model-name", help="registered model name (default: the sweep name)")
    p.add_argument("--address", help="with --register: train the final model as a Ray task on this cluster "
                   "(its data path and devices; default: here)")


def handle(args: argparse.Namespace) -> int:
    from sweeps.selection.best import BestOptions, choose_best

    choose_best(BestOptions(sweep=args.sweep, out=args.out, tracking_uri=args.tracking_uri, top_k=args.top_k,
                            fresh_seeds=args.fresh_seeds, protocol=args.protocol, no_reeval=args.no_reeval,
                            register=args.register, model_name=args.model_name, address=args.address))
    return 0
