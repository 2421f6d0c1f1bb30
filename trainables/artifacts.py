"""A trial's MLflow artifacts, written from its checkpoint: the result JSON and three plots.

One function for the trial and the driver (`FinalizeRuns`, for a trial Tune stopped inside `tune.report`
or one that failed for good, before the trial could log them), so both write the same files. The trial
refreshes the result JSON after every iteration (cheap) and renders the plots once, when it finishes:
matplotlib took ~0.5 s a plot, the largest per-trial cost of a sweep after the first trial of a process
(bench/trial_overhead.py); a trial that does not finish gets its plots from the driver.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from dsl.pipeline.chain import RESULT_FORMAT
from dsl.protocols.plans import is_leak_free
from dsl.protocols.selection import reported_iteration
from dsl.results import plots
from dsl.runtime.environment import machine_info

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


def log_trial_artifacts(run, ckpt: TrialCheckpoint, finished: bool, plots_too: bool = True) -> None:
    """Log `result.json` and (`plots_too`) `plots/{confusion_matrix,accuracy_per_iteration,segment_posteriors}.png`
    to `run` (a `TrialRun`), replacing earlier versions."""
    history = ckpt.state.history
    if not history:
        return
    with tempfile.TemporaryDirectory(prefix="dsl-art-") as tmp:
        t = Path(tmp)
        last = history[-1]
        (t / RESULT_NAME).write_text(json.dumps(trial_result(ckpt, finished), indent=1))
        run.log_files([str(t / RESULT_NAME)])
        if not plots_too:
            return
        files = [
            plots.confusion_plot(last["confusion"], ckpt.label_names, t / "confusion_matrix.png",
                                 f"iteration {last['iteration']}: UA {100 * last['ua']:.1f} %"),
            plots.accuracy_plot(history, t / "accuracy_per_iteration.png"),
            plots.contour_plot(ckpt.contour, ckpt.label_names, t / "segment_posteriors.png",
                               title=ckpt.contour_title),
        ]
        run.log_files([str(f) for f in files], PLOT_DIR)
