"""`dsl-sweep best SWEEP`: the best (trial, iteration) of a sweep, from MLflow, as a runnable best.yaml.

Order: mean fold UA, then WA, then fewer iterations (then the earlier trial). `best.yaml` is the trial's resolved config with
`iterations` set to the best iteration (an annealing schedule that depends on the total number of
iterations keeps the original total as `labels.horizon`, so iterations 1..t get the same alphas); `dsl-sweep run best.yaml` accepts it.
"""
from __future__ import annotations

import argparse
import os
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from dsl.config import ChainConfig, ConfigError, from_dict
from dsl.rules import get_rule
from dsl.schedules import schedule_alpha
from trainables.tracking import ROLE_TAG, call, client, redact_uri

from . import tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BestPick:
    run_id: str
    run_name: str
    trial_id: str
    iteration: int
    mean_fold_ua: float
    wa: float
    ua: float
    started: int = 0  # run start time (ms): among exact ties the earliest trial wins

    def key(self) -> tuple[float, float, int, int]:
        return (self.mean_fold_ua, self.wa, -self.iteration, -self.started)


def _alphas(cfg: ChainConfig, upto: int) -> list[float]:
    return [schedule_alpha(cfg.labels, k, cfg.iterations) for k in range(1, upto + 1)]


def at_iteration(cfg: ChainConfig, t: int) -> tuple[ChainConfig, bool]:
    """`cfg` stopped after iteration `t`, and whether its alphas 1..t equal the original ones exactly.

    Constant and step schedules do not depend on the total; the others (linear, cosine, exponential)
    keep the original total as `labels.horizon`, so iterations 1..t get the same alphas.
    """
    if t == cfg.iterations or not get_rule(cfg.labels.rule).uses_alpha or t <= 1:
        return cfg.replace(iterations=t), True
    want = _alphas(cfg, t)
    plain = cfg.replace(iterations=t)
    if max(abs(a - b) for a, b in zip(_alphas(plain, t), want)) < 1e-9:
        return plain, True
    cut = cfg.replace(**{"iterations": t, "labels.horizon": cfg.labels.horizon or cfg.iterations})
    return cut, max(abs(a - b) for a, b in zip(_alphas(cut, t), want)) < 1e-9


def select_best(c, experiment_id: str, parent_run_id: str) -> tuple[BestPick, list[BestPick]]:
    """The best (run, iteration) among the parent's child runs, and each run's own best."""
    per_run: list[BestPick] = []
    for run in tracking.child_runs(c, experiment_id, parent_run_id):
        rid = run.info.run_id
        hist = {k: {int(m.step): m.value for m in call(c.get_metric_history, rid, k)}
                for k in ("mean_fold_ua", "wa", "ua")}
        picks = [BestPick(rid, run.info.run_name, run.data.tags.get("ray_trial_id", ""), it, v,
                          hist["wa"].get(it, 0.0), hist["ua"].get(it, 0.0), int(run.info.start_time or 0))
                 for it, v in hist["mean_fold_ua"].items()]
        if picks:
            per_run.append(max(picks, key=BestPick.key))
    if not per_run:
        raise ConfigError("the sweep has no trial with a finished iteration yet")
    return max(per_run, key=BestPick.key), per_run


def run_config(c, run_id: str) -> ChainConfig:
    """The trial's resolved config from its `config.yaml` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = call(c.download_artifacts, run_id, "config.yaml", tmp)
        return from_dict(yaml.safe_load(Path(path).read_text()))


def sweep_name(arg: str) -> str:
    """A sweep name, or the `name` inside a sweep YAML file."""
    p = Path(arg)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return str((yaml.safe_load(p.read_text()) or {}).get("name") or p.stem)
    return arg


def tag_winner(c, pick: BestPick, others: list[BestPick], parent_run_id: str) -> None:
    for o in others:
        if o.run_id != pick.run_id:
            try:
                call(c.delete_tag, o.run_id, "dsl.best")
            except Exception:  # tag absent
                pass
    call(c.set_tag, pick.run_id, "dsl.best", "true")
    call(c.set_tag, pick.run_id, "dsl.best_iteration", str(pick.iteration))
    call(c.set_tag, parent_run_id, "dsl.best_run_id", pick.run_id)
    call(c.set_tag, parent_run_id, "dsl.best_iteration", str(pick.iteration))


def write_best(cfg: ChainConfig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cfg.to_yaml())
    return out


def best_from_cli(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    name = sweep_name(args.sweep)
    tracking.check_access(uri)
    c = client(uri)
    exp = call(c.get_experiment_by_name, name)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {name!r} at {redact_uri(uri)} (give --tracking-uri?)")
    parent = tracking.find_parent(c, exp.experiment_id)
    if parent is None or parent.data.tags.get(ROLE_TAG) != "parent":
        raise ConfigError(f"experiment {name!r} has no sweep parent run")
    pick, per_run = select_best(c, exp.experiment_id, parent.info.run_id)
    cfg, exact = at_iteration(run_config(c, pick.run_id), pick.iteration)
    if not exact:
        log.warning("the %s schedule depends on the number of iterations and cannot be cut at iteration %d "
                    "exactly: best.yaml ends at the same alpha but intermediate alphas differ",
                    cfg.labels.schedule, pick.iteration)
    path = write_best(cfg, args.out)
    tag_winner(c, pick, per_run, parent.info.run_id)
    print(f"best of {len(per_run)} trials of sweep {name}: {pick.run_name} (trial {pick.trial_id}), iteration "
          f"{pick.iteration}: mean fold UA {100 * pick.mean_fold_ua:.2f} %, UA {100 * pick.ua:.2f} %, "
          f"WA {100 * pick.wa:.2f} %\nwrote {path} (run it with: dsl-sweep run {path})", flush=True)
    if args.register:
        from .final_model import register_final

        register_final(cfg, c, uri, exp.experiment_id, parent.info.run_id, pick.run_id,
                       args.model_name or name, Path(path).with_name(Path(path).stem + "_model"))
    return 0
