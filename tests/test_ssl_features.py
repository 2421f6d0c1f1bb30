"""`features.kind: ssl`: hidden states of a tiny randomly initialised wav2vec 2.0 checkpoint that the tests build
and save themselves (nothing is downloaded), cached per file and per checkpoint; one layer or a learned layer sum."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from dsl.config import ChainConfig, ConfigError, FeatureSpec, TrainSpec
from dsl.data import feature_cache as cache
from dsl.pipeline.checks import check_config
from dsl.training.layer_sum import LayerSum, create_network
from dsl.training.train import SegmentBatcher, fit
from tests.support.data import TINY, write_tone

HIDDEN, LAYERS = 32, 2  # hidden size; transformer layers (hidden_states: LAYERS + 1)
KERNELS, STRIDES = (10, 8, 4), (5, 8, 8)  # 320 samples per frame: 20 ms at 16 kHz, like wav2vec2-base


def save_tiny_checkpoint(path: Path, seed: int = 0, preprocessor: bool = True) -> Path:
    """A randomly initialised 2-layer wav2vec 2.0 (hidden 32) saved with save_pretrained."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_kernel=KERNELS, conv_stride=STRIDES,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(cfg).save_pretrained(path)
    if preprocessor:
        Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000).save_pretrained(path)
    return path


def expected_frames(n_samples: int) -> int:
    n = n_samples
    for k, s in zip(KERNELS, STRIDES):
        n = (n - k) // s + 1
    return n


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("w2v2-tiny"))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ssl-wavs")
    return [write_tone(root / f"t{i}.wav", seconds=s, freq=f) for i, (s, f) in enumerate(((0.5, 300.0), (0.83, 900.0)))]


def _ssl(checkpoint: Path, **kw) -> FeatureSpec:
    return FeatureSpec(kind="ssl", ssl_model=str(checkpoint), **kw)


def test_features_have_the_model_frames_and_are_cached_per_checkpoint(checkpoint, wavs, tmp_path, monkeypatch) -> None:
    one = cache.extract_corpus(wavs, _ssl(checkpoint), tmp_path / "c", show_progress=False)
    lengths = [int(0.5 * 16000), int(0.83 * 16000)]
    assert list(np.diff(one.offsets)) == [expected_frames(n) for n in lengths]
    assert one.frames.shape == (one.offsets[-1] + 1, HIDDEN) and one.layers == 1
    assert not np.any(one.frames[-1])  # the padding row
    stack = cache.extract_corpus(wavs, _ssl(checkpoint, ssl_layer_sum=True), tmp_path / "c", show_progress=False)
    assert stack.frames.shape == (one.offsets[-1] + 1, (LAYERS + 1) * HIDDEN) and stack.layers == LAYERS + 1
    # the last hidden state is the last block of the stack; layer 0 differs from it
    np.testing.assert_allclose(stack.frames[:-1, -HIDDEN:], one.frames[:-1], atol=1e-5)
    first = cache.extract_corpus(wavs, _ssl(checkpoint, ssl_layer=0), tmp_path / "c", show_progress=False)
    assert not np.allclose(first.frames[:-1], one.frames[:-1])

    def no_model(*a, **k):
        raise AssertionError("features were recomputed")
    monkeypatch.setattr(cache, "compute_features", no_model)
    again = cache.extract_corpus(wavs, _ssl(checkpoint), tmp_path / "c", show_progress=False)  # from the cache
    assert again.key == one.key
    np.testing.assert_array_equal(again.frames, one.frames)
    for f in checkpoint.glob("*.safetensors"):  # a changed checkpoint is not served from the cache
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert cache.corpus_key(wavs, _ssl(checkpoint)) != one.key
    with pytest.raises(AssertionError, match="recomputed"):
        cache.extract_corpus(wavs, _ssl(checkpoint), tmp_path / "c", show_progress=False)


