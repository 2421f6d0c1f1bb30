"""`dsl-sweep predict MODEL WAV...`: each utterance's emotion with class probabilities (and contours)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dsl.pipeline.model import EmotionModel, Prediction, find_model_dir
from dsl.runtime.paths import WriteTarget, require_writable


def resolve_model(model: str, tracking_uri: str | None, tmp: str) -> Path:
    """A local model directory, or an MLflow URI (models:/NAME/VERSION, runs:/...) downloaded to `tmp`."""
    if Path(model).exists():
        return find_model_dir(model)
    from tracking.registry import download_model

    return download_model(model, tracking_uri, tmp)


def predict_files(model: str, wavs: Sequence[str], tracking_uri: str | None = None,
                  contour: str | None = None) -> list[tuple[Prediction, Path | None]]:
    """Each file's prediction, and its segment-posterior contour plot in the folder `contour` when given."""
    if contour:
        require_writable([WriteTarget.dir(contour, "--contour")])
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from dsl.results.plots import contour_plot

    with tempfile.TemporaryDirectory() as tmp:
        fitted = EmotionModel.load(resolve_model(model, tracking_uri, tmp))
        preds = fitted.predict_details(wavs)
    out: list[tuple[Prediction, Path | None]] = []
    for p in preds:
        plot = None
        if contour:
            plot = Path(contour_plot({0: p.segment_posteriors}, fitted.label_names,
                                     Path(contour) / f"{Path(p.path).stem}_contour.png",
                                     title=f"{Path(p.path).name}: {p.label}", panel_title="segment posteriors"))
        out.append((p, plot))
    return out
