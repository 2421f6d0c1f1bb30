"""Alpha schedules over label-update iterations t = 1..T (iteration 0 always trains on the labels).

A schedule is `fn(t, T, start, end, step) -> alpha`; register a new one with `@register_schedule`, naming the
alpha keys besides `labels.alpha` it reads (`keys`): only those are searched, checked and shown with it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dsl.registry import Registry, first_line, owned_keys

ScheduleFn = Callable[[int, int, float, float, float], float]


@dataclass(frozen=True)
class Schedule:
    """`keys`: the config keys besides `labels.alpha` this schedule reads (`labels.alpha_end`, `labels.alpha_step`)."""

    name: str
    fn: ScheduleFn
    keys: tuple[str, ...] = ("labels.alpha_end", "labels.alpha_step")
    description: str = ""

    def __call__(self, t: int, total: int, start: float, end: float, step: float) -> float:
        return self.fn(t, total, start, end, step)


SCHEDULES: Registry[Schedule] = Registry("schedule")


def register_schedule(name: str, *, keys: tuple[str, ...] = ("labels.alpha_end", "labels.alpha_step"),
                      description: str = "") -> Callable[[ScheduleFn], ScheduleFn]:
    keys = owned_keys("schedule", name, keys, "labels.alpha_")
    return SCHEDULES.decorator(lambda fn: Schedule(name, fn, keys, description or first_line(fn.__doc__)))


def _progress(t: int, total: int) -> float:
    """0 at the first update, 1 at the last."""
    return 0.0 if total <= 1 else (t - 1) / (total - 1)


@register_schedule("constant", keys=())
def constant(t: int, total: int, start: float, end: float, step: float) -> float:
    return start


@register_schedule("step", keys=("labels.alpha_end", "labels.alpha_step"))
def step(t: int, total: int, start: float, end: float, step: float) -> float:
    """The paper's annealing: start, start - step, ... never below `end` (0.9 -> 0.7 -> ... -> 0.1)."""
    return max(end, start - (t - 1) * step)


@register_schedule("linear", keys=("labels.alpha_end",))
def linear(t: int, total: int, start: float, end: float, step: float) -> float:
    return start + (end - start) * _progress(t, total)


@register_schedule("cosine", keys=("labels.alpha_end",))
def cosine(t: int, total: int, start: float, end: float, step: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(t, total)))


@register_schedule("exponential", keys=("labels.alpha_end",))
def exponential(t: int, total: int, start: float, end: float, step: float) -> float:
    """Geometric interpolation from start to end (end clipped away from 0)."""
    lo = max(end, 1e-6)
    return start * (lo / start) ** _progress(t, total) if start > 0 else 0.0


def schedule_alpha(labels, t: int, iterations: int) -> float:
    """Alpha of a `LabelSpec` at update iteration `t` of a chain with `iterations` updates (or its `horizon`)."""
    return alpha_at(labels.schedule, t, labels.horizon or iterations, labels.alpha, labels.alpha_end, labels.alpha_step)


def alpha_at(name: str, t: int, total: int, start: float, end: float = 0.1, step: float = 0.2) -> float:
    """Alpha for update iteration `t` of `total`."""
    schedule = SCHEDULES.get(name)
    if t < 1:
        raise ValueError("alpha schedules start at iteration 1 (iteration 0 uses the original labels)")
    return float(min(1.0, max(0.0, schedule(t, total, start, end, step))))
