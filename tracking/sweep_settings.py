"""The sweep's settings as its parent run keeps them (params `sweep.*`), read back as one typed object.

The driver logs them when it opens the parent run; `dsl-sweep best` reads them back to learn the objective
and how to re-evaluate. The defaults here are the only ones: the sweep file's `select:` block takes its
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
    select_protocol: str = "refinery"  # how `dsl-sweep best` re-evaluates: a leak-free protocol,
    select_top_k: int = 3  # the top k distinct configurations,
    select_seeds: int = 5  # on this many fresh seeds

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
    if hint == int | None:
        return None if raw == "None" else int(raw)
    return raw
