"""The candidates of a selection: the sweep's top distinct configurations, each cut at its last reported iteration.

The sweep ranks trials by its objective at each trial's last iteration (the same `rank_key` everywhere); a
configuration sampled twice counts once. Its scores graded themselves (chosen on the folds and seeds they report),
so they only pick the candidates: what decides is the race on fresh seeds (`sweeps.selection.race`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dsl.config import ChainConfig, ConfigError, from_dict
from dsl.method.schedules import schedule_alpha
from dsl.pipeline.keys import key_applies
from dsl.protocols.selection import rank_key
from tracking.schema import CONFIG_ARTIFACT, UA, WA, condition_metric
from tracking.sweep_runs import SweepRun
from trainables.metrics import parse_objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BestPick:
    """A trial at its last reported iteration, with the sweep's own (self-graded) scores there."""

    run_id: str
    run_name: str
    trial_id: str
    iteration: int
    objective: float
    wa: float
    ua: float
    started: int = 0  # run start time (ms): among exact ties the earliest trial wins

    def key(self) -> tuple[float, float, int, int]:
        return (*rank_key(self.objective, self.wa, self.iteration), -self.started)

    @property
    def short_id(self) -> str:
        return self.trial_id.split("_")[-1] or self.run_id[:8]


def _alphas(cfg: ChainConfig, upto: int) -> list[float]:
    return [schedule_alpha(cfg.labels, k, cfg.iterations) for k in range(1, upto + 1)]


def at_iteration(cfg: ChainConfig, t: int) -> tuple[ChainConfig, bool]:
    """`cfg` stopped after iteration `t`, and whether its alphas 1..t equal the original ones exactly.

    Constant and step schedules do not depend on the total; the others (linear, cosine, exponential)
    keep the original total as `labels.horizon`, so iterations 1..t get the same alphas.
    """
    if t == cfg.iterations or not key_applies("labels.alpha", cfg) or t <= 1:
        return cfg.replace(iterations=t), True
    want = _alphas(cfg, t)
    plain = cfg.replace(iterations=t)
    if max(abs(a - b) for a, b in zip(_alphas(plain, t), want)) < 1e-9:
        return plain, True
    cut = cfg.replace(**{"iterations": t, "labels.horizon": cfg.labels.horizon or cfg.iterations})
    return cut, max(abs(a - b) for a, b in zip(_alphas(cut, t), want)) < 1e-9


def objective_key(objective: str) -> str:
    """The MLflow metric that holds the sweep objective per iteration (`ua/white_10dB` etc. under a test condition)."""
    rule, condition = parse_objective(objective)
    key = "selected_ua" if rule == "selected" else "ua"
    return condition_metric(key, condition) if condition else key


def objective_figures(iteration: Mapping[str, Any], objective: str) -> tuple[float | None, float | None]:
    """(the objective's UA, its WA) in one iteration of a result JSON: under the objective's test condition when it
    names one (`final:white_10dB`), the validation-selected figures for `selected`."""
    rule, condition = parse_objective(objective)
    src = (iteration.get("conditions") or {}).get(condition) if condition else iteration
    if src is None:
        raise ValueError(f"objective {objective!r}: the chain scored no test condition {condition!r}")
    selected = rule == "selected"
    return src.get("selected_ua" if selected else "ua"), src.get("selected_wa" if selected else "wa")


def select_best(sweep: SweepRun, objective: str = "final") -> list[BestPick]:
    """Every trial at its last reported iteration, best first by the sweep objective there."""
    key = objective_key(objective)
    per_run: list[BestPick] = []
    for t in sweep.trial_histories(sorted({key, WA, UA})):
        hist = t.metrics
        if not hist[key]:
            continue
        last = max(hist[key])
        per_run.append(BestPick(t.run_id, t.run_name, t.trial_id, last, hist[key][last], hist[WA].get(last, 0.0),
                                hist[UA].get(last, 0.0), t.started))
    if not per_run:
        raise ConfigError("the sweep has no trial with a finished iteration yet")
    per_run.sort(key=BestPick.key, reverse=True)
    return per_run


def run_config(sweep: SweepRun, run_id: str) -> ChainConfig:
    """The trial's resolved config from its `config.yaml` artifact."""
    text = sweep.run_file(CONFIG_ARTIFACT, run_id)
    if text is None:
        raise ConfigError(f"MLflow run {run_id} has no {CONFIG_ARTIFACT} artifact")
    return from_dict(yaml.safe_load(text))


def distinct_top(sweep: SweepRun, picks: list[BestPick], k: int) -> list[tuple[BestPick, ChainConfig]]:
    """The first `k` picks whose configs (cut at their iteration) differ: a config sampled twice counts once."""
    out: list[tuple[BestPick, ChainConfig]] = []
    seen: set[str] = set()
    for pick in picks:
        cfg, exact = at_iteration(run_config(sweep, pick.run_id), pick.iteration)
        if not exact:
            log.warning("the %s schedule of %s cannot be cut at iteration %d exactly: intermediate alphas differ",
                        cfg.labels.schedule, pick.run_name, pick.iteration)
        key = json.dumps(cfg.replace(seed=0).to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((pick, cfg))
        if len(out) == k:
            break
    return out


def fresh_seeds(base_seed: int, n: int, used: int = 1) -> list[int]:
    """`n` seeds the sweep never used: it ran on `base_seed` .. `base_seed + used - 1` (`objective_seeds`)."""
    return [base_seed + used + i for i in range(n)]


def sweep_name(arg: str) -> str:
    """A sweep name, or the `name` inside a sweep YAML file."""
    p = Path(arg)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return str((yaml.safe_load(p.read_text()) or {}).get("name") or p.stem)
    return arg
