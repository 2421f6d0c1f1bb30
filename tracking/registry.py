"""The final model in MLflow: trained (`dsl.pipeline.model.train_final`), logged as a pyfunc in a `final-model`
child run of the sweep's parent, registered under a name; and a `models:/`/`runs:/` URI downloaded back
to a local model directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dsl.config import ChainConfig
from dsl.pipeline.model import find_model_dir, train_final

from .client import call, resolve_tracking_uri
from .schema import PARENT_TAG, ROLE_TAG


def register_final(cfg: ChainConfig, tracking_uri: str, experiment_id: str, parent_run_id: str,
                   source_run_id: str, model_name: str, out_dir: Path | None = None,
                   evaluation: dict | None = None) -> str:
    """Train, save under `out_dir` (None: a folder in this machine's temp dir), log as a pyfunc in a
    `final-model` child run, register `model_name`. Runs where it is called: in `best`, or in a Ray task on a
    cluster node (`best --register --address`)."""
    import socket
    import tempfile

    import mlflow

    from .client import client
    from .pyfunc import DslPyfunc, code_paths, input_example, pinned_requirements, predict_requirements, signature

    print(f"training the final model ({cfg.backbone}, {cfg.labels.rule}, iteration {cfg.iterations}) on all data...",
          flush=True)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix=f"dsl-final-{model_name}-"))
    c = client(tracking_uri)
    directory = train_final(cfg, out_dir, {"source_run_id": source_run_id, "evaluation": evaluation},
                            show_progress=os.environ.get("DSL_PROGRESS", "1") != "0")
    label_names = json.loads((directory / "model.json").read_text())["label_names"]
    run = call(c.create_run, experiment_id, run_name=f"final-model {model_name}",
               tags={PARENT_TAG: parent_run_id, ROLE_TAG: "final_model", "dsl.source_run_id": source_run_id})
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=DslPyfunc(),
                                       artifacts={"model_dir": str(directory)},
                                       pip_requirements=pinned_requirements(predict_requirements(cfg.features.kind)),
                                       code_paths=code_paths(),
                                       signature=signature(label_names),
                                       input_example=input_example(example_wav(cfg)))
        mlflow.log_artifact(str(directory / "config.yaml"))
        if evaluation:  # how it was selected (the race, the final exam), not the sweep's self-graded score
            metrics, run_tags = selection_figures(evaluation)
            mlflow.log_metrics(metrics)
            mlflow.set_tags({f"dsl.{k}": v for k, v in run_tags.items()})
    tags = selection_figures(evaluation)[1] if evaluation else {}
    version = mlflow.register_model(info.model_uri, model_name, tags=tags or None)
    uri = f"models:/{model_name}/{version.version}"
    print(f"saved {directory} on {socket.gethostname()}; registered {uri}\npredict with: dsl-sweep predict {uri} FILE.wav "
          f"(or dsl-sweep predict {directory} FILE.wav)", flush=True)
    return uri


def example_wav(cfg: ChainConfig) -> Path:
    """The shortest utterance of the training corpus (the model's input example)."""
    from dsl.data.bundle import load_corpus_for

    corpus, _ = load_corpus_for(cfg)
    return min((Path(p) for p in corpus.paths), key=lambda p: p.stat().st_size)


def download_model(uri: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """The model directory of an MLflow URI (`models:/NAME/VERSION`, `runs:/...`), downloaded to `dst`."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    return find_model_dir(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def _interval_text(d: dict) -> str:
    low, high = d.get("low"), d.get("high")
    return f"{d['mean']:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else "")


def selection_figures(evaluation: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics and tags of a registered model from best.yaml's `evaluation:` block (`sweeps.selection.best`): the
    race's verdict and mean, and with a holdout the final exam's UA, paired gain over the reference and optimism."""
    race = evaluation["race"]
    metrics = {"race_ua": float(race["ua"]["mean"])}
    tags = {"verdict": str(evaluation["verdict"])[:5000], "selection_protocol": str(evaluation["protocol"]),
            "race_ua": _interval_text(race["ua"]), "race_seeds": ",".join(map(str, race["seeds"]))}
    h = evaluation.get("holdout")
    if h:
        metrics.update({"holdout_ua": float(h["ua"]["mean"]), "holdout_wa": float(h["wa"]["mean"]),
                        "holdout_gain_ua": float(h["gain_ua"]["mean"]), "optimism": float(h["optimism"])})
        tags.update({"holdout_ua": _interval_text(h["ua"]), "holdout_gain_ua": _interval_text(h["gain_ua"]),
                     "holdout": f"{h['how']} ({h['utterances']} utterances), seeds {','.join(map(str, h['seeds']))}",
                     "holdout_reference": str(h["reference"]), "optimism": f"{h['optimism']:.4f}"})
    return metrics, tags
