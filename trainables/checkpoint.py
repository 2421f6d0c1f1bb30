"""A trial checkpoint: the ChainState, the MLflow run id, the contour utterance's posteriors so far, and what
the trial's MLflow artifacts need (config, class names, plot title), so the driver can write them for a
trial that Tune stopped before it could (`sweeps.search.callbacks.FinalizeRuns`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsl.formats import check_format
from dsl.pipeline.chain import ChainState

STATE, INFO, CONTOUR = "chain_state.npz", "trial.json", "contour.npz"
SEED_STATE = "chain_state_seed{}.npz"  # objective_seeds > 1: each seed's own state
FORMAT = 2  # 1: no "format" key, no config / label_names / contour_title


@dataclass
class TrialCheckpoint:
    """`state` is the trial's chain state; with `objective_seeds` > 1 its history holds the seed means (what the
    trial reports and MLflow logs) and `seed_states` each seed's own chain state, from which the trial resumes."""

    state: ChainState
    mlflow_run_id: str | None = None
    contour: dict[int, np.ndarray] = field(default_factory=dict)  # iteration -> (segments, K) posteriors
    config: dict[str, Any] | None = None  # the trial's ChainConfig.to_dict()
    label_names: list[str] = field(default_factory=list)
    contour_title: str = ""
    trial_id: str = ""
    seed_states: list[ChainState] = field(default_factory=list)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.state.save(d / STATE)
        for i, st in enumerate(self.seed_states):
            st.save(d / SEED_STATE.format(i))
        (d / INFO).write_text(json.dumps({"format": FORMAT, "mlflow_run_id": self.mlflow_run_id,
                                          "next_iteration": self.state.next_iteration, "config": self.config,
                                          "label_names": list(self.label_names),
                                          "contour_title": self.contour_title, "trial_id": self.trial_id,
                                          "seed_states": len(self.seed_states)}))
        np.savez(d / CONTOUR, **{f"it_{k}": v for k, v in self.contour.items()})
        return d

    @classmethod
    def load(cls, directory: str | Path) -> TrialCheckpoint:
        d = Path(directory)
        info = json.loads((d / INFO).read_text())
        check_format(d / INFO, int(info.get("format", 1)), FORMAT, "trial checkpoint", "resume this trial",
                     "it has no config or class names; the driver cannot write a stopped trial's artifacts from it")
        with np.load(d / CONTOUR) as z:
            contour = {int(k[3:]): z[k] for k in z.files}
        seeds = [ChainState.load(d / SEED_STATE.format(i)) for i in range(int(info.get("seed_states", 0)))]
        return cls(ChainState.load(d / STATE), info.get("mlflow_run_id"), contour, info.get("config"),
                   list(info.get("label_names") or []), info.get("contour_title", ""), info.get("trial_id", ""),
                   seeds)
