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
    HOLDOUT_GAIN_UA_METRIC,
    HOLDOUT_GAIN_UA_TAG,
    HOLDOUT_REFERENCE_TAG,
    HOLDOUT_TAG,
    HOLDOUT_UA_METRIC,
    HOLDOUT_UA_TAG,
    HOLDOUT_WA_METRIC,
    MODEL_ARTIFACT,
    OPTIMISM_METRIC,
    OPTIMISM_TAG,
    PARENT_TAG,
    RACE_SEEDS_TAG,
    RACE_UA_METRIC,
    RACE_UA_TAG,
    ROLE_FINAL_MODEL,
    ROLE_TAG,
    SELECTION_PROTOCOL_TAG,
    SOURCE_RUN_TAG,
    VERDICT_TAG,
    VERSION_TAG_PREFIX,
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
        if evaluation:  # how it was selected (the race, the final exam), not the sweep's self-graded score
            metrics, run_tags = selection_figures(evaluation)
            mlflow.log_metrics(metrics)
            mlflow.set_tags(run_tags)
    # the version carries the same figures, named without the prefix (a version's tags are its own namespace)
    tags = {k.removeprefix(VERSION_TAG_PREFIX): v for k, v in selection_figures(evaluation)[1].items()} \
        if evaluation else {}
    version = mlflow.register_model(info.model_uri, model_name, tags=tags or None)
    return f"models:/{model_name}/{version.version}"


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
    tags = {VERDICT_TAG: str(evaluation["verdict"])[:5000], SELECTION_PROTOCOL_TAG: str(evaluation["protocol"])}
    metrics = {}
    if race.get("ua"):  # a lone candidate wins without racing: no race figures
        metrics[RACE_UA_METRIC] = float(race["ua"]["mean"])
        tags.update({RACE_UA_TAG: _interval_text(race["ua"]), RACE_SEEDS_TAG: ",".join(map(str, race["seeds"]))})
    h = evaluation.get("holdout")
    if h:
        metrics.update({HOLDOUT_UA_METRIC: float(h["ua"]["mean"]), HOLDOUT_WA_METRIC: float(h["wa"]["mean"]),
                        HOLDOUT_GAIN_UA_METRIC: float(h["gain_ua"]["mean"])})
        tags.update({HOLDOUT_UA_TAG: _interval_text(h["ua"]), HOLDOUT_GAIN_UA_TAG: _interval_text(h["gain_ua"]),
                     HOLDOUT_TAG: f"{h['how']} ({h['utterances']} utterances), seeds {','.join(map(str, h['seeds']))}",
                     HOLDOUT_REFERENCE_TAG: str(h["reference"])})
        if h.get("optimism") is not None:  # none for a lone candidate: it ran no race
            metrics[OPTIMISM_METRIC] = float(h["optimism"])
            tags[OPTIMISM_TAG] = f"{h['optimism']:.4f}"
    return metrics, tags
