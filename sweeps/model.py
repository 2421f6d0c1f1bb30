"""A trained DSL emotion model as a plain directory, its predictor, and its MLflow pyfunc wrapper.

Directory layout: `config.yaml` (ChainConfig), `model.json` (label names, iteration, source run),
`weights.pt` (network state dict), `normalisation.npz` (per-mel mean/std of the training frames),
`forest.joblib` (random forest on the 8K utterance statistics of segment posteriors).
Prediction: log-Mel -> segments -> network posteriors -> utterance statistics -> forest.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from dsl.config import ChainConfig, from_dict


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]
    segment_posteriors: np.ndarray  # (segments, K)


class EmotionModel:
    """Loads a model directory and predicts utterances (any sample rate; resampled like the corpus)."""

    def __init__(self, cfg: ChainConfig, label_names: Sequence[str], network, mean: np.ndarray, std: np.ndarray,
                 forest, info: dict[str, Any]):
        self.cfg, self.label_names, self.network = cfg, tuple(label_names), network
        self.mean, self.std, self.forest, self.info = mean, std, forest, info

    @classmethod
    def load(cls, directory: str | Path) -> "EmotionModel":
        import joblib
        import torch

        from dsl.backbones import create_backbone
        from dsl.plugins import load_plugins

        d = Path(directory)
        cfg = from_dict(yaml.safe_load((d / "config.yaml").read_text()))
        load_plugins(cfg.plugins)  # a plugin backbone must be registered before it can be built
        info = json.loads((d / "model.json").read_text())
        net = create_backbone(cfg.backbone, len(info["label_names"]))
        net.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
        net.eval()
        with np.load(d / "normalisation.npz") as z:
            mean, std = z["mean"], z["std"]
        return cls(cfg, info["label_names"], net, mean, std, joblib.load(d / "forest.joblib"), info)

    def segment_posteriors(self, frames: np.ndarray) -> np.ndarray:
        """(segments, K) network posteriors for one utterance's (frames, n_mels) log-Mel."""
        import torch

        from dsl.segments import build_segments
        from dsl.train import SegmentBatcher, predict_proba

        pad = np.full((1, frames.shape[1]), np.log(self.cfg.features.log_eps), dtype=np.float32)
        x = (np.concatenate([frames, pad]).astype(np.float32) - self.mean) / self.std
        seg = build_segments(np.array([0, len(frames)], dtype=np.int64), self.cfg.segments, warn=False)
        batcher = SegmentBatcher(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return predict_proba(self.network, batcher, torch.from_numpy(seg.rows.astype(np.int64)),
                             dataclasses.replace(self.cfg.train, amp=False))

    def predict(self, paths: Sequence[str | Path]) -> list[Prediction]:
        from dsl.audio import load_audio
        from dsl.evaluate import utterance_features
        from dsl.features import logmel_batch

        spec = self.cfg.features
        signals = [load_audio(p, spec.sample_rate, spec.win_length / spec.sample_rate) for p in paths]
        out = []
        for path, frames in zip(paths, logmel_batch(signals, spec)):
            post = self.segment_posteriors(frames)
            feats = utterance_features(post, np.array([0, len(post)], dtype=np.int64))
            proba = np.zeros(len(self.label_names))
            proba[self.forest.classes_] = self.forest.predict_proba(feats)[0]
            out.append(Prediction(str(path), self.label_names[int(np.argmax(proba))],
                                  {n: float(p) for n, p in zip(self.label_names, proba)}, post))
        return out


def save_model(directory: str | Path, cfg: ChainConfig, label_names: Sequence[str], network, mean: np.ndarray,
               std: np.ndarray, forest, info: dict[str, Any]) -> Path:
    import joblib
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(cfg.to_yaml())
    (d / "model.json").write_text(json.dumps({"label_names": list(label_names), **info}, indent=2))
    torch.save({k: v.cpu() for k, v in network.state_dict().items()}, d / "weights.pt")
    np.savez(d / "normalisation.npz", mean=mean, std=std)
    joblib.dump(forest, d / "forest.joblib")
    return d


def find_model_dir(root: str | Path) -> Path:
    """The model directory inside `root` (itself, or a downloaded pyfunc's artifacts)."""
    root = Path(root)
    hits = [p.parent for p in root.rglob("model.json") if (p.parent / "weights.pt").exists()]
    if not hits:
        raise FileNotFoundError(f"no DSL model directory (model.json + weights.pt) under {root}")
    return hits[0]
