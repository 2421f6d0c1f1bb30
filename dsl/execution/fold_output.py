"""What one fold training sends back; its own module so the step cache can store it without importing training."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FoldOutput:
    """What a fold job sends back (pickled between processes and Ray tasks: plain arrays and numbers)."""

    posteriors: np.ndarray  # (segments of predict_utterances, K)
    epochs: int
    best_epoch: int
    seconds: float
    segments_per_second: float
    embeddings: np.ndarray | None = None  # (segments of predict_utterances, E) float16, only for stages that read them
    # eval.noise / eval.adversarial (`dsl.robustness.conditions`): the job's scored utterances under each condition
    condition_names: tuple[str, ...] = ()
    condition_posteriors: np.ndarray | None = None  # (conditions, segments of the scored utterances, K)
    condition_embeddings: np.ndarray | None = None  # (conditions, segments, E) float16, for stages that read them

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition_names", tuple(self.condition_names))  # a list when read from the cache
