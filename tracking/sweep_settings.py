"""The sweep's settings as its parent run keeps them (params `sweep.*`), read back as one typed object.

The driver logs them when it opens the parent run; `dsl-sweep best` reads them back to learn the objective,
the holdout, the step cache and (for a sweep whose file has no `select:`) how to decide. The defaults here are the only ones: the sweep file's `select:` block takes its
defaults from this class, and a parent run logged before a setting existed reads as that default.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from .schema import SETTINGS_PREFIX


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep ran with, as logged (params `sweep.<field>`)."""

    name: str = ""
    num_samples: int = 0
    max_concurrent: int = 1
    sampler: str = ""
    sampler_seed: int | None = None
    scheduler: str = "none"
    max_failures: int = 0
    resources: str = ""
    search: str = ""  # the searched keys, comma-separated
    objective: str = "final"  # final | selected (see trainables.metrics)
    protocol: str = ""  # the base config's protocol
    leak_free: bool = False
    objective_seeds: int = 1  # chains per trial on seeds base.seed .. + n - 1; the objective is their mean
    select_protocol: str = "refinery"  # how `dsl-sweep best` decides: a race under a leak-free protocol
    select_top_k: int = 5  # of the top k distinct configurations,
    select_seeds: int = 10  # on at most this many fresh seeds each,
    select_budget: int | None = None  # at most this many chains in all,
    select_alpha: float = 0.05  # family-wise error of its tests;
    select_exam_seeds: int = 5  # then the final exam on this many seeds
    holdout: str = "none"  # the holdout's rule in words (`dsl.protocols.holdout`), or none
    holdout_utterances: int = 0
    holdout_assignment: str = ""  # where the driver stored it (the parent run keeps a copy, holdout.json)
    step_cache: str = ""  # the trials' step cache, which `best`'s chains share ("" off)

    def to_params(self) -> dict[str, str]:
        """`sweep.<field>` -> the value as MLflow keeps it (a string)."""
        return {f"{SETTINGS_PREFIX}{k}": str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> SweepSettings:
        """The settings of a parent run's params (others ignored; a missing one reads as its default)."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = params.get(f"{SETTINGS_PREFIX}{f.name}")
            if raw is not None:
                values[f.name] = _parse(raw, hints[f.name])
        return cls(**values)


def _parse(raw: str, hint: Any) -> Any:
    """A param's string as the field's type (`str(value)` read back)."""
    if hint is bool:
        return raw == "True"
    if hint is int:
        return int(raw)
    if hint is float:
        return float(raw)
    if hint == int | None:
        return None if raw == "None" else int(raw)
    return raw
