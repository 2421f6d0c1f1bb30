"""The final model of `dsl-sweep best --register`: trained on the whole corpus where this runs (here, or in a
Ray task on a cluster node with `--address`), then logged and registered in MLflow (`tracking.registry`)."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from dsl.config import ChainConfig
from dsl.data.bundle import load_corpus_for
from dsl.pipeline.model import train_final
from tracking.registry import register_model


def example_wav(cfg: ChainConfig) -> Path:
    """The shortest utterance of the training corpus (the model's input example)."""
    corpus, _ = load_corpus_for(cfg)
    return min((Path(p) for p in corpus.paths), key=lambda p: p.stat().st_size)


def train_and_register(cfg: ChainConfig, tracking_uri: str, experiment_id: str, parent_run_id: str,
                       source_run_id: str, model_name: str, out_dir: Path | None = None,
                       evaluation: dict | None = None) -> str:
    """Train, save under `out_dir` (None: a folder in this machine's temp dir), log as a pyfunc in a
    `final-model` child run of the sweep's parent, register `model_name`; returns `models:/NAME/VERSION`."""
    print(f"training the final model ({cfg.backbone}, {cfg.labels.rule}, iteration {cfg.iterations}) on all data...",
          flush=True)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix=f"dsl-final-{model_name}-"))
    directory = train_final(cfg, out_dir, {"source_run_id": source_run_id, "evaluation": evaluation},
                            show_progress=os.environ.get("DSL_PROGRESS", "1") != "0")
    uri = register_model(directory, cfg.features.kind, example_wav(cfg), tracking_uri, experiment_id, parent_run_id,
                         source_run_id, model_name, evaluation)
    print(f"saved {directory} on {socket.gethostname()}; registered {uri}\npredict with: dsl-sweep predict {uri} FILE.wav "
          f"(or dsl-sweep predict {directory} FILE.wav)", flush=True)
    return uri
