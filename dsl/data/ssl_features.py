"""Self-supervised speech-model features (`features.kind: ssl`): a local wav2vec 2.0 / HuBERT / WavLM checkpoint's
hidden states per model frame (20 ms for wav2vec2-style models), one chosen layer or all of them.

Only public transformers API: `AutoModel.from_pretrained(path, local_files_only=True)` in eval mode, called with
`output_hidden_states=True` under `torch.no_grad()`; nothing is ever downloaded. The waveform is normalised as the
checkpoint's feature extractor says when it has a `preprocessor_config.json` (`AutoFeatureExtractor`), else to
zero mean and unit variance per utterance. Utterances longer than `CHUNK_SECONDS` run in chunks (a multiple of
the model's hop each, so frames stay on one grid; a chunk boundary costs about one frame).

Output per utterance: (frames, D) for one layer, (frames, L, D) for every hidden state (`ssl_layer_sum`); the
cache flattens the latter to (frames, L*D) and the network's `dsl.training.layer_sum.LayerSum` views it as (L, D) again.
`checkpoint_fingerprint` (names, sizes and mtimes of the checkpoint's config and weight files) is part of every
cache key, so a changed checkpoint is never served from the cache.
"""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dsl.config import ConfigError, FeatureSpec

CHUNK_SECONDS = 30.0  # longest piece of audio run through the model at once
WEIGHT_SUFFIXES = (".safetensors", ".bin")
FINGERPRINTED = (".json", *WEIGHT_SUFFIXES)  # config, preprocessor config, weights (and their shard indexes)
EXTRACTOR_VERSION = 1  # bump when the way features are computed here changes: old cache entries then miss


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def n_hidden_states(path: str | Path) -> int | None:
    """Entries of the model's `hidden_states` (the CNN encoder's projection + one per transformer layer),
    from its config.json; None when it cannot be read."""
    cfg = _read_json(Path(path) / "config.json")
    layers = cfg.get("num_hidden_layers") if cfg else None
    return int(layers) + 1 if isinstance(layers, int) else None


def checkpoint_problems(spec: FeatureSpec) -> list[str]:
    """Why `spec.ssl_model` cannot be used (empty when it can), each naming the path and the problem."""
    if importlib.util.find_spec("transformers") is None:
        return ["features.kind ssl needs the transformers package: pip install 'dsl-sweeps[ssl]' "
                "(or pip install 'transformers>=4.40')"]
    if not spec.ssl_model:
        return ["features.ssl_model is empty: features.kind ssl needs a local Hugging Face checkpoint directory "
                "(a wav2vec 2.0 / HuBERT / WavLM model saved with save_pretrained); nothing is downloaded"]
    d = Path(spec.ssl_model)
    if not d.is_dir():
        return [f"features.ssl_model {spec.ssl_model}: no such directory (a local checkpoint saved with "
                "save_pretrained is needed; nothing is downloaded)"]
    p: list[str] = []
    if not (d / "config.json").is_file():
        p.append(f"features.ssl_model {d}: no config.json (not a save_pretrained checkpoint directory)")
    elif _read_json(d / "config.json") is None:
        p.append(f"features.ssl_model {d}: config.json is not a JSON object")
    if not any(f.suffix in WEIGHT_SUFFIXES for f in d.iterdir() if f.is_file()):
        p.append(f"features.ssl_model {d}: no weight files (*.safetensors or pytorch_model.bin)")
    n = n_hidden_states(d)
    if n is None and not p:
        p.append(f"features.ssl_model {d}: config.json has no num_hidden_layers (not a speech transformer?)")
    if n is not None and not spec.ssl_layer_sum and not -n <= spec.ssl_layer < n:
        p.append(f"features.ssl_layer = {spec.ssl_layer}; {d} has {n} hidden states: allowed -{n}..{n - 1}")
    pre = _read_json(d / "preprocessor_config.json") if (d / "preprocessor_config.json").is_file() else {}
    rate = (pre or {}).get("sampling_rate")
    if isinstance(rate, int) and rate != spec.sample_rate:
        p.append(f"features.sample_rate = {spec.sample_rate} but {d / 'preprocessor_config.json'} expects "
                 f"{rate} Hz: set features.sample_rate: {rate}")
    return p


