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
        if evaluation:  # the re-evaluated (leak-free, fresh-seed) figures, not the sweep's self-graded score
            mlflow.log_metrics({"reevaluated_ua": evaluation["ua"]["mean"], "reevaluated_wa": evaluation["wa"]["mean"],
                                "optimism": evaluation["optimism"]})
            mlflow.set_tags({"dsl.reevaluation_protocol": evaluation["protocol"],
                             "dsl.reevaluation_seeds": ",".join(map(str, evaluation["seeds"]))})
    tags = {}
    if evaluation:
        ua = evaluation["ua"]
        tags = {"reevaluated_ua": f"{ua['mean']:.4f} [{ua['low']:.4f}, {ua['high']:.4f}]",
                "reevaluation_protocol": evaluation["protocol"], "optimism": f"{evaluation['optimism']:.4f}"}
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
