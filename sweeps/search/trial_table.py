"""The end-of-sweep table of trials, judged by the sweep objective at their last iteration.

The top row is the sweep's own pick: its score graded itself (same folds, same seed, and under a
transductive protocol the test labels). `dsl-sweep best` re-evaluates the top rows on fresh seeds.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsl.config import ChainConfig
from dsl.pipeline.trial_config import trial_config
from dsl.protocols.selection import rank_key
from dsl.results.naming import describe


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str  # done | stopped | error | interrupted | pending
    config: ChainConfig
    overrides: dict[str, Any]
    iterations_done: int
    objective: float | None  # the sweep objective at the last iteration reported
    ua: float | None
    wa: float | None
    iteration: int | None  # the last iteration reported

    def rank(self) -> tuple[float, float, int]:
        if self.objective is None:
            return (-1.0, -1.0, 0)
        return rank_key(self.objective, self.wa or 0.0, self.iteration or 0)


def row(trial_id: str, status: str, overrides: Mapping[str, Any], m: Mapping[str, Any],
        base: ChainConfig) -> TrialRow:
    """One table row from a trial's Tune status, config and last result."""
    if status == "ERROR":
        label = "error"
    elif status == "TERMINATED":
        label = "stopped" if m.get("iteration", 0) < m.get("iterations_total", 0) else "done"
    else:
        label = "interrupted" if m else "pending"
    return TrialRow(trial_id, label, trial_config(base, overrides), dict(overrides),
                    int(m["iteration"]) + 1 if "iteration" in m else 0, m.get("objective"),
                    m.get("ua"), m.get("wa"), m.get("iteration"))


def rows_from_results(results, base: ChainConfig) -> list[TrialRow]:
    """Rows of every trial of a Tune ResultGrid, best first.

    A `Result` has no Tune status, and before a trial's first report no trial id or config: these come from
    the trials of the experiment snapshot `Tuner.fit` wrote last (`tune.ExperimentAnalysis`, what a
    ResultGrid is built from). Without a readable snapshot, from the results alone (TERMINATED when the
    last result is marked done)."""
    trials = snapshot_trials(results)
    if trials:
        rows = [row(t.trial_id, t.status, t.config or {}, t.last_result or {}, base) for t in trials]
    else:
        rows = [row((r.metrics or {}).get("trial_id", "?"), result_status(r), r.config or {}, r.metrics or {}, base)
                for r in results]
    return sorted(rows, key=lambda r: r.rank(), reverse=True)


def snapshot_trials(results) -> list:
    """The Tune trials (status, id, config, last result) of the experiment behind `results`, in the order of
    its results; [] if unreadable. Statuses are those of the snapshot: a trial running when the sweep was
    interrupted is RUNNING/PENDING there (Tune marks it TERMINATED in memory only after the snapshot)."""
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")  # its warnings came with Tuner.fit already
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        trials = list(ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem).trials)
    except Exception:
        return []
    finally:
        quiet.setLevel(level)
    order = {r.path: i for i, r in enumerate(results)}  # the snapshot lists trials in another order
    return sorted(trials, key=lambda t: order.get(t.path, len(order)))


def result_status(r) -> str:
    """ERROR, TERMINATED (last result done) or RUNNING (unfinished) from a `Result` alone."""
    if r.error is not None:
        return "ERROR"
    return "TERMINATED" if (r.metrics or {}).get("done") else "RUNNING"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_table(rows: Sequence[TrialRow]) -> str:
    head = f"{'trial':<8} {'status':<11} {'object.':>7} {'UA':>6} {'WA':>6} {'at it':>6} {'its':>4}  config"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"#{r.trial_id.split('_')[-1]:<7} {r.status:<11} {_pct(r.objective):>7} "
                     f"{_pct(r.ua):>6} {_pct(r.wa):>6} {'-' if r.iteration is None else r.iteration:>6} "
                     f"{r.iterations_done:>4}  {describe(r.config, r.overrides)}")
    return "\n".join(lines)


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    scored = [r for r in rows if r.objective is not None]
    return max(scored, key=TrialRow.rank) if scored else None
