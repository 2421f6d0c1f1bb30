"""`dsl-sweep run`: config -> data -> chain, with a per-iteration table and a JSON result."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsl.config import ChainConfig, ConfigError, load_config
from dsl.data.bundle import CorpusData, load_corpus_for, prepare_data
from dsl.data.segments import build_segments
from dsl.execution.step_cache import StepCache
from dsl.pipeline.chain import ChainResult, ChainState, IterationResult, iterate_chain, run_chain
from dsl.pipeline.checks import check_config, check_data
from dsl.protocols.plans import outer_partition, plan_leak_free
from dsl.results.study import comparable_config, seeds_dir, write_json
from dsl.runtime.environment import machine_info
from dsl.runtime.notes import add_note
from dsl.runtime.paths import WriteTarget, require_writable, rescue_dirs, write_elsewhere
from dsl.studies.replicates import default_jobs, run_replicates

log = logging.getLogger(__name__)

HEADER = (f"{'iter':>4} {'alpha':>6} {'WA %':>7} {'UA %':>7} {'sel UA %':>8} {'seg acc %':>9} {'changed %':>9} "
          f"{'epochs':>6} {'time s':>7}")


def format_row(r: IterationResult) -> str:
    """One row of the per-iteration table; `sel UA` is the validation-selected UA so far (held out only)."""
    alpha = "-" if r.alpha is None else f"{r.alpha:.2f}"
    sel = "-" if r.selected_ua is None else f"{100 * r.selected_ua:.2f}"
    row = (f"{r.iteration:>4} {alpha:>6} {100 * r.wa:>7.2f} {100 * r.ua:>7.2f} {sel:>8} {100 * r.segment_accuracy:>9.2f} "
           f"{100 * r.changed_label_share:>9.2f} {r.epochs:>6.1f} {r.seconds:>7.1f}")
    if r.conditions:  # eval.noise / eval.adversarial
        row += "\n     UA % under: " + ", ".join(f"{name} {100 * c['ua']:.2f}" for name, c in r.conditions.items())
    return row


def stage_text(cfg: ChainConfig) -> str:
    """The utterance stage as the run's header names it, e.g. `forest` or `acp (embedding, eps 0.1, dim 32)`, with
    what a held-out scope's stage trains and predicts on (`stage.fit_on`, `stage.test_views`)."""
    st = cfg.stage
    text = st.name if st.name != "acp" else f"acp ({st.input}, eps {st.epsilon:g}, dim {st.dim})"
    if plan_leak_free(cfg.protocol):
        text += f" (fit_on {st.fit_on}, test_views {st.test_views if st.name == 'forest' else 'each'})"
    return text


def outer_text(pr) -> str:
    """How the run's outer folds are cut, in the words of its header."""
    how = outer_partition(pr)
    return {"balanced": "outer folds balanced by file or speaker identity and the seed, no label read",
            "stratified": "outer folds stratified by label: every label is read, the test folds' too",
            "assignment": f"outer folds from {pr.assignment}",
            "test corpus": "outer fold: the test corpus",
            "holdout": f"one scored fold: the holdout {pr.holdout}"}[how]


def protocol_line(cfg: ChainConfig) -> str:
    """How to read the numbers: the protocol, and whether test labels can reach them."""
    pr = cfg.protocol
    if plan_leak_free(pr):
        how = ("leak_free: true; each utterance is scored by a forest and networks that never saw its label, "
               "and the reported iteration is picked per outer fold on its training utterances")
    else:
        how = ("leak_free: false (transductive): test-fold labels reach later iterations' targets and the "
               "forest is cross-validated over all utterances; the reported iteration is the final one")
    if pr.holdout:
        line = (f"protocol {pr.name}, final exam on the holdout {pr.holdout}: trained on every other utterance with "
                f"{pr.name}'s inner structure, scored on the held-out utterances only | leak_free: true; no held-out "
                "label reaches targets, forest or the choice of iteration")
    elif pr.name == "cross_corpus":
        line = (f"protocol cross_corpus: trained on {cfg.corpus} ({cfg.data}), tested on {pr.test_corpus} "
                f"({pr.test_data}), shared classes only | {how.replace('per outer fold', 'by a forest CV')}")
    else:
        line = f"protocol {pr.name} ({pr.folds} folds; {outer_text(pr)}) | {how}"
    if cfg.eval.enabled:
        from dsl.robustness.conditions import condition_names

        line += (f" | also scored under {len(condition_names(cfg.eval))} test condition(s) "
                 f"({', '.join(condition_names(cfg.eval))}): only test utterances are perturbed")
    if cfg.train.aux == "mtl_aug" and cfg.train.aux_data:
        line += (f" | train.aux_data: {cfg.train.aux_data} (unlabelled audio for MTL-AUG's auxiliary tasks only; no "
                 "label is read, but audio of the test utterances there makes training transductive in the audio)")
    return line


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


