"""MTL-AUG's optional unlabelled corpus (`train.aux_data`): it changes training, feeds only the auxiliary
losses, is a config error where it does not apply, and a chain with it gives the same numbers in-process and in
worker processes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import ConfigError, TrainSpec
from dsl.data.bundle import CorpusData
from dsl.execution.fold_job import FoldJob, train_fold
from dsl.method.rules import one_hot
from dsl.pipeline.checks import check_config
from dsl.pipeline.trial_config import trial_config
from dsl.training.mtl import MTLAug
from dsl.training.train import SegmentBatcher, fit, predict_proba, soft_cross_entropy
from tests.support.data import TINY, write_tone
from tests.support.segments import separable_segments

SPEC = TrainSpec(epochs=2, batch_size=16, lr=3e-3, patience=2, aux="mtl_aug")


def _labelled(n: int = 64):
    return separable_segments(n)


def _unlabelled(frames: np.ndarray) -> tuple[SegmentBatcher, torch.Tensor]:
    n = (len(frames) - 1) // 32
    return SegmentBatcher(torch.from_numpy(frames)), torch.from_numpy(np.arange(n * 32).reshape(n, 32).astype(np.int64))


def _fit(aux_batcher=None, aux_rows=None, spec: TrainSpec = SPEC):
    labels, batcher, rows, targets = _labelled()
    model, _ = fit("small_cnn", 2, batcher, rows[:48], targets[:48], rows[48:], targets[48:], spec, 0,
                   aux_batcher=aux_batcher, aux_rows=aux_rows)
    return model, predict_proba(model, batcher, rows[48:], spec), labels[48:]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [v.detach().clone() for v in model.state_dict().values()]


def test_unlabelled_segments_change_the_trained_network() -> None:
    torch.set_num_threads(1)
    plain, _, _ = _fit()
    noise = np.random.default_rng(1).normal(size=(20 * 32 + 1, 64)).astype(np.float32)
    with_aux, _, _ = _fit(*_unlabelled(noise))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(plain), _weights(with_aux)))
    again, _, _ = _fit(*_unlabelled(noise))  # seeded from the job seed: reproducible
    assert all(torch.equal(a, b) for a, b in zip(_weights(with_aux), _weights(again)))
    # outside MTL-AUG the unlabelled segments are ignored
    none_spec = TrainSpec(epochs=2, batch_size=16, lr=3e-3, patience=2)
    a, _, _ = _fit(spec=none_spec)
    b, _, _ = _fit(*_unlabelled(noise), spec=none_spec)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))


def test_the_emotion_loss_sees_only_labelled_segments_and_a_silent_corpus_still_trains() -> None:
    torch.set_num_threads(1)
    _, batcher, rows, targets = _labelled()
    torch.manual_seed(0)
    from dsl.training.layer_sum import create_network

    net = create_network("small_cnn", 2)
    aux = MTLAug(net, SPEC, (64, 32), seed=0)
    seen: list[tuple[int, torch.Tensor]] = []

    def spy(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((len(logits), t))
        return soft_cross_entropy(logits, t)

    x, u = batcher(rows[:8]), torch.randn(8, 1, 64, 32)
    with_u = aux.loss(net, x, targets[:8], spy, u)
    assert len(seen) == 1 and seen[0][0] == 8 and seen[0][1] is not None and torch.equal(seen[0][1], targets[:8])
    with_u.backward()
    assert aux.decoder[0].weight.grad is not None
    # BatchNorm's running statistics (used at evaluation) are the labelled segments' alone
    before = [b.clone() for b in net.buffers()]
    with aux._running_stats_kept():
        net(torch.full((8, 1, 64, 32), -10.0))
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    # silence: constant frames (what log-Mel gives for digital silence); training stays finite and learns
    silence = np.full((20 * 32 + 1, 64), -11.5, dtype=np.float32)
    model, post, labels = _fit(*_unlabelled(silence))
    assert all(torch.isfinite(w.float()).all() for w in _weights(model))
    assert (post.argmax(1) == labels).mean() > 0.8


def _synthetic_data(aux: bool) -> CorpusData:
    rng = np.random.default_rng(0)
    n_utt, per = 16, 40
    labels = np.arange(n_utt) % 2
    frames = rng.normal(size=(n_utt * per + 1, 64)).astype(np.float32)
    for u, y in enumerate(labels):
        frames[u * per:(u + 1) * per, :8] += 2.0 * y
    aux_frames = rng.normal(size=(5 * per + 1, 64)).astype(np.float32) if aux else None
    return CorpusData(frames=frames, frame_offsets=np.arange(n_utt + 1, dtype=np.int64) * per,
                      labels=labels.astype(np.int64), speakers=np.array([f"s{u % 4}" for u in range(n_utt)]),
                      label_names=("a", "b"), paths=tuple(f"u{u}.wav" for u in range(n_utt)),
                      aux_frames=aux_frames, aux_offsets=np.arange(6, dtype=np.int64) * per if aux else None)


def test_without_aux_data_a_fold_ignores_aux_frames(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = ChainConfig().replace(**{"segments.length": 32, "segments.hop": 8, "train.epochs": 1,
                                   "train.batch_size": 16, "train.aux": "mtl_aug", "train.num_threads": 1,
                                   "train.device": "cpu"})
    plain, with_frames = _synthetic_data(aux=False), _synthetic_data(aux=True)
    seg_targets = np.repeat(one_hot(plain.labels, 2), 2, axis=0)  # 2 segments per 40-frame utterance
    job = FoldJob(0, 0, 0, np.arange(12), np.arange(12, 16), seg_targets[:24], 3)  # the 12 training utterances' rows
    a, b = train_fold(job, plain, cfg), train_fold(job, with_frames, cfg)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(b.model)))
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    aux_cfg = cfg.replace(**{"train.aux_data": str(folder)})
    c = train_fold(job, with_frames, aux_cfg)
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(c.model)))
    with pytest.raises(ValueError, match="carries no aux frames"):
        train_fold(job, plain, aux_cfg)


def test_aux_data_config_errors(tmp_path) -> None:
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    with pytest.raises(ConfigError, match="train.aux_data .* applies only to train.aux: mtl_aug"):
        check_config(ChainConfig().replace(**{"train.aux_data": str(folder)}))
    check_config(ChainConfig().replace(**{"train.aux": "mtl_aug", "train.aux_data": str(folder)}))
    # a trial without MTL-AUG drops it, like the other MTL-AUG keys
    base = ChainConfig().replace(**{"train.aux": "mtl_aug", "train.aux_data": str(folder)})
    assert trial_config(base, {"train.aux": "none"}).train.aux_data == ""
    # a missing or empty folder: a ConfigError naming it, when the data are prepared
    from dsl.data.aux_data import aux_audio_files

    with pytest.raises(ConfigError, match=f"train.aux_data '{folder / 'nope'}': not a folder"):
        aux_audio_files(folder / "nope")
    (folder / "notes.txt").write_text("no audio here")
    with pytest.raises(ConfigError, match=f"train.aux_data '{folder}': no .wav or .flac files"):
        aux_audio_files(folder)
    # sweeps: not searchable, and made absolute in the base
    from sweeps.search.spec import parse_sweep

    with pytest.raises(ConfigError, match="train.aux_data"):
        parse_sweep({"name": "m", "base": {"corpus": "emodb", "data": "/x", "train": {"aux": "mtl_aug"}},
                     "search": {"train.aux_data": ["/a", "/b"]}})
    import os

    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        spec = parse_sweep({"name": "m", "base": {"corpus": "emodb", "data": "/x",
                                                  "train": {"aux": "mtl_aug", "aux_data": "unlabelled"}},
                            "search": {"train.aux": ["none", "mtl_aug"]}})
    finally:
        os.chdir(here)
    assert spec.base.train.aux_data == str(folder.resolve())


def test_chain_with_aux_data_runs_locally_and_in_worker_processes_alike(tone_corpus, feature_cache, tmp_path) -> None:
    folder = tmp_path / "unlabelled"
    for i, freq in enumerate((300.0, 1200.0, 3000.0)):
        write_tone(folder / "sub" / f"u{i}.wav", seconds=0.7, freq=freq)
    (folder / "bad.wav").write_bytes(b"not audio")
    cfg = ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(feature_cache)).replace(
        **{**TINY, "iterations": 0, "train.epochs": 2, "train.aux": "mtl_aug", "train.aux_data": str(folder)})
    from dsl.data.audio import BadAudioError

    with pytest.raises(BadAudioError, match="bad.wav"):
        prepare_data(cfg, show_progress=False)
    cfg = cfg.replace(bad_files="skip")
    data = prepare_data(cfg, show_progress=False)
    assert data.aux_offsets is not None and len(data.aux_offsets) == 4 and str(folder / "bad.wav") in data.skipped
    assert data.aux_frames.shape[1] == data.frames.shape[1]
    from dsl.studies.run import protocol_line

    assert "train.aux_data" in protocol_line(cfg) and "transductive in the audio" in protocol_line(cfg)
    serial = run_chain(cfg, data, show_progress=False).iterations[0]
    parallel = run_chain(cfg.replace(**{"train.workers": 2}), data, show_progress=False).iterations[0]
    np.testing.assert_array_equal(serial.posteriors, parallel.posteriors)
    without = run_chain(cfg.replace(**{"train.aux_data": ""}), data, show_progress=False).iterations[0]
    assert not np.array_equal(serial.posteriors, without.posteriors)


URDU = Path("/work/shared/data/urdu")


@pytest.mark.slow
@pytest.mark.emodb
def test_cpu_chain_on_emodb_with_urdu_as_unlabelled_audio(emodb_path, feature_cache) -> None:
    """Structure only: the `cpu` preset on EmoDB, iteration 0, 2 folds, 1 epoch, Urdu audio for the aux tasks."""
    if not URDU.is_dir():
        pytest.skip(f"the Urdu corpus is not at {URDU}")
    from dsl.config import load_config
    from dsl.studies.run import protocol_line, run

    cfg = load_config(preset_name="cpu", overrides={
        "data": str(emodb_path), "cache_dir": str(feature_cache), "iterations": 0, "protocol.folds": 2,
        "protocol.eval_folds": 2, "train.epochs": 1, "train.aux": "mtl_aug", "train.aux_data": str(URDU)})
    assert f"train.aux_data: {URDU}" in protocol_line(cfg)
    result = run(cfg, show_progress=False)
    it = result.iterations[0]
    assert result.n_utterances == 535 and len(it.posteriors) > 0 and np.isfinite(it.ua)
    assert np.allclose(it.posteriors.sum(axis=1), 1.0, atol=1e-4)
