"""`dsl-sweep sweep FILE`: a Ray Tune + Optuna + MLflow sweep -> `sweeps.search.launcher.launch_sweep`."""
from __future__ import annotations

import argparse

from tracking.client import DEFAULT_URI_TEXT

HELP = "run a hyperparameter sweep from a YAML file (Ray Tune + Optuna + MLflow)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="sweep definition YAML")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage-path", help="where trial checkpoints live (shared FS or s3://... on a cluster)")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default: {DEFAULT_URI_TEXT})")
    p.add_argument("--data", help="override the corpus path of the sweep file")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep with the same Optuna study")
    p.add_argument("--trials", type=int, help="override the number of trials")
    p.add_argument("--objective-seeds", type=int, metavar="R",
                   help="run every trial on the same R seeds and judge it by their mean (overrides objective_seeds)")
    p.add_argument("--no-step-cache", action="store_true",
                   help="compute every trial's chain in full (default: trials share fold trainings and scores "
                        "through <storage>/step_cache)")


def handle(args: argparse.Namespace) -> int:
    from sweeps.cli.errors import EXIT_INTERRUPTED, EXIT_PROBLEMS
    from sweeps.search.launcher import launch_sweep

    outcome = launch_sweep(args.file, data=args.data, storage_path=args.storage_path, trials=args.trials,
                           step_cache=False if args.no_step_cache else None, address=args.address,
                           tracking_uri=args.tracking_uri, resume=args.resume, objective_seeds=args.objective_seeds)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PROBLEMS if outcome.errors else 0