def state_file(out: str | Path) -> Path:
    """Where `dsl-sweep run` keeps the chain state while its run is unfinished: `<out stem>.state.npz`."""
    p = Path(out)
    return p.with_name(p.stem + ".state.npz")


def _save_state(state: ChainState, cfg: ChainConfig, path: Path) -> None:
    """Atomic, like the JSON: a resume never reads half a state (with the config it was computed with)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        dataclasses.replace(state, config=cfg.to_dict()).save(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # on a read-only disk the clean-up fails too: the first error counts
            tmp.unlink(missing_ok=True)
        raise


def _keep(state: ChainState, cfg: ChainConfig, partial: dict, out: Path) -> None:
    """The chain state and the result so far, where `dsl-sweep run --resume` reads them."""
    _save_state(state, cfg, state_file(out))
    write_json(partial, out)


def _keep_elsewhere(exc: OSError, state: ChainState, cfg: ChainConfig, partial: dict, out: Path) -> None:
    """`out` cannot be written (any more): put the state and result in a rescue folder, and say where on `exc`."""
    n = len(partial["iterations"])
    folder = write_elsewhere(lambda d: _keep(state, cfg, partial, d / out.name), out.stem)
    if folder is None:
        add_note(exc, f"no rescue folder ({', '.join(map(str, rescue_dirs()))}) could be written either: the {n} "
                      "finished iteration(s) are lost")
        return
    add_note(exc, f"the {n} finished iteration(s) are kept in {folder}/ ({state_file(out).name}, {out.name}): copy "
                  f"them beside {out} and rerun the same command with --resume")


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def load_state_for(cfg: ChainConfig, path: Path) -> ChainState:
    """The saved state, if it was computed with this config (execution-only settings such as
    `train.workers` may differ: they do not change the numbers); else a ConfigError naming the file."""
    try:
        state = ChainState.load(path)
    except Exception as exc:
        raise ConfigError(f"--resume: cannot read the chain state {path} ({exc}); delete it or rerun "
                          "without --resume to start over") from exc
    if state.config is None:
        raise ConfigError(f"--resume: {path} does not record the config it was computed with; rerun without "
                          "--resume to start over")
    theirs, ours = comparable_config(state.config), comparable_config(cfg.to_dict())
    if theirs != ours:
        raise ConfigError(f"--resume: {path} was computed with another config (differs in: "
                          f"{', '.join(_differences(theirs, ours))}); resume with the config it was computed with, "
                          "or rerun without --resume to start over")
    return state


def run_resumable(cfg: ChainConfig, data: CorpusData, out: str | Path, resume: bool = False,
                  show_progress: bool = True, on_iteration=None, command: str = "",
                  step_cache: StepCache | None = None) -> ChainResult:
    """`run_chain` for `dsl-sweep run`, kept on disk as it goes and continued with `resume`.

    After each iteration the chain state goes to `state_file(out)` and the finished iterations to `out`
    (`"finished": false`), both atomically; at the end `out` holds the same result an uninterrupted run
    writes (`"finished": true`) and the state file is removed. `seconds` adds up the iterations read back
    and this run's. `on_iteration` sees the iterations read back too.
    """
    out = Path(out)
    spath = state_file(out)
    state: ChainState | None = None
    if resume and spath.is_file():
        state = load_state_for(cfg, spath)
        print(f"resuming from {spath}: {state.next_iteration} finished iteration(s) read back", flush=True)
    elif resume:
        print(f"--resume: no chain state at {spath}, running from the start", flush=True)
    elif spath.is_file():
        print(f"ignoring the chain state of an unfinished earlier run at {spath} (no --resume): it will be "
              "overwritten", flush=True)
    results = [IterationResult(**d) for d in (state.history if state else [])]
    for r in results:
        if on_iteration:
            on_iteration(r)
    earlier = sum(r.seconds for r in results)
    n_segments = build_segments(data.frame_offsets, cfg.segments, warn=False).n_segments
    environment = machine_info()
    start = time.perf_counter()

    def result_so_far() -> ChainResult:
        return ChainResult(cfg, data.label_names, list(results), data.n_utterances, n_segments,
                           earlier + time.perf_counter() - start, dict(data.skipped), plan_leak_free(cfg.protocol),
                           environment, command)

    kept = len(results)
    last = state
    chain = iterate_chain(cfg, data, state, show_progress=show_progress, step_cache=step_cache)
    try:
        for result, last in chain:  # the next iteration's folds are running meanwhile
            results.append(result)
            partial = {**result_so_far().to_dict(), "finished": False}
            try:
                _keep(last, cfg, partial, out)
            except OSError as exc:
                _keep_elsewhere(exc, last, cfg, partial, out)
                kept = -1  # said where they are
                raise
            kept = len(results)
            if on_iteration:
                on_iteration(result)
    except BaseException as exc:
        if kept > 0:
            add_note(exc, f"{kept} finished iteration(s) kept in {spath} (and {out}): rerun the same command with "
                          "--resume to continue")
        elif kept == 0:
            add_note(exc, "no iteration had finished: nothing to resume")
        raise
    finally:
        chain.close()
    final = result_so_far()
    try:
        write_json({**final.to_dict(), "finished": True}, out)
    except OSError as exc:
        if last is not None:
            _keep_elsewhere(exc, last, cfg, {**final.to_dict(), "finished": False}, out)
        raise
    with contextlib.suppress(FileNotFoundError):
        spath.unlink()
    return final


def write_plots(result: ChainResult, json_path: Path) -> list[Path]:
    """WA/UA per iteration and the final iteration's confusion matrix, next to the JSON result."""
    from dsl.results import plots

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
          f"{result.config.protocol.name}, leak_free: {str(result.leak_free).lower()} | stage "
          f"{stage_text(result.config)} | {result.n_utterances} "
          f"utterances, {result.n_segments} segments | {seconds:.0f} s | result: {path}", flush=True)


