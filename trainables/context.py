"""What the driver hands every trial besides its sampled config: base config, tracking and resources."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialResources:
    """`cpu`/`gpu` per fold; with `fold_workers` > 0 folds run as Ray tasks in the trial's placement group."""

    cpu: float = 1.0
    gpu: float = 0.0
    fold_workers: int = 0
    head_cpu: float = 1.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpu))

    @property
    def head_threads(self) -> int:
        return max(1, int(self.head_cpu if self.fold_workers else self.cpu))


@dataclass(frozen=True)
class TrialContext:
    """Shared by all trials of a sweep (small, picklable; passed with `tune.with_parameters`)."""

    sweep: str
    base: dict[str, Any]  # ChainConfig.to_dict() of the sweep's base
    tracking_uri: str | None = None  # None: no MLflow tracking
    experiment_id: str | None = None
    parent_run_id: str | None = None
    resources: TrialResources = field(default_factory=TrialResources)
    contour_utterance: int = 0
    objective: str = "final"  # final | selected (see trainables.metrics)
