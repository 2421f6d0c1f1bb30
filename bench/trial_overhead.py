"""Where a trial's time goes in Ray Tune, and the per-trial overhead as a share of a `cpu` chain.

The project's trainable (`trainables.chain_trainable.train_chain`, with MLflow tracking to a SQLite store,
as a sweep runs it) is wrapped by `profiled_chain`, which records when its process started, when Tune
called it and when it returned, and runs it under cProfile. A driver callback records when Tune started
and completed each trial. `k` trials run one after another in one Tuner (actors reused, as in a sweep),
so the first trial shows the cost of a new trial process and the later ones the steady state.

Per trial (driver clock): `trial wall` = on_trial_complete - on_trial_start; `chain` = the time spent
in `iterate_chain` (training, evaluation, label updates) inside the trial; everything else is overhead,
split by the profile into imports, MLflow, plots, Tune reporting/checkpointing and the rest. The share
is `overhead / wall of a cpu-preset chain run directly` in the same run (as a user runs it: 2 workers).

The first trial of a process pays the process: Ray actor start, imports (torch, scikit-learn, MLflow,
matplotlib), MLflow's SQLite store, matplotlib's first figure. Tune reuses the process for the next trial
with the same resources (`reuse_actors=True`), so a sweep of n trials, c at a time, pays that c times.
"""
from __future__ import annotations

import cProfile
import json
import os
import pstats
import time
from pathlib import Path
from typing import Any

# (label, substrings of "file:function" matched in the profile). Cumulative times; groups may nest (MLflow
# calls inside artifact logging), so the report names which are disjoint.
PHASES: dict[str, tuple[str, ...]] = {
    "imports": ("<frozen importlib._bootstrap>:_find_and_load", "<frozen importlib._bootstrap>:_handle_fromlist",
                "<frozen importlib._bootstrap>:_gcd_import"),
    "chain (iterate_chain)": ("chain.py:iterate_chain",),
    "mlflow: open run (client, lookup, create)": ("trial_run.py:open",),
    "mlflow: start (status, params, tags)": ("trial_run.py:start",),
    "mlflow: logged_steps": ("trial_run.py:logged_steps",),
    "mlflow: log iterations (metrics)": ("trial_run.py:log_iterations",),
    "mlflow: log files (artifacts)": ("trial_run.py:log_files",),
    "mlflow: end run": ("trial_run.py:end",),
    "artifacts: result.json + plots (incl. their upload)": ("trial_artifacts.py:log_trial_artifacts",),
    "plots: matplotlib rendering": ("plots.py:confusion_plot", "plots.py:accuracy_plot", "plots.py:contour_plot"),
    "tune.report (incl. checkpoint upload)": ("session.py:report",),
    "checkpoint save (npz, json)": ("checkpoint.py:save",),
    "restore": ("chain_trainable.py:_restore",),
}


