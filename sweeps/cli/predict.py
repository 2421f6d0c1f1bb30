"""`dsl-sweep predict MODEL WAV...`: each utterance's emotion -> `sweeps.predict.predict_files`."""
from __future__ import annotations

import argparse

HELP = "predict the emotion of utterances with a trained model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory or MLflow model URI (models:/NAME/VERSION)")
    p.add_argument("wav", nargs="+", help="audio files")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--contour", help="save the segment-posterior contour plot(s) to this folder")


def handle(args: argparse.Namespace) -> int:
    from sweeps.predict import predict_files

    for p, contour in predict_files(args.model, args.wav, args.tracking_uri, args.contour):
        probs = "  ".join(f"{k} {v:.2f}" for k, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]))
        print(f"{p.path}: {p.label}  ({probs})", flush=True)
        if contour is not None:
            print(f"  contour: {contour}", flush=True)
    return 0
