"""Alpha schedules over label-update iterations t = 1..T (iteration 0 always trains on the labels).

A schedule is `fn(t, T, start, end, step) -> alpha`; register a new one with `@register_schedule`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

ScheduleFn = Callable[[int, int, float, float, float], float]

SCHEDULES: dict[str, ScheduleFn] = {}


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    def wrap(fn: ScheduleFn) -> ScheduleFn:
        if name in SCHEDULES:
            raise ValueError(f"schedule {name!r} is already registered")
        SCHEDULES[name] = fn
        return fn
    return wrap


def _progress(t: int, total: int) -> float:
    """0 at the first update, 1 at the last."""
    return 0.0 if total <= 1 else (t - 1) / (total - 1)


@register_schedule("constant")
def constant(t: int, total: int, start: float, end: float, step: float) -> float:
    return start


@register_schedule("step")
def step(t: int, total: int, start: float, end: float, step: float) -> float:
    """The paper's annealing: start, start - step, ... never below `end` (0.9 -> 0.7 -> ... -> 0.1)."""
    return max(end, start - (t - 1) * step)


@register_schedule("linear")
def linear(t: int, total: int, start: float, end: float, step: float) -> float:
    return start + (end - start) * _progress(t, total)


@register_schedule("cosine")
def cosine(t: int, total: int, start: float, end: float, step: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(t, total)))


@register_schedule("exponential")
def exponential(t: int, total: int, start: float, end: float, step: float) -> float:
    """Geometric interpolation from start to end (end clipped away from 0)."""
    lo = max(end, 1e-6)
    return start * (lo / start) ** _progress(t, total) if start > 0 else 0.0


def schedule_alpha(labels, t: int, iterations: int) -> float:
    """Alpha of a `LabelSpec` at update iteration `t` of a chain with `iterations` updates (or its `horizon`)."""
    return alpha_at(labels.schedule, t, labels.horizon or iterations, labels.alpha, labels.alpha_end, labels.alpha_step)


def alpha_at(name: str, t: int, total: int, start: float, end: float = 0.1, step: float = 0.2) -> float:
    """Alpha for update iteration `t` of `total`."""
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; known: {', '.join(sorted(SCHEDULES))}")
    if t < 1:
        raise ValueError("alpha schedules start at iteration 1 (iteration 0 uses the original labels)")
    return float(min(1.0, max(0.0, SCHEDULES[name](t, total, start, end, step))))
