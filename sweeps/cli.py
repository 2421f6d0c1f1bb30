"""`dsl-sweep`: run one chain, validate a corpus, run a sweep, pick the best config, predict.

Heavy imports (torch, Ray, MLflow) happen inside each command so `dsl-sweep --help` is instant.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from dsl.config import SHORT_NAMES, field_default

# `dsl-sweep run` flags: short config names (`dsl.config.SHORT_NAMES`, `_` spelled `-`) and their help.
_RUN_FLAG_HELP: dict[str, str] = {
    "corpus": "corpus format",  # the registered names: registry_help
    "data": "corpus directory (or CSV manifest for --corpus csv)",
    "backbone": "backbone (small_cnn, efficientnet_b0, mobilenetv2_100, vgg19, densenet22)",
    "rule": "label rule",
    "alpha": "WDSL alpha (start value for annealing schedules)",
    "schedule": "alpha schedule",
    "alpha_end": "final alpha of an annealing schedule",
    "epsilon": "label-smoothing epsilon",
    "iterations": "number of label updates after iteration 0",
    "stage": "utterance stage: forest (8 statistics per class -> random forest) or acp (attentive correlation "
             "pooling; its options: --set stage.input=embedding|posterior, stage.epsilon, stage.dim, ...)",
    "protocol": "fold plan",
    "folds": "folds for out-of-sample posteriors (outer folds of held-out protocols)",
    "inner_folds": "inner folds of the nested and speaker protocols",
    "eval_folds": "random-forest CV folds",
    "epochs": "maximum epochs per training",
    "lr": "Adam learning rate",
    "batch_size": "training batch size",
    "segment_hop": "segment hop in frames (1 frame = 10 ms)",
    "device": "auto, cpu, cuda or cuda:N",
    "threads": "torch threads (0: torch default)",
    "seed": "random seed (folds, initialisation, forest)",
    "seeds": "replicate study: one chain per seed, e.g. 0,1,2,3,4 or 0-4 (mean and 95 %% interval)",
    "cache_dir": "feature cache directory (default $DSL_CACHE_DIR or ~/.cache/dsl-sweeps)",
    "bad_files": "fail or skip: what to do with unusable audio files",
}


def _flag_type(key: str) -> type:
    default = field_default(key)
    return type(default) if isinstance(default, (int, float, str)) else str  # a list (seeds) is parsed from a string


# Flag name -> (dotted config key, type, help). Only flags the user gave override the config.
RUN_FLAGS: dict[str, tuple[str, type, str]] = {
    name.replace("_", "-"): (SHORT_NAMES[name], _flag_type(SHORT_NAMES[name]), help_)
    for name, help_ in _RUN_FLAG_HELP.items()}


def registry_help() -> dict[str, str]:
    """Flag help that lists what is registered (the registries that import without torch; plugins named in a
    config are not imported yet, and their names are accepted too)."""
    from dsl.data.corpora import list_corpora
    from dsl.method.rules import RULES
    from dsl.method.schedules import SCHEDULES
    from dsl.protocols.plans import PROTOCOLS

    transductive = [n for n in PROTOCOLS.names() if not PROTOCOLS[n].leak_free]
    leak_free = [n for n in PROTOCOLS.names() if PROTOCOLS[n].leak_free]
    return {"corpus": f"corpus format ({', '.join(list_corpora())})",
            "rule": f"label rule ({', '.join(RULES.names())})",
            "schedule": f"alpha schedule ({', '.join(SCHEDULES.names())})",
            "protocol": f"fold plan: transductive {', '.join(transductive)}, or leak-free {', '.join(leak_free)} "
                        "(dsl.protocols.plans; plugins may register more)"}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    listed = registry_help()
    for flag, (_, typ, help_) in RUN_FLAGS.items():
        p.add_argument(f"--{flag}", type=typ, default=None, help=listed.get(flag, help_))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field by dotted name, e.g. --set train.patience=5 (a registered "
                        "rule's own parameter: --set labels.params.NAME=VALUE)")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, (key, _, _) in RUN_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"), None)
        if value is not None:
            out[key] = value
    for item in getattr(args, "set", []):
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        import yaml

        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from dsl.studies.run import run_from_cli

    return run_from_cli(args.config, args.preset, overrides_from(args), args.out, quiet=args.quiet,
                        command=args.command_line, seed_jobs=args.seed_jobs, resume=args.resume,
                        step_cache=args.step_cache, holdout=args.holdout or "")


def cmd_report(args: argparse.Namespace) -> int:
    from sweeps.sweep_report import report_from_cli

    return report_from_cli(args.results, args.out, args.figure, args.into, args.command_line, args.tracking_uri,
                           args.save_sweep, args.block, args.paired_with)


def cmd_agreement(args: argparse.Namespace) -> int:
    from dsl.results.listeners import agreement_from_cli

    return agreement_from_cli(args.results, args.listeners, args.out, args.into, args.block, args.command_line)


def cmd_validate(args: argparse.Namespace) -> int:
    from dsl.data.validate import validate_from_cli

    return validate_from_cli(args.data, args.corpus, args.report, args.folds)


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps.search.launcher import sweep_from_cli

    return sweep_from_cli(args)


def cmd_best(args: argparse.Namespace) -> int:
    from sweeps.selection.best import best_from_cli

    return best_from_cli(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from sweeps.predict import predict_from_cli

    return predict_from_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsl-sweep", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one DSL chain and print a per-iteration table")
    run.add_argument("config", nargs="?", help="YAML config (e.g. a best.yaml); flags override it")
    run.add_argument("--preset", choices=["cpu", "paper"], help="cpu: small CNN, 5 folds, 80 ms hop (minutes); "
                     "paper: EfficientNet-B0, 10 folds, 10 ms hop, paper epochs (days on a CPU)")
    run.add_argument("--out", default="results/run.json", help="where to write the JSON result")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    run.add_argument("--seed-jobs", type=int, default=0,
                     help="with --seeds: seeds run side by side (default: cores / (workers x threads))")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from <out stem>.state.npz (written after each iteration)")
    run.add_argument("--step-cache", default="", metavar="DIR",
                     help="reuse fold trainings and scores kept in DIR by earlier runs with the same data, recipe, "
                          "code and machine, and keep this run's there (off by default)")
    run.add_argument("--holdout", metavar="FILE_OR_SPEC",
                     help="final exam: train on every utterance outside a holdout (with the protocol's own inner "
                          "structure) and score the held-out ones only; a holdout assignment JSON, or a rule such as "
                          "\"{speakers: ['03', '08']}\", \"{speaker_fraction: 0.2}\" or \"{fraction: 0.2, seed: 0}\" "
                          "(stored once as <out stem>.holdout.json)")
    add_run_flags(run)
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a corpus for bad audio and labels, report all problems at once")
    val.add_argument("data", help="corpus directory or CSV manifest")
    val.add_argument("--corpus", default="emodb", help="corpus format")
    val.add_argument("--folds", type=int, default=0, help="also check every class has at least this many utterances")
    val.add_argument("--report", help="write the report as JSON here")
    val.set_defaults(func=cmd_validate)

    sw = sub.add_parser("sweep", help="run a hyperparameter sweep from a YAML file (Ray Tune + Optuna + MLflow)")
    sw.add_argument("file", help="sweep definition YAML")
    sw.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--storage-path", help="where trial checkpoints live (shared FS or s3://... on a cluster)")
    sw.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    sw.add_argument("--data", help="override the corpus path of the sweep file")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep with the same Optuna study")
    sw.add_argument("--trials", type=int, help="override the number of trials")
    sw.add_argument("--objective-seeds", type=int, metavar="R",
                    help="run every trial on the same R seeds and judge it by their mean (overrides objective_seeds)")
    sw.add_argument("--no-step-cache", action="store_true",
                    help="compute every trial's chain in full (default: trials share fold trainings and scores "
                         "through <storage>/step_cache)")
    sw.set_defaults(func=cmd_sweep)

    best = sub.add_parser("best", help="race the sweep's top configurations on fresh seeds (leak-free, paired, "
                                        "corrected for multiple comparisons), sit the winner and a reference for the "
                                        "final exam on the sweep's holdout, and write the winner as best.yaml")
    best.add_argument("sweep", help="sweep name (MLflow experiment) or sweep YAML file")
    best.add_argument("--tracking-uri", help="MLflow tracking URI")
    best.add_argument("--out", default="best.yaml", help="where to write the best config (the race's and the exam's "
                      "chains and selection.json go to <out stem>_selection/; rerun to resume)")
    best.add_argument("--top-k", type=int, help="configurations in the race (default: the sweep's select.top_k, 5)")
    best.add_argument("--seeds", type=int, help="fresh seeds per configuration at most (default: select.seeds, 10)")
    best.add_argument("--fresh-seeds", type=int, help=argparse.SUPPRESS)  # the earlier name of --seeds
    best.add_argument("--budget", type=int, help="chains the race may run in all (default: select.budget, none)")
    best.add_argument("--alpha", type=float, help="family-wise error of the race's tests (default: select.alpha, 0.05)")
    best.add_argument("--exam-seeds", type=int, help="seeds of the final exam (default: select.exam_seeds, 5)")
    from dsl.protocols.plans import leak_free_protocols

    best.add_argument("--protocol", help=f"leak-free protocol of the race and the exam ({', '.join(leak_free_protocols())}; "
                      "default: select.protocol, refinery)")
    best.add_argument("--no-reeval", action="store_true", help="no race: the sweep's own (self-graded) pick")
    best.add_argument("--no-step-cache", action="store_true", help="compute every chain in full (default: share fold "
                      "trainings with the sweep's step cache)")
    best.add_argument("--register", action="store_true", help="train the final model on all data and register it")
    best.add_argument("--model-name", help="registered model name (default: the sweep name)")
    best.add_argument("--address", help="Ray cluster address: the race's and the exam's chains (and, with --register, "
                      "the final model) run as Ray tasks there (default: $RAY_ADDRESS, else a local Ray)")
    best.set_defaults(func=cmd_best)

    rep = sub.add_parser("report", help="render result JSONs (runs, replicate studies) or a sweep's runs (the "
                         "paper's tables II-IV) as Markdown tables")
    rep.add_argument("results", nargs="+", help="result JSON files of `dsl-sweep run` (with or without --seeds), "
                     "sweep exports, or a sweep name (read from MLflow)")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI for a sweep name (default: $MLFLOW_TRACKING_URI, "
                     "else sqlite:///mlflow.db)")
    rep.add_argument("--block", default="", help="with --into: fill the block whose markers carry this name "
                     "(`<!-- dsl-sweep report: begin NAME -->`), for documents with several")
    rep.add_argument("--save-sweep", help="write the sweep's trials read from MLflow to this JSON (commit it: "
                     "`dsl-sweep report FILE` renders the same tables)")
    rep.add_argument("--paired-with", metavar="STUDY", action="append", default=[],
                     help="a replicate study whose iteration 0 is the baseline (repeatable: one per corpus/protocol/"
                          "test corpus): each study row in that setting also gets its UA minus that baseline, paired "
                          "by seed (method comparisons on the same folds and seeds)")
    rep.add_argument("--out", help="also write the Markdown here")
    rep.add_argument("--figure", help="plot UA per iteration to this PNG (studies: mean and 95 %% interval; a "
                     "sweep: mean per rule)")
    rep.add_argument("--into", help="replace the block between the report markers of this Markdown file "
                     "(the pages under docs/ are made this way)")
    rep.set_defaults(func=cmd_report)

    agr = sub.add_parser("agreement", help="listener agreement per iteration: Spearman of EmoDB's recognition rates "
                         "with the model's confidence and the DSL targets' entropy")
    agr.add_argument("results", nargs="+", help="run JSONs, replicate studies (their .seeds/ folders are read)")
    agr.add_argument("--listeners", help="EmoDB's erkennung.txt (default: beside the results' data folder)")
    agr.add_argument("--out", help="also write the Markdown here")
    agr.add_argument("--into", help="replace a report block of this Markdown file")
    agr.add_argument("--block", default="", help="the block's name (`<!-- dsl-sweep report: begin NAME -->`)")
    agr.set_defaults(func=cmd_agreement)

    pred = sub.add_parser("predict", help="predict the emotion of utterances with a trained model")
    pred.add_argument("model", help="model directory or MLflow model URI (models:/NAME/VERSION)")
    pred.add_argument("wav", nargs="+", help="audio files")
    pred.add_argument("--tracking-uri", help="MLflow tracking URI")
    pred.add_argument("--contour", help="save the segment-posterior contour plot(s) to this folder")
    pred.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "dsl-sweep " + shlex.join(argv)  # recorded in result JSONs, so each row can be rerun
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from dsl.config import ConfigError
    from dsl.data.audio import BadAudioError
    from dsl.data.corpora import CorpusError
    from dsl.execution.fold_runners import FoldWorkerError
    from tracking.client import TrackingUnavailable

    try:
        return int(args.func(args) or 0)
    except (ConfigError, BadAudioError, CorpusError, TrackingUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FoldWorkerError as exc:  # a fold worker died (OOM killer, unguarded script): no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