def _process_start_time() -> float:
    """Wall-clock time this process started (from /proc), or NaN."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return float("nan")


def profiled_chain(config: dict, frames, meta, context, out_dir: str) -> None:
    """Function trainable: `train_chain` under cProfile, with timestamps written to `out_dir`."""
    entered = time.time()
    prof = cProfile.Profile()
    prof.enable()
    from trainables.chain_trainable import train_chain

    try:
        train_chain(config, frames, meta, context)
    finally:
        prof.disable()
        left = time.time()
        tag = f"{os.getpid()}-{config.get('_i', 0)}"
        prof.dump_stats(str(Path(out_dir) / f"trial-{tag}.prof"))
        (Path(out_dir) / f"trial-{tag}.json").write_text(json.dumps({
            "i": config.get("_i", 0), "pid": os.getpid(), "process_start": _process_start_time(),
            "entered": entered, "left": left}))


def phase_seconds(prof_path: str | Path) -> dict[str, float]:
    """Cumulative seconds per `PHASES` entry in one profile: the time of its functions when called from
    outside the entry (a name of the entry calling another is counted once)."""
    stats = pstats.Stats(str(prof_path)).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    out = {}
    for label, needles in PHASES.items():
        keys = {k for k in stats if f"{Path(k[0]).name}:{k[2]}" in needles}
        total = 0.0
        for k in keys:
            callers = stats[k][4]
            total += sum(v[3] for c, v in callers.items() if not _inner(c, keys)) if callers else stats[k][3]
        out[label] = total
    return out


def _inner(caller: tuple, keys: set) -> bool:
    """A call from inside the same entry, or an import made by a module being imported (counted in its parent)."""
    return caller in keys or caller[0].startswith("<frozen importlib") or caller[2] == "<module>"


def top_functions(prof_path: str | Path, n: int = 12) -> list[dict[str, Any]]:
    """The `n` functions with the largest own time."""
    stats = pstats.Stats(str(prof_path)).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "tottime": v[2], "cumtime": v[3]} for k, v in rows]


class TrialClock:
    """A Tune callback recording when the driver started and completed each trial."""

    def __new__(cls):
        from ray import tune

        class _Clock(tune.Callback):
            def __init__(self):
                self.started: dict[str, float] = {}
                self.completed: dict[str, float] = {}
                self.index: dict[str, int] = {}

            def on_trial_start(self, iteration, trials, trial, **info):
                self.started[trial.trial_id] = time.time()
                self.index[trial.trial_id] = int(trial.config.get("_i", 0))

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.completed[trial.trial_id] = time.time()

        return _Clock()


def run_tune_trials(data, cfg, k: int, storage: str, direct_seconds: float, log=print) -> dict[str, Any]:
    """`k` trials of `cfg` (the project trainable, MLflow to SQLite, Tune settings of a sweep) one after another."""
    from ray import tune

    from tracking.sweep_runs import SweepRun
    from tracking.sweep_settings import SweepSettings
    from trainables.context import TrialContext, TrialResources
    from trainables.fold_runner import placement
    from trainables.shared_data import with_corpus

    prof_dir = Path(storage) / "profiles"
    prof_dir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"
    t0 = time.perf_counter()
    sweep = SweepRun.open(uri, "bench-overhead", f"{storage}/bench-overhead", SweepSettings(name="bench-overhead"),
                          cfg.to_dict(), "", False)
    exp_id, parent = sweep.experiment_id, sweep.run_id
    mlflow_setup = time.perf_counter() - t0
    res = TrialResources(cpu=1)
    ctx = TrialContext("bench-overhead", cfg, uri, exp_id, parent, res)
    trainable = tune.with_resources(with_corpus(profiled_chain, data, context=ctx, out_dir=str(prof_dir)),
                                    placement(res))
    clock = TrialClock()
    tuner = tune.Tuner(trainable, param_space={"_i": tune.grid_search(list(range(k)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
                       run_config=tune.RunConfig(name="bench-overhead", storage_path=storage, verbose=0,
                                                 callbacks=[clock],
                                                 failure_config=tune.FailureConfig(max_failures=1),
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    start = time.time()
    results = tuner.fit()
    end = time.time()
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0][:2000]}")
    trials = []
    for tid, i in sorted(clock.index.items(), key=lambda kv: kv[1]):
        info = json.loads(next(prof_dir.glob(f"trial-*-{i}.json")).read_text())
        prof = next(prof_dir.glob(f"trial-*-{i}.prof"))
        phases = phase_seconds(prof)
        wall = clock.completed[tid] - clock.started[tid]
        trials.append({
            "i": i, "pid": info["pid"], "wall_seconds": wall, "phases": phases,
            "process_start_to_call": info["entered"] - info["process_start"],
            "driver_start_to_call": info["entered"] - clock.started[tid],
            "return_to_driver_complete": clock.completed[tid] - info["left"],
            "inside_seconds": info["left"] - info["entered"],
            "overhead_seconds": wall - phases["chain (iterate_chain)"],
            "overhead_vs_direct_seconds": wall - direct_seconds,  # includes the profiler's cost on the chain
            "top_own_time": top_functions(prof),
        })
        log(f"    trial {i} (pid {info['pid']}): wall {wall:.1f} s, chain {phases['chain (iterate_chain)']:.1f} s, "
            f"overhead {trials[-1]['overhead_seconds']:.1f} s", flush=True)
    return {"k": k, "tuner_fit_seconds": end - start, "mlflow_setup_seconds": mlflow_setup,
            "fit_to_first_start": min(clock.started.values()) - start,
            "last_complete_to_fit_end": end - max(clock.completed.values()), "trials": trials,
            "new_processes": len({t["pid"] for t in trials})}


def run_overhead(data, cpu_cfg, short_cfg, k: int, log=print) -> dict[str, Any]:
    """Direct `cpu` chain wall, direct short chain, `k` short-chain trials in Tune: the overhead share."""
    import shutil
    import tempfile

    import ray

    from dsl.pipeline.chain import run_chain

    from .common import torch_threads

    same = cpu_cfg == short_cfg  # --quick: a reduced chain stands in for the cpu chain
    out: dict[str, Any] = {"cpu_chain": _describe(cpu_cfg), "short_chain": _describe(short_cfg),
                           "cpu_chain_is_reduced": same}
    # The cpu chain first: it also warms this process up (the first chain of a process pays lazy imports)
    # before the short chain is timed; --quick warms up with an untimed short chain instead.
    with torch_threads(None if cpu_cfg.train.workers > 1 else 1):
        t = time.perf_counter()
        run_chain(cpu_cfg if not same else short_cfg, data, show_progress=False)
        cpu_seconds = time.perf_counter() - t
    with torch_threads(1):
        t = time.perf_counter()
        run_chain(short_cfg, data, show_progress=False)
        out["short_chain_direct_seconds"] = time.perf_counter() - t
        prof = cProfile.Profile()  # the trials run under cProfile: what it costs the chain, measured here
        t = time.perf_counter()
        prof.runcall(run_chain, short_cfg, data, show_progress=False)
        out["short_chain_direct_profiled_seconds"] = time.perf_counter() - t
    out["cpu_chain_seconds"] = out["short_chain_direct_seconds"] if same else cpu_seconds
    log(f"  {'reduced (--quick) ' if same else ''}cpu-preset chain directly ({out['cpu_chain']}): "
        f"{out['cpu_chain_seconds']:.1f} s", flush=True)
    storage = tempfile.mkdtemp(prefix="dsl-bench-overhead-")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"DSL_PROGRESS": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    try:
        out["tune"] = run_tune_trials(data, short_cfg, k, storage, out["short_chain_direct_seconds"], log)
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    trials = out["tune"]["trials"]
    first, later = trials[0], trials[1:]
    cpu = out["cpu_chain_seconds"]
    out["first_trial_overhead_seconds"] = first["overhead_seconds"]
    out["first_trial_overhead_share_of_cpu_chain"] = first["overhead_seconds"] / cpu
    steady = (sum(t["overhead_seconds"] for t in later) / len(later)) if later else first["overhead_seconds"]
    out["steady_trial_overhead_seconds"] = steady
    out["steady_overhead_share_of_cpu_chain"] = steady / cpu
    chain_total = sum(t["phases"]["chain (iterate_chain)"] for t in trials)
    out["per_trial_overhead_seconds"] = (out["tune"]["tuner_fit_seconds"] - chain_total) / len(trials)
    out["per_trial_overhead_share_of_cpu_chain"] = out["per_trial_overhead_seconds"] / cpu
    # A sweep of n trials, c at a time, starts c trial processes (Tune reuses them): its per-trial overhead is
    # (c x first + (n - c) x steady) / n. For the quick example sweep (8 trials, 2 at a time):
    n, c = 8, 2
    out["quick_sweep_per_trial_overhead_seconds"] = (c * first["overhead_seconds"] + (n - c) * steady) / n
    out["quick_sweep_per_trial_overhead_share_of_cpu_chain"] = out["quick_sweep_per_trial_overhead_seconds"] / cpu
    out["short_chain_in_trial_vs_direct"] = chain_total / len(trials) / out["short_chain_direct_seconds"]
    out["short_chain_in_trial_vs_direct_profiled"] = chain_total / len(trials) / out["short_chain_direct_profiled_seconds"]
    out["meets_5_percent"] = out["quick_sweep_per_trial_overhead_share_of_cpu_chain"] <= 0.05
    log(f"  per-trial overhead as a share of the cpu chain ({cpu:.0f} s; goal <= 5 %): a new trial process "
        f"{first['overhead_seconds']:.1f} s = {100 * out['first_trial_overhead_share_of_cpu_chain']:.1f} %, a reused one "
        f"{steady:.1f} s = {100 * out['steady_overhead_share_of_cpu_chain']:.1f} %, per trial of the 8-trial quick sweep "
        f"(2 processes) {out['quick_sweep_per_trial_overhead_seconds']:.1f} s = "
        f"{100 * out['quick_sweep_per_trial_overhead_share_of_cpu_chain']:.1f} %; over these {len(trials)} trials "
        f"(Tuner.fit - chain) {out['per_trial_overhead_seconds']:.1f} s = "
        f"{100 * out['per_trial_overhead_share_of_cpu_chain']:.1f} %", flush=True)
    return out


def _describe(cfg) -> str:
    return (f"{cfg.backbone}, {cfg.protocol.folds} folds, hop {cfg.segments.hop}, {cfg.train.epochs} epochs, "
            f"{cfg.iterations + 1} iterations, {cfg.train.workers} worker(s) x {cfg.train.num_threads} thread")
