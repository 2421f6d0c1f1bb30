"""`dsl-sweep run`: config -> data -> chain, with a per-iteration table and a JSON result."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .chain import ChainResult, IterationResult, run_chain
from .checks import check_config, check_data
from .config import ChainConfig, load_config
from .data import load_corpus_for, prepare_data

log = logging.getLogger(__name__)

HEADER = f"{'iter':>4} {'alpha':>6} {'WA %':>7} {'UA %':>7} {'seg acc %':>9} {'changed %':>9} {'epochs':>6} {'time s':>7}"


def format_row(r: IterationResult) -> str:
    alpha = "-" if r.alpha is None else f"{r.alpha:.2f}"
    return (f"{r.iteration:>4} {alpha:>6} {100 * r.wa:>7.2f} {100 * r.ua:>7.2f} {100 * r.segment_accuracy:>9.2f} "
            f"{100 * r.changed_label_share:>9.2f} {r.epochs:>6.1f} {r.seconds:>7.1f}")


def run(cfg: ChainConfig, show_progress: bool = True, on_iteration=None) -> ChainResult:
    """Check the config, load the corpus and features, run the chain: the one-call Python API."""
    check_config(cfg)
    corpus, skipped = load_corpus_for(cfg)
    check_data(cfg, corpus.labels, np.asarray(corpus.speakers), corpus.label_names)
    data = prepare_data(cfg, corpus, show_progress, skipped)
    check_data(cfg, data.labels, data.speakers, data.label_names)  # skipped audio may shrink a class
    return run_chain(cfg, data, show_progress=show_progress, on_iteration=on_iteration)


def write_result(result: ChainResult, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2))
    tmp.replace(out)
    return out


def write_plots(result: ChainResult, json_path: Path) -> list[Path]:
    """WA/UA per iteration and the best iteration's confusion matrix, next to the JSON result."""
    from . import plots

    history = [r.to_dict() for r in result.iterations]
    best = result.best()
    stem = json_path.with_suffix("")
    return [
        plots.accuracy_plot(history, f"{stem}_accuracy.png",
                            f"{result.config.protocol.name}, {result.config.labels.rule}, seed {result.config.seed}"),
        plots.confusion_plot(best.confusion, result.label_names, f"{stem}_confusion.png",
                             f"iteration {best.iteration}: UA {100 * best.ua:.1f} %"),
    ]


def run_from_cli(config_path: str | None, preset: str | None, overrides: Mapping[str, Any], out: str,
                 quiet: bool = False) -> int:
    cfg = load_config(config_path, preset, overrides)
    if not cfg.data:
        from .config import ConfigError

        raise ConfigError("no data path: give --data DIR (or `data:` in the config file)")
    print(f"corpus {cfg.corpus} at {cfg.data} | backbone {cfg.backbone} | rule {cfg.labels.rule} "
          f"| protocol {cfg.protocol.name} ({cfg.protocol.folds} folds) | iterations {cfg.iterations} "
          f"| seed {cfg.seed}", flush=True)
    start = time.perf_counter()
    printed_header = []

    def show(r: IterationResult) -> None:
        if not printed_header:
            print(HEADER, flush=True)
            printed_header.append(True)
        print(format_row(r), flush=True)

    result = run(cfg, show_progress=not quiet, on_iteration=show)
    path = write_result(result, out)
    figures = write_plots(result, path)
    best = result.best()
    print(f"best iteration {best.iteration}: WA {100 * best.wa:.2f} %, UA {100 * best.ua:.2f} % "
          f"| {result.n_utterances} utterances, {result.n_segments} segments | {time.perf_counter() - start:.0f} s "
          f"| result: {path}", flush=True)
    print("plots: " + ", ".join(str(f) for f in figures), flush=True)
    return 0
