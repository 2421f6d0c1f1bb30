"""Train the final model of a best config on all data, save it, log it as a pyfunc and register it.

Faithful to the chain: the label updates run on all utterances up to the chosen iteration t (the
chain's own folds); the final network is trained on every utterance with the targets of iteration
t; the random forest is trained on utterance statistics of iteration t's out-of-sample segment
posteriors (what the forest sees in the chain, and what unseen utterances look like).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from dsl.protocols import is_leak_free
from dsl.chain import FoldJob, derive_seed, iterate_chain, train_fold
from dsl.checks import check_config
from dsl.config import ChainConfig
from dsl.data import CorpusData, prepare_data
from dsl.evaluate import utterance_features
from dsl.rules import one_hot
from dsl.segments import build_segments

from .model import save_model

log = logging.getLogger(__name__)


def chain_to(cfg: ChainConfig, data: CorpusData, show_progress: bool = True):
    """Run the chain on all data through iteration `cfg.iterations`: (targets used at it, its result)."""
    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    targets = one_hot(data.labels[seg.utt], data.n_classes)
    last = None
    for result, state in iterate_chain(cfg, data, show_progress=show_progress):
        if result.iteration == cfg.iterations:
            last = result
        else:
            targets = state.targets[0]
    assert last is not None
    return targets, last


def fit_final(cfg: ChainConfig, data: CorpusData, targets: np.ndarray):
    """One network on all utterances (a validation split for early stopping, as in every fold)."""
    utts = np.arange(data.n_utterances)
    job = FoldJob(cfg.iterations, 0, -1, utts, utts[:0], targets, derive_seed(cfg.seed, cfg.iterations, 10_000))
    fold = train_fold(job, data, cfg)
    return fold.model.cpu(), fold.mean, fold.std


def train_final(cfg: ChainConfig, out_dir: str | Path, info: dict | None = None, show_progress: bool = True) -> Path:
    """Chain on all data to iteration t, final network + forest, saved as a model directory."""
    from sklearn.ensemble import RandomForestClassifier

    check_config(cfg)
    if is_leak_free(cfg.protocol.name):  # the final model has no test set: one label chain over all utterances
        cfg = cfg.replace(**{"protocol.name": "speaker_transductive" if cfg.protocol.name == "speaker" else "stratified"})
    data = prepare_data(cfg, show_progress=show_progress)
    targets, last = chain_to(cfg, data, show_progress)
    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    forest = RandomForestClassifier(random_state=cfg.seed).fit(utterance_features(last.posteriors, seg.offsets),
                                                               data.labels)
    network, mean, std = fit_final(cfg, data, targets)
    meta = {"iteration": cfg.iterations, "chain_wa": last.wa, "chain_ua": last.ua, **(info or {})}
    return save_model(out_dir, cfg, data.label_names, network, mean, std, forest, meta)


def register_final(cfg: ChainConfig, c, tracking_uri: str, experiment_id: str, parent_run_id: str,
                   source_run_id: str, model_name: str, out_dir: Path, evaluation: dict | None = None) -> str:
    """Train, save under `out_dir`, log as a pyfunc in a `final-model` child run, register `model_name`."""
    import mlflow

    from trainables.tracking import PARENT_TAG, ROLE_TAG, call

    from .pyfunc import DslPyfunc

    print(f"training the final model ({cfg.backbone}, {cfg.labels.rule}, iteration {cfg.iterations}) on all data...",
          flush=True)
    directory = train_final(cfg, out_dir, {"source_run_id": source_run_id, "evaluation": evaluation},
                            show_progress=os.environ.get("DSL_PROGRESS", "1") != "0")
    run = call(c.create_run, experiment_id, run_name=f"final-model {model_name}",
               tags={PARENT_TAG: parent_run_id, ROLE_TAG: "final_model", "dsl.source_run_id": source_run_id})
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=DslPyfunc(),
                                       artifacts={"model_dir": str(directory)},
                                       pip_requirements=["dsl-sweeps", "torch", "timm", "scikit-learn", "librosa",
                                                         "soundfile", "pandas"])
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
    print(f"saved {directory}; registered {uri}\npredict with: dsl-sweep predict {uri} FILE.wav "
          f"(or dsl-sweep predict {directory} FILE.wav)", flush=True)
    return uri
