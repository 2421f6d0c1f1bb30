"""A trained DSL emotion model, in the scikit-learn spirit: `fit` on a corpus returns self; `predict`,
`predict_proba`, `segment_posteriors`; `save`/`load` a plain directory with a format version.

Faithful to the chain: the label updates run on all utterances up to the config's iteration t (the
chain's own folds); the final network is trained on every utterance with the targets of iteration t; the
random forest is trained on the utterance statistics of iteration t's out-of-sample segment posteriors
(what the forest sees in the chain, and what unseen utterances look like). A leak-free protocol has no
test set here, so the final model's labels come from its transductive twin over all utterances. It
supports the `forest` utterance stage only (`check_stage` says why not `acp`).

Prediction reuses the fold job's preprocessing: frames stacked with a silence padding row
(`features.stack_utterances`), segments (`segments.build_segments`), per-batch normalisation with the
training frames' mean/std (`fold_job.frame_batcher`) and batched posteriors (`train.predict_proba`).

Directory: `config.yaml` (ChainConfig), `model.json` (format, label names, iteration, provenance),
`weights.pt` (network state dict), `normalisation.npz` (per-dimension mean/std of the training frames),
`forest.joblib` (random forest on the 8 statistics per class of segment posteriors). An SSL front end
(`features.kind: ssl`) adds `ssl_model/`, a copy of the checkpoint's config and weight files (mtimes kept),
so the directory (and the MLflow pyfunc made of it) computes the same features anywhere; `model.json` then
records the original checkpoint path, its fingerprint and the stacked layers per frame.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dsl.config import ChainConfig, from_dict

MODEL_FORMAT = 3  # 1: model.json without "format"; 2: before SSL front ends ("layers", ssl_model/ copy)


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]
    segment_posteriors: np.ndarray  # (segments, K)


def check_stage(cfg: ChainConfig) -> None:
    """The final model predicts with a stage registered with `final_model=True` (the forest): refuse another
    utterance stage before any work."""
    from dsl.config import ConfigError
    from dsl.method.stages import STAGES

    if not STAGES.get(cfg.stage.name).final_model:
        able = ", ".join(n for n in STAGES.names() if STAGES[n].final_model)
        raise ConfigError(
            f"stage.name {cfg.stage.name!r}: the final EmotionModel (dsl.pipeline.model) supports stage.name: {able} "
            f"only. A {cfg.stage.name} stage is fitted on the fold networks' out-of-fold outputs, and a final network "
            "trained on all data has an embedding space of its own, which that stage never saw. Evaluate it with "
            f"`dsl-sweep run`; train the final model with --set stage.name={able.split(', ')[0]}")


def final_config(cfg: ChainConfig) -> ChainConfig:
    """The config the final model's chain runs: the protocol's transductive twin (no test set), without the
    keys only the original protocol reads (e.g. a cross-corpus test corpus)."""
    from dsl.config import ConfigError
    from dsl.pipeline.trial_config import applicable
    from dsl.protocols.plans import PROTOCOLS

    twin = PROTOCOLS.get(cfg.protocol.name).twin
    if twin is None:
        raise ConfigError(f"protocol {cfg.protocol.name!r} names no transductive twin (register_protocol(..., "
                          "transductive_twin=...)): the final model has no protocol to train its labels with")
    return cfg if twin == cfg.protocol.name else applicable(cfg.replace(**{"protocol.name": twin}))


class EmotionModel:
    """Network + normalisation + forest of one chain configuration; predicts utterances at any sample rate
    (resampled like the corpus)."""

    def __init__(self, cfg: ChainConfig | None = None):
        self.cfg = cfg
        self.label_names: tuple[str, ...] = ()
        self.network = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.forest = None
        self.layers = 1  # stacked SSL layers per frame (learned layer sum), else 1
        self.info: dict[str, Any] = {}

    # -- training ---------------------------------------------------------------------------------
    def fit(self, data, cfg: ChainConfig | None = None, show_progress: bool = True,
            info: dict[str, Any] | None = None) -> EmotionModel:
        """Chain on all of `data` (a `CorpusData`) to iteration `cfg.iterations`, then the final network
        and forest. Returns self."""
        from sklearn.ensemble import RandomForestClassifier

        from dsl.data.segments import build_segments
        from dsl.execution.fold_job import FoldJob, derive_seed, train_fold
        from dsl.method.evaluate import utterance_features
        from dsl.pipeline.checks import check_config

        cfg = final_config(cfg or self.cfg)
        check_config(cfg)
        check_stage(cfg)
        targets, last = self._chain_to(cfg, data, show_progress)
        seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
        forest = RandomForestClassifier(random_state=cfg.seed).fit(utterance_features(last.posteriors, seg.offsets),
                                                                   data.labels)
        utts = np.arange(data.n_utterances)  # one network on every utterance (validation split as in each fold)
        job = FoldJob.of(cfg.iterations, 0, -1, utts, utts[:0], targets, derive_seed(cfg.seed, cfg.iterations, 10_000), seg)
        fold = train_fold(job, data, cfg, seg)
        self.cfg, self.label_names = cfg, tuple(data.label_names)
        self.network, self.mean, self.std, self.forest = fold.model.cpu().eval(), fold.mean, fold.std, forest
        self.layers = data.layers
        self.info = {"iteration": cfg.iterations, "chain_wa": last.wa, "chain_ua": last.ua, **(info or {})}
        if cfg.features.kind == "ssl":
            from dsl.data.ssl_features import checkpoint_fingerprint

            self.info["ssl_model_source"] = str(Path(cfg.features.ssl_model).resolve())
            self.info["ssl_fingerprint"] = checkpoint_fingerprint(cfg.features.ssl_model)
        return self

    @staticmethod
    def _chain_to(cfg: ChainConfig, data, show_progress: bool):
        """The targets used at iteration `cfg.iterations` and that iteration's result."""
        from dsl.data.segments import build_segments
        from dsl.method.rules import one_hot
        from dsl.pipeline.chain import iterate_chain

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

    # -- prediction -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.network is None or self.forest is None:
            raise RuntimeError("EmotionModel is not fitted: call fit(...) or EmotionModel.load(directory)")

    def segment_posteriors(self, frames: np.ndarray) -> np.ndarray:
        """(segments, K) network posteriors for one utterance's frames ((frames, n_mels) log-Mel, (frames, D)
        or (frames, L, D) SSL hidden states)."""
        return self._posteriors([frames])[0]

    def _posteriors(self, per_utterance: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        from dsl.data.frontend import stack_utterances
        from dsl.data.segments import build_segments
        from dsl.execution.fold_job import frame_batcher
        from dsl.training.train import predict_proba

        self._check_fitted()
        assert self.cfg is not None
        frames, offsets = stack_utterances(per_utterance, self.cfg.features)
        seg = build_segments(offsets, self.cfg.segments, warn=False)
        batcher = frame_batcher(frames, self.mean, self.std, self.cfg, torch.device("cpu"))
        post = predict_proba(self.network, batcher, torch.from_numpy(seg.rows.astype(np.int64)),
                             dataclasses.replace(self.cfg.train, amp=False, precision="fp32"))
        return [post[seg.offsets[u]:seg.offsets[u + 1]] for u in range(len(per_utterance))]

    def _features(self, paths: Sequence[str | Path]) -> list[np.ndarray]:
        """The training front end on new audio (`features.compute_features`, as the cache computes it)."""
        from dsl.data.audio import load_audio
        from dsl.data.frontend import compute_features

        assert self.cfg is not None
        spec = self.cfg.features
        signals = [load_audio(p, spec.sample_rate, spec.win_length / spec.sample_rate) for p in paths]
        return compute_features(signals, spec)

    def _forest_proba(self, post: np.ndarray) -> np.ndarray:
        from dsl.method.evaluate import utterance_features

        feats = utterance_features(post, np.array([0, len(post)], dtype=np.int64))
        proba = np.zeros(len(self.label_names))
        proba[self.forest.classes_] = self.forest.predict_proba(feats)[0]
        return proba

    def predict_details(self, paths: Sequence[str | Path]) -> list[Prediction]:
        """Label, class probabilities and segment posteriors of each audio file."""
        self._check_fitted()
        out = []
        for path, frames in zip(paths, self._features(paths)):
            post = self.segment_posteriors(frames)
            proba = self._forest_proba(post)
            out.append(Prediction(str(path), self.label_names[int(np.argmax(proba))],
                                  {n: float(p) for n, p in zip(self.label_names, proba)}, post))
        return out

    def predict_proba(self, paths: Sequence[str | Path]) -> np.ndarray:
        """(n_files, K) forest probabilities, columns in `label_names` order."""
        return np.array([[p.probabilities[n] for n in self.label_names] for p in self.predict_details(paths)])

    def predict(self, paths: Sequence[str | Path]) -> list[str]:
        """The emotion label of each audio file."""
        return [p.label for p in self.predict_details(paths)]

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        import joblib
        import torch

        self._check_fitted()
        assert self.cfg is not None
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(self.cfg.to_yaml())
        (d / "model.json").write_text(json.dumps({"format": MODEL_FORMAT, "label_names": list(self.label_names),
                                                  "layers": self.layers, **self.info}, indent=2))
        if self.cfg.features.kind == "ssl":
            _copy_checkpoint(Path(self.cfg.features.ssl_model), d / "ssl_model")
        torch.save({k: v.cpu() for k, v in self.network.state_dict().items()}, d / "weights.pt")
        np.savez(d / "normalisation.npz", mean=self.mean, std=self.std)
        joblib.dump(self.forest, d / "forest.joblib")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> EmotionModel:
        import joblib
        import torch

        from dsl.formats import check_format
        from dsl.plugins import load_plugins
        from dsl.training.layer_sum import create_network

        d = find_model_dir(directory)
        info = json.loads((d / "model.json").read_text())
        check_format(d / "model.json", int(info.pop("format", 1)), MODEL_FORMAT, "model", "load it",
                     "loading it as the same layout")
        cfg = from_dict(yaml.safe_load((d / "config.yaml").read_text()))
        load_plugins(cfg.plugins)  # a plugin backbone must be registered before it can be built
        if cfg.features.kind == "ssl":
            cfg = _with_checkpoint(cfg, d, info.get("ssl_fingerprint"))
        model = cls(cfg)
        model.label_names = tuple(info.pop("label_names"))
        model.layers = int(info.pop("layers", 1))
        net = create_network(cfg.backbone, len(model.label_names), model.layers)
        net.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
        model.network = net.eval()
        with np.load(d / "normalisation.npz") as z:
            model.mean, model.std = z["mean"], z["std"]
        model.forest, model.info = joblib.load(d / "forest.joblib"), info
        return model


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """The checkpoint's config and weight files, mtimes kept (so its fingerprint is the same)."""
    import shutil

    from dsl.data.ssl_features import FINGERPRINTED

    if src.resolve() == dst.resolve():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in FINGERPRINTED:
            shutil.copy2(f, dst / f.name)


def _with_checkpoint(cfg: ChainConfig, d: Path, fingerprint: list | None) -> ChainConfig:
    """The config reading the model directory's own copy of the SSL checkpoint (when it has one); warns when
    the checkpoint used differs from the one the network was trained on."""
    import warnings

    from dsl.data.ssl_features import checkpoint_fingerprint

    if (d / "ssl_model" / "config.json").is_file():
        cfg = cfg.replace(**{"features.ssl_model": str(d / "ssl_model")})
    path = Path(cfg.features.ssl_model)
    if fingerprint is not None and path.is_dir() and checkpoint_fingerprint(path) != fingerprint:
        warnings.warn(f"{path}: the SSL checkpoint differs from the one this model was trained with (file names, "
                      "sizes or mtimes changed); its predictions may be off", UserWarning, stacklevel=3)
    return cfg


def train_final(cfg: ChainConfig, out_dir: str | Path, info: dict | None = None, show_progress: bool = True) -> Path:
    """Fit an `EmotionModel` on the config's whole corpus and save it under `out_dir`."""
    from dsl.data.bundle import prepare_data

    check_stage(cfg)  # before the features are extracted
    data = prepare_data(final_config(cfg), show_progress=show_progress)
    return EmotionModel(cfg).fit(data, show_progress=show_progress, info=info).save(out_dir)


def find_model_dir(root: str | Path) -> Path:
    """The model directory inside `root` (itself, or a downloaded pyfunc's artifacts)."""
    root = Path(root)
    if (root / "model.json").exists() and (root / "weights.pt").exists():
        return root
    hits = [p.parent for p in root.rglob("model.json") if (p.parent / "weights.pt").exists()]
    if not hits:
        raise FileNotFoundError(f"no DSL model directory (model.json + weights.pt) under {root}")
    return hits[0]
