"""What the driver hands every trial besides its sampled config: base config, tracking and resources."""
from __future__ import annotations

from dataclasses import dataclass, field

from dsl.config import ChainConfig


@dataclass(frozen=True)
class ResourceSpec:
    """Per trial (the sweep file's `resources`): `cpu`/`gpu` (fractional GPUs allowed) for the trial itself, or,
    with `fold_workers` > 0, per parallel fold task, run as Ray tasks in the trial's placement group (the trial
    then holds one extra `head_cpu` bundle for label updates and the forest)."""

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


TrialResources = ResourceSpec  # the trainables' name for it (one class: the sweep's resources are the trial's)


@dataclass(frozen=True)
class TrialContext:
    """Shared by all trials of a sweep (small, picklable; passed with `tune.with_parameters`)."""

    sweep: str
    base: ChainConfig  # the sweep's base config; a trial's config is it plus the trial's overrides
    tracking_uri: str | None = None  # None: no MLflow tracking
    experiment_id: str | None = None
    parent_run_id: str | None = None
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    contour_utterance: int = 0
    objective: str = "final"  # final | selected (see trainables.metrics)
    step_cache: str = ""  # directory of the shared step cache (dsl.execution.step_cache); "" turns it off
    objective_seeds: int = 1  # chains per trial on seeds base.seed .. base.seed + n - 1; the objective is their mean
