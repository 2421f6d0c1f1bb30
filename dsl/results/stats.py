"""Means with 95 % t-intervals over seeds, and paired differences (the gain of an iteration over iteration 0)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """Mean, sample standard deviation and 95 % t-interval of `n` values (no interval for n < 2)."""

    mean: float
    sd: float | None
    low: float | None
    high: float | None
    n: int
    values: list[float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        return cls(**d)

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """`70.4 ± 2.1` (half-width of the 95 % interval), or just the mean for one value."""
        if self.low is None or self.high is None:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * (self.high - self.mean):.{digits}f}"


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, None, None, None, n, v.tolist())
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
    return Interval(mean, sd, mean - half, mean + half, n, v.tolist())  # plain floats: JSON and YAML take them


def paired_gain(after: Sequence[float], before: Sequence[float], level: float = 0.95) -> Interval:
    """Interval of the per-seed differences `after - before` (paired: the same seed's folds and forest)."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired values need the same seeds on both sides")
    return mean_interval(a - b, level)