def resolve_holdout(cfg: ChainConfig, holdout: str, out: str | Path) -> ChainConfig:
    """`--holdout FILE_OR_SPEC`: a stored assignment file as it is, or a rule (YAML, e.g. `{speakers: ['03']}`)
    applied to the corpus once and stored beside the result (`<out stem>.holdout.json`, or the rule's own
    `assignment` path), so a rerun reads the same split."""
    if not holdout:
        return cfg
    if Path(holdout).is_file():
        return cfg.replace(**{"protocol.holdout": str(Path(holdout).resolve())})
    from dsl.protocols.holdout import make_holdout, parse_holdout

    spec = parse_holdout(holdout, where="--holdout")
    path = Path(spec.assignment or Path(out).with_name(Path(out).stem + ".holdout.json")).resolve()
    corpus, _ = load_corpus_for(cfg)
    made = make_holdout(spec, corpus.paths, corpus.speakers, corpus.labels, path)
    print(f"holdout: {spec.how}: {len(made.files)} of {len(corpus)} utterances | assignment {path}", flush=True)
    return cfg.replace(**{"protocol.holdout": str(path)})


def outputs_of(cfg: ChainConfig, out: str | Path, step_cache: str = "", holdout: str = "") -> list[WriteTarget]:
    """What `run_to_file` writes: the result (and beside it the chain state and plots), a study's seed files,
    the step cache, a holdout rule's assignment. The feature cache is checked where it is known whether it must
    be written."""
    targets = [WriteTarget.file(out, "--out")]
    if holdout and not Path(holdout).is_file():
        targets.append(WriteTarget.file(Path(out).with_name(Path(out).stem + ".holdout.json"),
                                        "the holdout assignment"))
    if cfg.seeds:
        targets.append(WriteTarget.dir(seeds_dir(out), "the study's seed folder"))
    if step_cache:
        targets.append(WriteTarget.dir(step_cache, "--step-cache"))
    return targets


