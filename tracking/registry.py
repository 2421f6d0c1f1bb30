"""The final model in MLflow: a model directory trained elsewhere (`dsl.pipeline.model.train_final`) logged as a
pyfunc in a `final-model` child run of the sweep's parent and registered under a name; and a
`models:/`/`runs:/` URI downloaded back to a local model directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dsl.pipeline.model import find_model_dir

from .client import call, client, resolve_tracking_uri
from .schema import (
    CONFIG_ARTIFACT,
    MODEL_ARTIFACT,
    OPTIMISM_METRIC,
    PARENT_TAG,
    REEVALUATED_UA_METRIC,
    REEVALUATED_WA_METRIC,
    REEVALUATION_PROTOCOL_TAG,
    REEVALUATION_SEEDS_TAG,
    ROLE_FINAL_MODEL,
    ROLE_TAG,
    SOURCE_RUN_TAG,
    VERSION_OPTIMISM_TAG,
    VERSION_PROTOCOL_TAG,
    VERSION_UA_TAG,
)


def register_model(directory: str | Path, features_kind: str, example_wav: str | Path, tracking_uri: str,
                   experiment_id: str, parent_run_id: str, source_run_id: str, model_name: str,
                   evaluation: dict | None = None) -> str:
    """Log the model directory `directory` (an `EmotionModel.save`) as a pyfunc in a `final-model` child run of
    the sweep's parent, with its config and (`evaluation`, the re-evaluated figures of `dsl-sweep best`) the
    re-evaluated metrics; register it as `model_name`. Returns `models:/NAME/VERSION`."""
    import mlflow

    from .pyfunc import DslPyfunc, code_paths, input_example, pinned_requirements, predict_requirements, signature

    directory = Path(directory)
    label_names = json.loads((directory / "model.json").read_text())["label_names"]
    c = client(tracking_uri)
    run = call(c.create_run, experiment_id, run_name=f"final-model {model_name}",
               tags={PARENT_TAG: parent_run_id, ROLE_TAG: ROLE_FINAL_MODEL, SOURCE_RUN_TAG: source_run_id})
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=DslPyfunc(),
                                       artifacts={"model_dir": str(directory)},
                                       pip_requirements=pinned_requirements(predict_requirements(features_kind)),
                                       code_paths=code_paths(),
                                       signature=signature(label_names),
                                       input_example=input_example(example_wav))
        mlflow.log_artifact(str(directory / CONFIG_ARTIFACT))
        if evaluation:  # the re-evaluated (leak-free, fresh-seed) figures, not the sweep's self-graded score
            mlflow.log_metrics({REEVALUATED_UA_METRIC: evaluation["ua"]["mean"],
                                REEVALUATED_WA_METRIC: evaluation["wa"]["mean"],
                                OPTIMISM_METRIC: evaluation["optimism"]})
            mlflow.set_tags({REEVALUATION_PROTOCOL_TAG: evaluation["protocol"],
                             REEVALUATION_SEEDS_TAG: ",".join(map(str, evaluation["seeds"]))})
    tags = {}
    if evaluation:
        ua = evaluation["ua"]
        tags = {VERSION_UA_TAG: f"{ua['mean']:.4f} [{ua['low']:.4f}, {ua['high']:.4f}]",
                VERSION_PROTOCOL_TAG: evaluation["protocol"], VERSION_OPTIMISM_TAG: f"{evaluation['optimism']:.4f}"}
    version = mlflow.register_model(info.model_uri, model_name, tags=tags or None)
    return f"models:/{model_name}/{version.version}"


def download_model(uri: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """The model directory of an MLflow URI (`models:/NAME/VERSION`, `runs:/...`), downloaded to `dst`."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    return find_model_dir(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
