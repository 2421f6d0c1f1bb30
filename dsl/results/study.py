"""A seed-replicate study as files: one result JSON per seed (`<study>.seeds/seed<N>.json`) and the study JSON
that aggregates them, per iteration, into means with 95 % intervals and paired gains over iteration 0.

Reading and aggregating needs no chain, so the report reads studies while they still run (`dsl.results.report`);
running them is `dsl.studies.replicates`.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsl.config import ChainConfig, ConfigError, from_dict
from dsl.protocols.plans import outer_partition, plan_leak_free
from dsl.protocols.selection import selector_agreement
from dsl.results.stats import mean_interval, paired_gain

log = logging.getLogger(__name__)
STUDY_FORMAT = 1
METRICS = ("wa", "ua", "selected_wa", "selected_ua", "selector_agreement")
GAIN_METRICS = ("wa", "ua", "selected_wa", "selected_ua")  # paired gains over iteration 0 (the agreement is 1 there)


def seeds_dir(study_path: str | Path) -> Path:
    p = Path(study_path)
    return p.with_name(p.stem + ".seeds")


def seed_path(study_path: str | Path, seed: int) -> Path:
    return seeds_dir(study_path) / f"seed{seed}.json"


def write_json(obj: Any, path: str | Path) -> Path:
    """Atomic write: a reader (or a resumed study) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
    return path


def comparable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a config that decide a seed's numbers (execution-only settings are left out).

    A key written before it existed takes its default, which keeps the earlier behaviour, except where the
    default changed: outer folds were cut by label before `protocol.outer`, and the stage inputs were
    `in_sample`/`mean` before their keys. So a finished seed is read back after an upgrade that only added keys.
    """
    out = json.loads(json.dumps(config))
    if isinstance(out.get("protocol"), dict):
        out["protocol"].setdefault("outer", "stratified")
    if isinstance(out.get("stage"), dict):
        out["stage"].setdefault("fit_on", "in_sample")
        out["stage"].setdefault("test_views", "mean")
    try:
        out = from_dict(out).to_dict()
    except ConfigError:  # a key since removed or renamed: compared as written (the seed is run again)
        pass
    if not from_dict({"eval": out.get("eval") or {}}).eval.enabled:
        out.pop("eval", None)  # off: the same numbers as a config written before eval.* existed
    out.pop("seeds", None)
    out.pop("cache_dir", None)
    for k in ("workers", "num_threads", "device"):
        out.get("train", {}).pop(k, None)
    return out


def finished_seed(cfg: ChainConfig, path: Path) -> dict | None:
    """The seed's result on disk if it was computed with this config, else None (and a warning if it differs)."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        log.warning("%s: unreadable, the seed is run again", path)
        return None
    if comparable_config(done.get("config", {})) != comparable_config(cfg.to_dict()):
        log.warning("%s holds another config: the seed is run again and the file replaced", path)
        return None
    return done


def outer_of(d: Mapping[str, Any]) -> str:
    """How a result's outer folds were cut (`dsl.protocols.plans.outer_partition`); results written before
    `protocol.outer` existed were cut stratified by label (unless a holdout, an assignment or a test corpus
    fixed them)."""
    given = d.get("protocol", {}).get("outer")
    cfg = (d.get("config") or {}).get("protocol", {})
    if cfg.get("holdout"):
        return "holdout"
    given = given or cfg.get("outer")
    if given:
        return "assignment" if given == "balanced" and cfg.get("assignment") else given
    return "test corpus" if cfg.get("name") == "cross_corpus" else ("assignment" if cfg.get("assignment") else
                                                                    "stratified")


def _value(result: Mapping[str, Any], i: int, metric: str) -> Any:
    """Iteration `i`'s `metric`; a held-out result written before selector agreement existed gets it from its
    history (the validation UAs and outer-fold UAs it holds)."""
    it = result["iterations"][i]
    if metric == "selector_agreement" and it.get(metric) is None and it.get("val_ua") is not None:
        return selector_agreement(result["iterations"][:i + 1])
    return it.get(metric)


def aggregate(results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per iteration present in every seed: intervals of WA/UA (and the selected figures, where held out) and
    paired gains over iteration 0."""
    n_it = min(len(r["iterations"]) for r in results)
    rows = []
    for i in range(n_it):
        its = [r["iterations"][i] for r in results]
        row: dict[str, Any] = {"iteration": its[0]["iteration"], "alpha": its[0].get("alpha"),
                               "seconds": mean_interval([it["seconds"] for it in its]).to_dict()}
        for m in METRICS:
            vals = [_value(r, i, m) for r in results]
            if any(v is None for v in vals):
                continue
            row[m] = mean_interval(vals).to_dict()
            if i > 0 and m in GAIN_METRICS:
                row[f"gain_{m}"] = paired_gain(vals, [r["iterations"][0][m] for r in results]).to_dict()
        conditions = condition_rows(its)
        if conditions:
            row["conditions"] = conditions
        rows.append(row)
    return rows


def condition_rows(its: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per test condition every seed of one iteration scored (`dsl.robustness.conditions`): intervals of WA/UA (and
    the selected figures) and the paired drop from clean speech, `drop_<m>` = the condition's minus the clean
    figure, seed by seed (negative: it degrades)."""
    names = [n for n in (its[0].get("conditions") or {}) if all(n in (it.get("conditions") or {}) for it in its)]
    out: dict[str, dict] = {}
    for name in names:
        row: dict[str, Any] = {}
        for m in METRICS:
            vals = [it["conditions"][name].get(m) for it in its]
            clean = [it.get(m) for it in its]
            if any(v is None for v in vals):
                continue
            row[m] = mean_interval(vals).to_dict()
            if all(c is not None for c in clean):
                row[f"drop_{m}"] = paired_gain(vals, clean).to_dict()
        out[name] = row
    return out


def study_dict(cfg: ChainConfig, results: Sequence[Mapping[str, Any]], paths: Sequence[Path], study_path: Path,
               command: str) -> dict:
    pr = cfg.protocol
    envs = {r["environment"].get("fingerprint"): r["environment"] for r in results if "environment" in r}
    return {"format": STUDY_FORMAT, "kind": "study", "command": command,
            "protocol": {"name": pr.name, "leak_free": plan_leak_free(pr), "outer": outer_partition(pr),
                         "folds": pr.folds,
                         "inner_folds": pr.inner_folds, "eval_folds": pr.eval_folds},
            "seeds": [int(r["config"]["seed"]) for r in results], "environments": list(envs.values()),
            "config": {**cfg.to_dict(), "seed": None}, "label_names": results[0]["label_names"],
            "n_utterances": results[0]["n_utterances"], "n_segments": results[0]["n_segments"],
            "seconds_per_seed": mean_interval([r["seconds"] for r in results]).to_dict(),
            "seed_files": [os.path.relpath(p, study_path.parent) for p in paths],
            "iterations": aggregate(results)}


