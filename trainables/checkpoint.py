"""A trial checkpoint: the ChainState, the MLflow run id and the contour utterance's posteriors so far."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsl.chain import ChainState

STATE, INFO, CONTOUR = "chain_state.npz", "trial.json", "contour.npz"


@dataclass
class TrialCheckpoint:
    state: ChainState
    mlflow_run_id: str | None = None
    contour: dict[int, np.ndarray] = field(default_factory=dict)  # iteration -> (segments, K) posteriors

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.state.save(d / STATE)
        (d / INFO).write_text(json.dumps({"mlflow_run_id": self.mlflow_run_id,
                                          "next_iteration": self.state.next_iteration}))
        np.savez(d / CONTOUR, **{f"it_{k}": v for k, v in self.contour.items()})
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "TrialCheckpoint":
        d = Path(directory)
        info = json.loads((d / INFO).read_text())
        with np.load(d / CONTOUR) as z:
            contour = {int(k[3:]): z[k] for k in z.files}
        return cls(ChainState.load(d / STATE), info.get("mlflow_run_id"), contour)
