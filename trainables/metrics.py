"""What a trial `tune.report`s per iteration: the flat metrics of the run schema (`tracking.schema`) and the
sweep objective; with `objective_seeds` > 1, of the mean over the trial's seeds (`seed_mean`).

The sweep's `objective` is the score at a rule fixed in advance, never a running maximum over
iterations: `final` is the UA of the iteration just finished (so a finished trial is judged at its last
iteration), `selected` is the UA of each outer fold's iteration picked on its own training utterances
(held-out protocols only; see `dsl.protocols.selection`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tracking.schema import iteration_metrics

OBJECTIVES = ("final", "selected")


def parse_objective(objective: str) -> tuple[str, str]:
    """`final` -> ("final", ""); `selected:white_10dB` -> ("selected", "white_10dB"): the UA under a test condition
    of `eval.*` (`dsl.robustness.conditions`), or their mean (`noise_mean`, `attack_mean`), so a sweep can search
    for the configuration that degrades least."""
    rule, _, condition = str(objective).partition(":")
    return rule.strip(), condition.strip()


def objective_value(d: Mapping[str, Any], objective: str = "final") -> float:
    """The sweep objective after iteration `d`."""
    rule, condition = parse_objective(objective)
    src = d
    if condition:
        src = (d.get("conditions") or {}).get(condition)
        if src is None:
            raise ValueError(f"objective {objective!r}: the run scores no test condition {condition!r} (it has: "
                             f"{', '.join(d.get('conditions') or {}) or 'none; set eval.noise or eval.adversarial'})")
    if rule == "selected":
        if src.get("selected_ua") is None:
            raise ValueError("objective 'selected' needs a held-out protocol (nested, speaker, refinery)")
        return float(src["selected_ua"])
    return float(src["ua"])


def report_metrics(history: Sequence[Mapping[str, Any]], iterations_total: int, resumed_from: int,
                   objective: str = "final") -> dict[str, Any]:
    """What one `tune.report` carries after the last entry of `history`."""
    last = history[-1]
    return {**iteration_metrics(last), "objective": objective_value(last, objective), "iteration": int(last["iteration"]),
            "iterations_total": int(iterations_total), "resumed_from": int(resumed_from)}


MEAN_KEYS = ("wa", "ua", "selected_wa", "selected_ua", "segment_accuracy", "changed_label_share", "target_entropy",
             "epochs", "segments_per_second")


def seed_mean(entries: Sequence[Mapping[str, Any]], seeds: Sequence[int], seconds: float | None = None) -> dict[str, Any]:
    """One iteration of several seeds' chains (the same iteration, paired seeds) as one entry: the means of the
    scores (so the objective is the mean over seeds), every seed's folds, the summed confusion counts, the wall
    time of the iteration over all seeds (`seconds`; else the slowest seed's), each seed's UA (`seed_ua`) and WA;
    no per-utterance records (they differ per seed)."""
    first = entries[0]
    out: dict[str, Any] = {"iteration": first["iteration"], "alpha": first.get("alpha"), "seeds": list(seeds)}
    for k in MEAN_KEYS:
        vals = [e.get(k) for e in entries]
        out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    out["fold_wa"] = [v for e in entries for v in e["fold_wa"]]
    out["fold_ua"] = [v for e in entries for v in e["fold_ua"]]
    out["confusion"] = np.sum([np.asarray(e["confusion"]) for e in entries], axis=0).tolist()
    out["seconds"] = float(seconds if seconds is not None else max(e["seconds"] for e in entries))
    out["cached_folds"] = int(sum(e.get("cached_folds", 0) for e in entries))
    out["fold_trainings"] = int(sum(e.get("fold_trainings", 0) for e in entries))
    out["from_cache"] = all(e.get("from_cache", False) for e in entries)
    out["seed_ua"] = [float(e["ua"]) for e in entries]
    out["seed_wa"] = [float(e["wa"]) for e in entries]
    out["val_ua"] = out["selected_iterations"] = None
    out["utterances"] = []
    return out