def run_to_file(config_path: str | None, preset: str | None, overrides: Mapping[str, Any], out: str,
                quiet: bool = False, command: str = "", seed_jobs: int = 0, resume: bool = False,
                step_cache: str = "", holdout: str = "") -> ChainResult | dict:
    """`dsl-sweep run`: one chain (its `ChainResult`) or, with seeds, a replicate study (its dict), written to
    `out` as it goes, with a per-iteration table on stdout; `step_cache` (a directory) reuses the fold trainings
    and scores an earlier run with the same data, recipe, code and machine computed; `holdout` (an assignment
    file or a rule) trains on the rest and scores the held-out utterances only. Every path it writes is checked
    before any work starts."""
    cfg = load_config(config_path, preset, overrides)
    if not cfg.data:
        raise ConfigError("no data path: give --data DIR (or `data:` in the config file)")
    require_writable(outputs_of(cfg, out, step_cache, holdout))
    steps = StepCache(step_cache) if step_cache else None
    cfg = resolve_holdout(cfg, holdout, out)
    seeds = f"seeds {', '.join(map(str, cfg.seeds))}" if cfg.seeds else f"seed {cfg.seed}"
    print(f"corpus {cfg.corpus} at {cfg.data} | backbone {cfg.backbone} | rule {cfg.labels.rule} "
          f"| stage {stage_text(cfg)} | iterations {cfg.iterations} | {seeds}\n{protocol_line(cfg)}", flush=True)
    if cfg.seeds:
        if resume:
            print(f"--resume: ignored with --seeds (a study always resumes: each finished seed in {seeds_dir(out)}/ "
                  "is read back)", flush=True)
        return _study_to_files(cfg, out, quiet, command, seed_jobs, steps)
    start = time.perf_counter()
    printed_header = []

    def show(r: IterationResult) -> None:
        if not printed_header:
            print(HEADER, flush=True)
            printed_header.append(True)
        print(format_row(r), flush=True)

    data = load_checked(cfg, not quiet)
    result = run_resumable(cfg, data, out, resume, show_progress=not quiet, on_iteration=show, command=command,
                           step_cache=steps)
    path = Path(out)
    try:
        figures = write_plots(result, path)
    except OSError as exc:
        add_note(exc, f"the result is complete in {path}; only its plots could not be written")
        raise
    _print_reported(result, path, time.perf_counter() - start)
    print("plots: " + ", ".join(str(f) for f in figures), flush=True)
    return result


def _study_to_files(cfg: ChainConfig, out: str, quiet: bool, command: str, seed_jobs: int,
                    steps: StepCache | None = None) -> dict:
    from dsl.results.report import format_study

    data = load_checked(cfg, not quiet)
    jobs = seed_jobs or default_jobs(cfg)
    print(f"replicate study: {len(cfg.seeds)} seeds, {jobs} at a time; each seed's result goes to "
          f"{seeds_dir(out)}/ as soon as it is done (rerun the same command to resume)", flush=True)

    def done(seed: int, d: dict, from_disk: bool) -> None:
        rep = d.get("reported") or {}
        took = "read back from disk" if from_disk else f"{d['seconds']:.0f} s"
        print(f"seed {seed}: {took} | reported WA "
              f"{100 * rep.get('wa', float('nan')):.2f} %, UA {100 * rep.get('ua', float('nan')):.2f} %", flush=True)

    study = run_replicates(cfg, data, out, jobs=jobs, show_progress=not quiet, command=command, on_seed=done,
                           step_cache=steps)
    print(format_study(study), flush=True)
    print(f"study: {out}", flush=True)
    return study
