"""`dsl-sweep run`: one DSL chain (or, with --seeds, a replicate study) -> `dsl.studies.run.run_to_file`."""
from __future__ import annotations

import argparse
from typing import Any

from dsl.config import SHORT_NAMES, field_default

HELP = "run one DSL chain and print a per-iteration table"

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
    """The config overrides the user gave: the short flags, then each --set KEY=VALUE (a YAML value)."""
    import yaml

    out: dict[str, Any] = {}
    for flag, (key, _, _) in RUN_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"), None)
        if value is not None:
            out[key] = value
    for item in getattr(args, "set", []):
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (e.g. a best.yaml); flags override it")
    p.add_argument("--preset", choices=["cpu", "paper"], help="cpu: small CNN, 5 folds, 80 ms hop (minutes); "
                   "paper: EfficientNet-B0, 10 folds, 10 ms hop, paper epochs (days on a CPU)")
    p.add_argument("--out", default="results/run.json", help="where to write the JSON result")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--seed-jobs", type=int, default=0,
                   help="with --seeds: seeds run side by side (default: cores / (workers x threads))")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from <out stem>.state.npz (written after each iteration)")
    p.add_argument("--step-cache", default="", metavar="DIR",
                   help="reuse fold trainings and scores kept in DIR by earlier runs with the same data, recipe, "
                        "code and machine, and keep this run's there (off by default)")
    p.add_argument("--holdout", metavar="FILE_OR_SPEC",
                   help="final exam: train on every utterance outside a holdout (with the protocol's own inner "
                        "structure) and score the held-out ones only; a holdout assignment JSON, or a rule such as "
                        "\"{speakers: ['03', '08']}\", \"{speaker_fraction: 0.2}\" or \"{fraction: 0.2, seed: 0}\" "
                        "(stored once as <out stem>.holdout.json)")
    add_run_flags(p)


def handle(args: argparse.Namespace) -> int:
    from dsl.studies.run import run_to_file

    run_to_file(args.config, args.preset, overrides_from(args), args.out, quiet=args.quiet,
                command=args.command_line, seed_jobs=args.seed_jobs, resume=args.resume, step_cache=args.step_cache,
                holdout=args.holdout or "")
    return 0
