"""A trial's MLflow artifacts, written from its checkpoint: the result JSON and three plots.

One function for the trial and the driver (for a trial Tune stopped inside `tune.report` or one that failed
for good, before the trial could log them), so both write the same files. The trial refreshes the result
JSON after every iteration (cheap) and renders the plots once, when it finishes: matplotlib took ~0.5 s a
plot, the largest per-trial cost of a sweep after the first trial of a process (bench/trial_overhead.py);
a trial that does not finish gets its plots from the driver.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from dsl.pipeline.chain import RESULT_FORMAT, ChainState
from dsl.protocols.plans import is_leak_free
from dsl.protocols.selection import reported_iteration
from dsl.results import plots
from dsl.runtime.environment import machine_info

from .schema import PLOT_DIR, RESULT_ARTIFACT


class TrialRecord(Protocol):
    """What the artifacts are written from: a trial checkpoint (`trainables.checkpoint.TrialCheckpoint`)."""

    state: ChainState
    config: dict[str, Any] | None
    label_names: list[str]
    contour: dict[int, Any]  # iteration -> (segments, K) posteriors of the contour utterance
    contour_title: str
    trial_id: str


class ArtifactSink(Protocol):
    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None: ...


def trial_result(record: TrialRecord, finished: bool) -> dict:
    """The trial's result JSON (format `RESULT_FORMAT`, `kind: trial`)."""
    cfg = record.config or {}
    protocol = (cfg.get("protocol") or {}).get("name", "")
    history = record.state.history
    return {"format": RESULT_FORMAT, "kind": "trial", "trial_id": record.trial_id,
            "label_names": record.label_names, "finished": finished,
            "protocol": {"name": protocol, "leak_free": is_leak_free(protocol) if protocol else None},
            "environment": machine_info(), "reported": reported_iteration(history[-1]), "config": cfg,
            "iterations": history}


def log_trial_artifacts(run: ArtifactSink, record: TrialRecord, finished: bool, plots_too: bool = True) -> None:
    """Log `result.json` and (`plots_too`) `plots/{confusion_matrix,accuracy_per_iteration,segment_posteriors}.png`
    to `run` (a `TrialRun`), replacing earlier versions."""
    history = record.state.history
    if not history:
        return
    with tempfile.TemporaryDirectory(prefix="dsl-art-") as tmp:
        t = Path(tmp)
        last = history[-1]
        (t / RESULT_ARTIFACT).write_text(json.dumps(trial_result(record, finished), indent=1))
        run.log_files([str(t / RESULT_ARTIFACT)])
        if not plots_too:
            return
        files = [
            plots.confusion_plot(last["confusion"], record.label_names, t / "confusion_matrix.png",
                                 f"iteration {last['iteration']}: UA {100 * last['ua']:.1f} %"),
            plots.accuracy_plot(history, t / "accuracy_per_iteration.png"),
            plots.contour_plot(record.contour, record.label_names, t / "segment_posteriors.png",
                               title=record.contour_title),
        ]
        run.log_files([str(f) for f in files], PLOT_DIR)
