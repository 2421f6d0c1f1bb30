"""`dsl-sweep best SWEEP`: race the top configurations, sit the final exam, write best.yaml ->
`sweeps.selection.best.choose_best`."""
from __future__ import annotations

import argparse

HELP = ("race the sweep's top configurations on fresh seeds (leak-free, paired, corrected for multiple comparisons), "
        "sit the winner and a reference for the final exam on the sweep's holdout, and write the winner as best.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dsl.protocols.plans import leak_free_protocols

    p.add_argument("sweep", help="sweep name (MLflow experiment) or sweep YAML file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--out", default="best.yaml", help="where to write the best config (the race's and the exam's "
                   "chains and selection.json go to <out stem>_selection/; rerun to resume)")
    p.add_argument("--top-k", type=int, help="configurations in the race (default: the sweep's select.top_k, 5)")
    p.add_argument("--seeds", type=int, help="fresh seeds per configuration at most (default: select.seeds, 10)")
    p.add_argument("--fresh-seeds", type=int, help=argparse.SUPPRESS)  # the earlier name of --seeds
    p.add_argument("--budget", type=int, help="chains the race may run in all (default: select.budget, none)")
    p.add_argument("--alpha", type=float, help="family-wise error of the race's tests (default: select.alpha, 0.05)")
    p.add_argument("--exam-seeds", type=int, help="seeds of the final exam (default: select.exam_seeds, 5)")
    p.add_argument("--protocol", help=f"leak-free protocol of the race and the exam ({', '.join(leak_free_protocols())}; "
                   "default: select.protocol, refinery)")
    p.add_argument("--no-reeval", action="store_true", help="no race: the sweep's own (self-graded) pick")
    p.add_argument("--no-step-cache", action="store_true", help="compute every chain in full (default: share fold "
                   "trainings with the sweep's step cache)")
    p.add_argument("--register", action="store_true", help="train the final model on all data and register it")
    p.add_argument("--model-name", help="registered model name (default: the sweep name)")
    p.add_argument("--address", help="Ray cluster address: the race's and the exam's chains (and, with --register, "
                   "the final model) run as Ray tasks there (default: $RAY_ADDRESS, else a local Ray)")


def handle(args: argparse.Namespace) -> int:
    from sweeps.selection.best import BestOptions, choose_best

    choose_best(BestOptions(sweep=args.sweep, out=args.out, tracking_uri=args.tracking_uri, top_k=args.top_k,
                            seeds=args.seeds if args.seeds is not None else args.fresh_seeds, budget=args.budget,
                            alpha=args.alpha, exam_seeds=args.exam_seeds, protocol=args.protocol,
                            address=args.address, no_reeval=args.no_reeval, register=args.register,
                            model_name=args.model_name, step_cache=not args.no_step_cache,
                            command=getattr(args, "command_line", "")))
    return 0