def test_waveform_normalisation_follows_the_checkpoint(tmp_path, wavs) -> None:
    from dsl.data.audio import load_audio
    from dsl.data.ssl_features import ssl_batch

    x = load_audio(wavs[0], 16000)
    for name, pre, invariant in (("plain", False, True), ("norm", True, True)):
        spec = _ssl(save_tiny_checkpoint(tmp_path / name, preprocessor=pre))
        a, b = ssl_batch([x, 3.0 * x], spec)
        assert np.allclose(a, b, atol=1e-4) == invariant, name  # zero mean, unit variance per utterance
    raw = tmp_path / "raw"
    save_tiny_checkpoint(raw, preprocessor=False)
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(raw)
    a, b = ssl_batch([x, 3.0 * x], _ssl(raw))  # the extractor says: no normalisation
    assert not np.allclose(a, b, atol=1e-4)


def test_bad_checkpoint_gives_a_clear_config_error(tmp_path, wavs, monkeypatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"features.ssl_model {missing}: no such directory"):
        check_config(ChainConfig().replace(**{"features.kind": "ssl", "features.ssl_model": str(missing)}))
    with pytest.raises(ConfigError, match="features.ssl_model is empty"):
        check_config(ChainConfig().replace(**{"features.kind": "ssl"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json.*\n.*no weight files"):
        check_config(ChainConfig().replace(**{"features.kind": "ssl", "features.ssl_model": str(tmp_path / "empty")}))
    with pytest.raises(ConfigError, match=f"{missing}: no such directory"):  # extraction checks too
        cache.extract_corpus(wavs, _ssl(missing), tmp_path / "c", show_progress=False)
    with pytest.raises(ConfigError, match="features.kind 'mfcc' is unknown"):
        check_config(ChainConfig().replace(**{"features.kind": "mfcc"}))
    with pytest.raises(ConfigError, match="apply only to features.kind: ssl"):
        check_config(ChainConfig().replace(**{"features.ssl_model": str(missing)}))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    with pytest.raises(ConfigError, match="needs the transformers package"):
        check_config(ChainConfig().replace(**{"features.kind": "ssl", "features.ssl_model": str(missing)}))


def test_layer_out_of_range_and_sample_rate_mismatch(checkpoint) -> None:
    with pytest.raises(ConfigError, match=r"ssl_layer = 3; .* has 3 hidden states: allowed -3\.\.2"):
        check_config(ChainConfig().replace(**{"features.kind": "ssl", "features.ssl_model": str(checkpoint),
                                              "features.ssl_layer": 3}))
    with pytest.raises(ConfigError, match="expects 16000 Hz"):
        check_config(ChainConfig().replace(**{"features.kind": "ssl", "features.ssl_model": str(checkpoint),
                                              "features.sample_rate": 8000}))


def test_layer_sum_weights_are_learned_and_favour_the_informative_layer() -> None:
    """Three stacked layers, only the middle one carries the class: training moves the softmax weights
    off their equal start and towards that layer (a LayerSum that did nothing would fail both)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, length, d, layers = 192, 8, 16, 3
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, length, layers, d)).astype(np.float32)
    x[:, :, 1, :4] += 1.5 * (2 * labels[:, None, None] - 1)
    frames = torch.from_numpy(x.reshape(n * length, layers * d))
    rows = torch.arange(n * length).reshape(n, length)
    targets = torch.from_numpy(np.eye(2, dtype=np.float32)[labels])
    spec = TrainSpec(epochs=4, batch_size=32, lr=1e-2, patience=4, val_fraction=0.0)
    model, _ = fit("tiny_cnn", 2, SegmentBatcher(frames), rows[:160], targets[:160], rows[160:], targets[160:], spec,
                   0, layers=layers)
    assert isinstance(model, LayerSum)
    w = model.layer_weights().detach().numpy()
    assert not np.allclose(w, 1 / 3, atol=1e-3)
    assert int(np.argmax(w)) == 1 and w[1] - max(w[0], w[2]) > 0.05, w  # measured 0.39 vs 0.30
    assert isinstance(create_network("tiny_cnn", 2, 1), torch.nn.Module) and not isinstance(
        create_network("tiny_cnn", 2, 1), LayerSum)


@pytest.fixture(scope="module")
def ssl_chain_cfg(tone_corpus, checkpoint, tmp_path_factory) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(tmp_path_factory.mktemp("ssl-cache"))).replace(
        **{**TINY, "iterations": 1, "train.epochs": 2, "segments.length": 8, "segments.hop": 4,
           "features.kind": "ssl", "features.ssl_model": str(checkpoint)})


@pytest.mark.parametrize("layer_sum", [False, True], ids=["one_layer", "layer_sum"])
def test_chain_runs_on_ssl_features(ssl_chain_cfg, layer_sum) -> None:
    from dsl.studies.run import run

    result = run(ssl_chain_cfg.replace(**{"features.ssl_layer_sum": layer_sum}), show_progress=False)
    assert [r.iteration for r in result.iterations] == [0, 1]
    assert result.iterations[0].posteriors.shape == (result.n_segments, 3)
    assert result.n_utterances == 24 and 0.0 <= result.iterations[-1].ua <= 1.0


def test_emotion_model_computes_the_same_features_and_carries_its_checkpoint(ssl_chain_cfg, tmp_path) -> None:
    import shutil

    from dsl.data.bundle import prepare_data
    from dsl.pipeline.model import EmotionModel

    ckpt = tmp_path / "ckpt"
    shutil.copytree(ssl_chain_cfg.features.ssl_model, ckpt)
    cfg = ssl_chain_cfg.replace(**{"features.ssl_layer_sum": True, "features.ssl_model": str(ckpt),
                                   "iterations": 0, "protocol.folds": 2})
    data = prepare_data(cfg, show_progress=False)
    model = EmotionModel(cfg).fit(data, show_progress=False)
    assert isinstance(model.network, LayerSum) and model.layers == LAYERS + 1
    # new audio goes through the same front end as the cache: the training files' frames match
    feats = model._features(data.paths[:2])
    np.testing.assert_allclose(feats[0].reshape(len(feats[0]), -1), data.frames[data.frame_offsets[0]:data.frame_offsets[1]],
                               atol=1e-5)
    proba = model.predict_proba(data.paths[:3])
    d = model.save(tmp_path / "m")
    assert (d / "ssl_model" / "config.json").is_file()
    shutil.rmtree(ckpt)  # the saved model does not need the original checkpoint
    back = EmotionModel.load(d)
    assert back.cfg.features.ssl_model == str(d / "ssl_model")
    np.testing.assert_allclose(back.predict_proba(data.paths[:3]), proba, atol=1e-6)
    # the MLflow pyfunc of the directory (its artifacts carry the checkpoint copy) predicts the same
    import mlflow.pyfunc

    from tracking.pyfunc import DslPyfunc, predict_requirements

    assert "transformers" in predict_requirements("ssl") and "transformers" not in predict_requirements("logmel")
    mlflow.pyfunc.save_model(str(tmp_path / "pyfunc"), python_model=DslPyfunc(), artifacts={"model_dir": str(d)},
                             pip_requirements=["torch"])
    served = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(list(data.paths[:3]))
    np.testing.assert_allclose(served[list(data.label_names)].to_numpy(), proba, atol=1e-6)


def test_front_end_is_searchable_and_ssl_keys_are_conditional(checkpoint) -> None:
    import optuna

    from sweeps.search.space import feature_variants
    from sweeps.search.spec import parse_sweep

    spec = parse_sweep({"name": "fe", "base": {"corpus": "emodb", "data": "/x",
                                               "features": {"kind": "ssl", "ssl_model": str(checkpoint)}},
                        "search": {"features.kind": ["logmel", "ssl"], "features.ssl_layer_sum": [False, True],
                                   "features.ssl_layer": [0, -1]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        t = study.ask()
        spec.space(t)
        p = t.params
        assert ("features.ssl_layer_sum" in p) == (p["features.kind"] == "ssl"), p
        assert ("features.ssl_layer" in p) == (p["features.kind"] == "ssl" and not p["features.ssl_layer_sum"]), p
        seen.add((p["features.kind"], p.get("features.ssl_layer_sum"), p.get("features.ssl_layer")))
    assert len(seen) == 4
    for cfg in spec.samples:  # a log-Mel trial carries no SSL keys
        assert cfg.features.kind == "ssl" or cfg.features == FeatureSpec()
    variants = feature_variants(spec.space)
    assert variants[0] == spec.base.features and len(variants) == 4
    assert {(f.kind, f.ssl_layer_sum, f.ssl_layer) for f in variants} == {
        ("ssl", False, -1), ("ssl", False, 0), ("ssl", True, -1), ("logmel", False, -1)}
    from dsl.config import ConfigError as CE

    with pytest.raises(CE, match="features.n_mels"):
        parse_sweep({"name": "fe", "base": {"corpus": "emodb", "data": "/x"}, "search": {"features.n_mels": [40, 64]}})
    with pytest.raises(CE, match="search.features.ssl_layer: give a list of choices"):
        parse_sweep({"name": "fe", "base": {"corpus": "emodb", "data": "/x",
                                            "features": {"kind": "ssl", "ssl_model": str(checkpoint)}},
                     "search": {"features.ssl_layer": {"low": 0, "high": 2}}})


@pytest.mark.slow
@pytest.mark.emodb
def test_cpu_chain_on_emodb_with_the_tiny_ssl_model(emodb_path, checkpoint, tmp_path) -> None:
    """Structure only (the model is random): a `cpu` preset chain on the real EmoDB copy over the layer sum."""
    from dsl.config import load_config
    from dsl.studies.run import run

    cfg = load_config(preset_name="cpu", overrides={
        "data": str(emodb_path), "cache_dir": str(tmp_path / "cache"), "iterations": 0, "protocol.folds": 2,
        "protocol.eval_folds": 2, "train.epochs": 1, "features.kind": "ssl", "features.ssl_model": str(checkpoint),
        "features.ssl_layer_sum": True})
    result = run(cfg, show_progress=False)
    assert result.n_utterances == 535 and len(result.label_names) == 7
    assert result.iterations[0].posteriors.shape == (result.n_segments, 7)
    np.testing.assert_allclose(result.iterations[0].posteriors.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.emodb
def test_sweep_searches_the_front_end(checkpoint, tmp_path_factory) -> None:
    """A grid over features.kind: the driver extracts both front ends and each trial trains on its own frames."""
    import ray

    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import parse_sweep
    from tests.support.sweep import tiny_data, tiny_sweep

    data, cache_dir = tiny_data(tmp_path_factory)
    if ray.is_initialized():
        ray.shutdown()
    tmp = tmp_path_factory.mktemp("ssl-sweep")
    raw = tiny_sweep("front_ends", data, cache_dir, tmp / "ray_results", num_samples=2, max_concurrent=1,
                     sampler={"type": "grid"}, search={"rule": ["baseline"], "iterations": 0,
                                                       "features.kind": ["logmel", "ssl"]})
    raw["base"]["features"] = {"kind": "ssl", "ssl_model": str(checkpoint)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSL_PROGRESS", "0")
        out = run_sweep(parse_sweep(raw), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    assert not out.interrupted and out.errors == 0 and [r.status for r in out.rows] == ["done", "done"]
    from trainables.checkpoint import TrialCheckpoint

    segments = {}  # the contour utterance's segments: 10 ms log-Mel frames give about twice the 20 ms SSL ones
    for d in sorted(Path(out.experiment_path).glob("*/checkpoint_*")):
        ckpt = TrialCheckpoint.load(d)
        segments[ckpt.config["features"]["kind"]] = len(ckpt.contour[0])
    assert set(segments) == {"logmel", "ssl"} and segments["logmel"] > 1.5 * segments["ssl"], segments


def test_ssl_example_sweep_parses(checkpoint) -> None:
    import yaml

    from sweeps.search.space import feature_variants
    from sweeps.search.spec import parse_sweep

    raw = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "examples" / "ssl_emodb.yaml").read_text())
    raw["base"]["features"]["ssl_model"] = str(checkpoint)
    with pytest.raises(ConfigError, match="ssl_layer = 6; .* allowed -3..2"):  # the tiny model has 3 hidden states
        parse_sweep(raw, data="/nonexistent/emodb")
    raw["search"]["features.ssl_layer"] = [1, -1]
    spec = parse_sweep(raw, data="/nonexistent/emodb")
    assert len(feature_variants(spec.space)) == 4  # ssl layer 1, ssl last, ssl layer sum, log-Mel
