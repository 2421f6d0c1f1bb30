"""`dsl-sweep predict MODEL WAV...`: each utterance's emotion with class probabilities (and contours)."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from dsl.pipeline.model import EmotionModel, find_model_dir


def resolve_model(model: str, tracking_uri: str | None, tmp: str) -> Path:
    """A local model directory, or an MLflow URI (models:/NAME/VERSION, runs:/...) downloaded to `tmp`."""
    if Path(model).exists():
        return find_model_dir(model)
    from tracking.registry import download_model

    return download_model(model, tracking_uri, tmp)


def predict_from_cli(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from dsl.results.plots import contour_plot

    with tempfile.TemporaryDirectory() as tmp:
        model = EmotionModel.load(resolve_model(args.model, args.tracking_uri, tmp))
        preds = model.predict_details(args.wav)
    for p in preds:
        probs = "  ".join(f"{k} {v:.2f}" for k, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]))
        print(f"{p.path}: {p.label}  ({probs})", flush=True)
        if args.contour:
            out = contour_plot({0: p.segment_posteriors}, model.label_names,
                               Path(args.contour) / f"{Path(p.path).stem}_contour.png",
                               title=f"{Path(p.path).name}: {p.label}", panel_title="segment posteriors")
            print(f"  contour: {out}", flush=True)
    return 0
