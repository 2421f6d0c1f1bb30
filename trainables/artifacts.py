"""A trial's MLflow artifacts, written from its checkpoint: the result JSON and three plots.

One function for the trial (each iteration) and the driver (`FinalizeRuns`, for a trial Tune stopped
inside `tune.report`, before the trial could log them), so both write the same files.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from dsl import plots
from dsl.chain import RESULT_FORMAT
from dsl.environment import machine_info
from dsl.protocols import is_leak_free
from dsl.selection import reported_iteration

from .checkpoint import TrialCheckpoint

RESULT_NAME = "result.json"
PLOT_DIR = "plots"


def trial_result(ckpt: TrialCheckpoint, finished: bool) -> dict:
    """The trial's result JSON (format `RESULT_FORMAT`, `kind: trial`)."""
    cfg = ckpt.config or {}
    protocol = (cfg.get("protocol") or {}).get("name", "")
    history = ckpt.state.history
    return {"format": RESULT_FORMAT, "kind": "trial", "trial_id": ckpt.trial_id, "label_names": ckpt.label_names,
            "finished": finished, "protocol": {"name": protocol, "leak_free": is_leak_free(protocol) if protocol else None},
            "environment": machine_info(), "reported": reported_iteration(history[-1]), "config": cfg,
            "iterations": history}


def log_trial_artifacts(run, ckpt: TrialCheckpoint, finished: bool) -> None:
    """Log `result.json` and `plots/{confusion_matrix,accuracy_per_iteration,segment_posteriors}.png` to
    `run` (a `TrialRun`), replacing earlier versions."""
    history = ckpt.state.history
    if not history:
        return
    with tempfile.TemporaryDirectory(prefix="dsl-art-") as tmp:
        t = Path(tmp)
        last = history[-1]
        (t / RESULT_NAME).write_text(json.dumps(trial_result(ckpt, finished), indent=1))
        run.log_files([str(t / RESULT_NAME)])
        files = [
            plots.confusion_plot(last["confusion"], ckpt.label_names, t / "confusion_matrix.png",
                                 f"iteration {last['iteration']}: UA {100 * last['ua']:.1f} %"),
            plots.accuracy_plot(history, t / "accuracy_per_iteration.png"),
            plots.contour_plot(ckpt.contour, ckpt.label_names, t / "segment_posteriors.png",
                               title=ckpt.contour_title),
        ]
        run.log_files([str(f) for f in files], PLOT_DIR)
