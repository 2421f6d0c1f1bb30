"""What a trial `tune.report`s per iteration: the flat metrics of the run schema (`tracking.schema`) and the
sweep objective.

The sweep's `objective` is the score at a rule fixed in advance, never a running maximum over
iterations: `final` is the UA of the iteration just finished (so a finished trial is judged at its last
iteration), `selected` is the UA of each outer fold's iteration picked on its own training utterances
(held-out protocols only; see `dsl.protocols.selection`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