def checkpoint_fingerprint(path: str | Path) -> list[list[Any]]:
    """[name, size, mtime_ns] of the checkpoint's config and weight files: what makes cached features stale."""
    d = Path(path)
    return [[f.name, (st := f.stat()).st_size, st.st_mtime_ns]
            for f in sorted(d.iterdir()) if f.is_file() and f.suffix in FINGERPRINTED]


def identity(spec: FeatureSpec) -> dict[str, Any]:
    """What, besides the spec, identifies these features: the checkpoint's fingerprint, the transformers
    version and this module's extractor version (for the cache keys)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tf_version = version("transformers")
    except PackageNotFoundError:
        tf_version = None
    fingerprint = checkpoint_fingerprint(spec.ssl_model) if spec.ssl_model and Path(spec.ssl_model).is_dir() else None
    return {"checkpoint": fingerprint, "transformers": tf_version, "extractor": EXTRACTOR_VERSION}


def _check(spec: FeatureSpec) -> None:
    problems = checkpoint_problems(spec)
    if problems:
        raise ConfigError("invalid ssl front end:\n  " + "\n  ".join(problems))


@lru_cache(maxsize=2)
def _load(path: str, fingerprint: str) -> tuple[Any, Any, Any]:
    """(model in eval mode on its device, feature extractor or None, device); `fingerprint` keys the cache."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    try:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a bad checkpoint
        raise ConfigError(f"features.ssl_model {path}: cannot load the checkpoint with "
                          f"AutoModel.from_pretrained: {type(exc).__name__}: {exc}") from exc
    extractor = None
    if (Path(path) / "preprocessor_config.json").is_file():
        try:
            extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"features.ssl_model {path}: cannot load preprocessor_config.json with "
                              f"AutoFeatureExtractor: {type(exc).__name__}: {exc}") from exc
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), extractor, device


def _normalised(signal: np.ndarray, extractor: Any, sample_rate: int) -> np.ndarray:
    x = np.asarray(signal, dtype=np.float32)
    if extractor is not None:
        out = extractor(x, sampling_rate=sample_rate, return_tensors="np")["input_values"]
        return np.asarray(out, dtype=np.float32).reshape(-1)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)


def _chunks(n: int, hop: int, sample_rate: int) -> list[tuple[int, int]]:
    """[start, end) pieces of at most ~CHUNK_SECONDS, multiples of `hop` long; a short tail joins the last."""
    size = max(hop, int(CHUNK_SECONDS * sample_rate) // hop * hop)
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < sample_rate:  # under a second: merge with the previous
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def ssl_batch(signals: list[np.ndarray], spec: FeatureSpec) -> list[np.ndarray]:
    """Hidden states of each signal: (frames, D) for `spec.ssl_layer`, or (frames, L, D) with `ssl_layer_sum`."""
    import torch

    _check(spec)
    model, extractor, device = _load(str(Path(spec.ssl_model).resolve()),
                                     json.dumps(checkpoint_fingerprint(spec.ssl_model)))
    strides = getattr(model.config, "conv_stride", None) or (320,)
    hop = int(np.prod(strides))
    out = []
    for signal in signals:
        x = _normalised(signal, extractor, spec.sample_rate)
        pieces = []
        for a, b in _chunks(len(x), hop, spec.sample_rate):
            with torch.no_grad():
                hidden = model(torch.from_numpy(x[a:b])[None].to(device), output_hidden_states=True).hidden_states
            h = torch.stack(hidden, dim=2)[0] if spec.ssl_layer_sum else hidden[spec.ssl_layer][0]
            pieces.append(h.float().cpu().numpy())
        out.append(np.concatenate(pieces).astype(np.float32, copy=False))
    return out
