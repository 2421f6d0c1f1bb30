"""`dsl-sweep run`: config -> data -> chain, with a per-iteration table and a JSON result."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .chain import ChainResult, IterationResult, run_chain
from .checks import check_config, check_data
from .config import ChainConfig, load_config
from .data import CorpusData, load_corpus_for, prepare_data
from .protocols import is_leak_free
from .replicates import default_jobs, run_replicates, seeds_dir, write_json

log = logging.getLogger(__name__)

HEADER = (f"{'iter':>4} {'alpha':>6} {'WA %':>7} {'UA %':>7} {'sel UA %':>8} {'seg acc %':>9} {'changed %':>9} "
          f"{'epochs':>6} {'time s':>7}")


def format_row(r: IterationResult) -> str:
    """One row of the per-iteration table; `sel UA` is the validation-selected UA so far (held out only)."""
    alpha = "-" if r.alpha is None else f"{r.alpha:.2f}"
    sel = "-" if r.selected_ua is None else f"{100 * r.selected_ua:.2f}"
    return (f"{r.iteration:>4} {alpha:>6} {100 * r.wa:>7.2f} {100 * r.ua:>7.2f} {sel:>8} {100 * r.segment_accuracy:>9.2f} "
            f"{100 * r.changed_label_share:>9.2f} {r.epochs:>6.1f} {r.seconds:>7.1f}")


def protocol_line(cfg: ChainConfig) -> str:
    """How to read the numbers: the protocol, and whether test labels can reach them."""
    pr = cfg.protocol
    if is_leak_free(pr.name):
        how = ("leak_free: true; each utterance is scored by a forest and networks that never saw its label, "
               "and the reported iteration is picked per outer fold on its training utterances")
    else:
        how = ("leak_free: false (transductive): test-fold labels reach later iterations' targets and the "
               "forest is cross-validated over all utterances; the reported iteration is the final one")
    return f"protocol {pr.name} ({pr.folds} folds) | {how}"


def run(cfg: ChainConfig, show_progress: bool = True, on_iteration=None) -> ChainResult:
    """Check the config, load the corpus and features, run the chain: the one-call Python API."""
    data = load_checked(cfg, show_progress)
    return run_chain(cfg, data, show_progress=show_progress, on_iteration=on_iteration)


def load_checked(cfg: ChainConfig, show_progress: bool = True) -> CorpusData:
    """Check the config, parse the corpus, check it fits, load (or extract once) its features."""
    check_config(cfg)
    corpus, skipped = load_corpus_for(cfg)
    check_data(cfg, corpus.labels, np.asarray(corpus.speakers), corpus.label_names)
    data = prepare_data(cfg, corpus, show_progress, skipped)
    check_data(cfg, data.labels, data.speakers, data.label_names)  # skipped audio may shrink a class
    return data


def write_result(result: ChainResult, out: str | Path) -> Path:
    return write_json(result.to_dict(), out)


def write_plots(result: ChainResult, json_path: Path) -> list[Path]:
    """WA/UA per iteration and the final iteration's confusion matrix, next to the JSON result."""
    from . import plots

    history = [r.to_dict() for r in result.iterations]
    final = result.iterations[-1]
    stem = json_path.with_suffix("")
    pr = result.config.protocol
    return [
        plots.accuracy_plot(history, f"{stem}_accuracy.png",
                            f"{pr.name} ({'leak-free' if result.leak_free else 'transductive'}), "
                            f"{result.config.labels.rule}, seed {result.config.seed}"),
        plots.confusion_plot(final.confusion, result.label_names, f"{stem}_confusion.png",
                             f"{pr.name}, iteration {final.iteration}: UA {100 * final.ua:.1f} %"),
    ]


def _print_reported(result: ChainResult, path: Path, seconds: float) -> None:
    rep = result.reported()
    last = result.iterations[-1]
    which = (f"validation-selected iterations {last.selected_iterations}" if last.selected_iterations is not None
             else f"final iteration {last.iteration}")
    print(f"reported ({which}): WA {100 * rep['wa']:.2f} %, UA {100 * rep['ua']:.2f} % | protocol "
          f"{result.config.protocol.name}, leak_free: {str(result.leak_free).lower()} | {result.n_utterances} "
          f"utterances, {result.n_segments} segments | {seconds:.0f} s | result: {path}", flush=True)


def run_from_cli(config_path: str | None, preset: str | None, overrides: Mapping[str, Any], out: str,
                 quiet: bool = False, command: str = "", seed_jobs: int = 0) -> int:
    cfg = load_config(config_path, preset, overrides)
    if not cfg.data:
        from .config import ConfigError

        raise ConfigError("no data path: give --data DIR (or `data:` in the config file)")
    seeds = f"seeds {', '.join(map(str, cfg.seeds))}" if cfg.seeds else f"seed {cfg.seed}"
    print(f"corpus {cfg.corpus} at {cfg.data} | backbone {cfg.backbone} | rule {cfg.labels.rule} "
          f"| iterations {cfg.iterations} | {seeds}\n{protocol_line(cfg)}", flush=True)
    if cfg.seeds:
        return _study_from_cli(cfg, out, quiet, command, seed_jobs)
    start = time.perf_counter()
    printed_header = []

    def show(r: IterationResult) -> None:
        if not printed_header:
            print(HEADER, flush=True)
            printed_header.append(True)
        print(format_row(r), flush=True)

    result = run(cfg, show_progress=not quiet, on_iteration=show)
    result.command = command
    path = write_result(result, out)
    figures = write_plots(result, path)
    _print_reported(result, path, time.perf_counter() - start)
    print("plots: " + ", ".join(str(f) for f in figures), flush=True)
    return 0


def _study_from_cli(cfg: ChainConfig, out: str, quiet: bool, command: str, seed_jobs: int) -> int:
    from .report import format_study

    data = load_checked(cfg, not quiet)
    jobs = seed_jobs or default_jobs(cfg)
    print(f"replicate study: {len(cfg.seeds)} seeds, {jobs} at a time; each seed's result goes to "
          f"{seeds_dir(out)}/ as soon as it is done (rerun the same command to resume)", flush=True)

    def done(seed: int, d: dict, from_disk: bool) -> None:
        rep = d.get("reported") or {}
        took = "read back from disk" if from_disk else f"{d['seconds']:.0f} s"
        print(f"seed {seed}: {took} | reported WA "
              f"{100 * rep.get('wa', float('nan')):.2f} %, UA {100 * rep.get('ua', float('nan')):.2f} %", flush=True)

    study = run_replicates(cfg, data, out, jobs=jobs, show_progress=not quiet, command=command, on_seed=done)
    print(format_study(study), flush=True)
    print(f"study: {out}", flush=True)
    return 0
