"""The `acp` utterance stage: attentive correlation pooling learns correlations and where to attend; fold jobs
return embeddings only for it; chains run with it under transductive and held-out protocols; its keys are
conditional in the search space; the final model refuses it."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from dsl import ChainConfig, prepare_data
from dsl.config import ConfigError, StageSpec, load_config
from dsl.execution.fold_job import FoldJob, run_fold_job
from dsl.method.acp import ACP
from dsl.method.stages import stage_input
from dsl.pipeline.checks import check_config
from dsl.pipeline.keys import key_applies
from dsl.pipeline.trial_config import trial_config
from sweeps.cli import main
from tests.support.data import TINY


def _correlation_task(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """3 classes that differ only in the correlation (+0.9, 0, -0.9) of channels 0 and 1 on the *relevant*
    segments (channel 5 = +1); on the others (channel 5 = -1) channels 0 and 1 are independent noise. Every
    channel has mean 0 and variance 1 in every class, so only pooled correlations, weighted towards the
    relevant segments, tell the classes apart."""
    rng = np.random.default_rng(seed)
    X, y, relevant = [], [], []
    for i in range(n):
        c = i % 3
        rho = (0.9, 0.0, -0.9)[c]
        length = int(rng.integers(12, 30))
        r = rng.random(length) < 0.4
        r[:3] = True
        z = rng.normal(size=(length, 6))
        partner = rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1]
        x = z.copy()
        x[:, 0] = np.where(r, z[:, 0], rng.normal(size=length))
        x[:, 1] = np.where(r, partner, rng.normal(size=length))
        x[:, 5] = np.where(r, 1.0, -1.0) + 0.1 * z[:, 5]
        X.append(x.astype(np.float32))
        y.append(c)
        relevant.append(r)
    return X, np.array(y), relevant


def test_acp_learns_correlations_and_where_to_attend() -> None:
    torch.set_num_threads(1)
    X, y, _ = _correlation_task(180, 0)
    X_test, y_test, relevant = _correlation_task(90, 1)
    acp = ACP(3, dim=8, epsilon=0.1, epochs=30, lr=3e-3, batch_size=32, seed=0).fit(X, y)
    assert (acp.predict(X_test) == y_test).mean() > 0.75  # chance is 1/3; measured 0.9+
    proba = acp.predict_proba(X_test)
    assert proba.shape == (90, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    again = ACP(3, dim=8, epsilon=0.1, epochs=30, lr=3e-3, batch_size=32, seed=0).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X_test), proba)  # seeded: the same fit twice
    # The attention is learned: it moves from its initial weights onto the relevant segments.
    share = np.mean([r.mean() for r in relevant])  # what uniform weights would put on them (~0.5)
    mass = lambda weights: np.mean([a[r].sum() for a, r in zip(weights, relevant)])  # noqa: E731
    learned, initial = acp.attention(X_test), acp.attention(X_test, acp.init_net(6))
    assert all(np.isclose(a.sum(), 1.0, atol=1e-5) for a in learned)
    assert abs(mass(initial) - share) < 0.15  # the initial scorer hardly prefers either kind
    assert mass(learned) > 0.9 and mass(learned) > share + 0.3
    assert np.mean([np.abs(a - b).max() for a, b in zip(learned, initial)]) > 0.05


def test_acp_rejects_bad_input() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        ACP(2).predict_proba([np.zeros((3, 4), np.float32)])
    with pytest.raises(ValueError, match="3 utterances but 2 labels"):
        ACP(2).fit([np.zeros((3, 4), np.float32)] * 3, np.array([0, 1]))
    acp = ACP(2, dim=2, epochs=1).fit([np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)] * 4,
                                      np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="fitted on 4 features per segment"):
        acp.predict_proba([np.zeros((3, 5), np.float32)])


def test_fold_jobs_return_embeddings_only_for_the_acp_stage(tone_corpus, feature_cache) -> None:
    cfg = ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(feature_cache)).replace(
        **{**TINY, "train.epochs": 1})
    data = prepare_data(cfg, show_progress=False)
    from dsl.data.segments import build_segments
    from dsl.method.rules import one_hot

    seg = build_segments(data.frame_offsets, cfg.segments, warn=False)
    utts = np.arange(data.n_utterances)
    job = FoldJob.of(0, 0, 0, utts[::2], utts[1::2], one_hot(data.labels[seg.utt], 3), 7, seg)
    forest = run_fold_job(job, data, cfg)
    acp = pickle.loads(pickle.dumps(run_fold_job(job, data, cfg.replace(**{"stage.name": "acp"}))))  # as between processes
    assert forest.embeddings is None
    n = len(seg.of_utterances(utts[1::2]))
    assert acp.embeddings.shape == (n, 96) and acp.embeddings.dtype == np.float16  # small_cnn's penultimate layer
    assert np.abs(acp.embeddings).max() > 0
    np.testing.assert_array_equal(acp.posteriors, forest.posteriors)  # reading the embedding changes nothing
    assert stage_input(StageSpec("acp", input="posterior")) == "posterior" == stage_input(StageSpec("forest"))


def _records(result: dict) -> list[dict]:
    return result["iterations"][-1]["utterances"]


def test_acp_chain_transductive_via_cli(tone_corpus, feature_cache, tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    code = main(["run", "--corpus", "csv", "--data", str(tone_corpus), "--cache-dir", str(feature_cache),
                 "--iterations", "1", "--epochs", "2", "--segment-hop", "4", "--batch-size", "16", "--lr", "0.003",
                 "--folds", "2", "--eval-folds", "2", "--threads", "1", "--set", "train.workers=1",
                 "--stage", "acp", "--set", "stage.epochs=10", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| stage acp (embedding, eps 0.1, dim 32) |" in printed
    result = json.loads(out.read_text())
    assert result["config"]["stage"]["name"] == "acp" and result["config"]["stage"]["epochs"] == 10
    assert [r["iteration"] for r in result["iterations"]] == [0, 1]
    assert all(r["val_ua"] is None for r in result["iterations"])
    assert all(abs(sum(u["proba"]) - 1) < 1e-4 for u in _records(result)) and len(_records(result)) == 24


def test_acp_chain_held_out(tone_corpus, feature_cache) -> None:
    from dsl.studies.run import run

    cfg = ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(feature_cache)).replace(
        **{**TINY, "iterations": 1, "train.epochs": 2, "protocol.name": "refinery", "protocol.select_folds": 2,
           "stage.name": "acp", "stage.input": "posterior", "stage.epochs": 10})
    result = run(cfg, show_progress=False)
    assert result.leak_free and len(result.iterations) == 2
    last = result.iterations[-1]
    assert len(last.val_ua) == 2 and all(0.0 <= v <= 1.0 for v in last.val_ua)
    assert len(last.selected_iterations) == 2 and last.selected_ua is not None
    assert np.allclose([sum(u["proba"]) for u in last.utterances], 1.0, atol=1e-4)
    assert last.ua > 0.5  # posteriors of pitch classes are easy; chance is 1/3


def test_stage_config_checks_and_conditional_search_space() -> None:
    assert load_config(overrides={"stage.name": "acp", "stage.dim": "8"}).stage == StageSpec(name="acp", dim=8)
    with pytest.raises(ConfigError, match="stage.name 'pool' is unknown; allowed: acp, forest"):
        check_config(ChainConfig().replace(**{"stage.name": "pool"}))
    with pytest.raises(ConfigError, match="stage.input 'frames' is unknown"):
        check_config(ChainConfig().replace(**{"stage.name": "acp", "stage.input": "frames"}))
    with pytest.raises(ConfigError, match="stage.epsilon = 1.5"):
        check_config(ChainConfig().replace(**{"stage.name": "acp", "stage.epsilon": 1.5}))
    assert key_applies("stage.dim", {"stage.name": "acp"}) and not key_applies("stage.dim", {"stage.name": "forest"})
    assert key_applies("stage.name", {"stage.name": "forest"})
    cfg = trial_config(ChainConfig(), {"stage.name": "forest", "stage.dim": 8})
    assert cfg.stage == StageSpec()  # a forest trial carries no ACP setting
    assert trial_config(ChainConfig(), {"stage.name": "acp", "stage.dim": 8}).stage.dim == 8

    import optuna

    from sweeps.search.spec import parse_sweep

    with pytest.raises(ConfigError, match="search.stage: unknown pool"):
        parse_sweep({"name": "s", "base": {"corpus": "emodb", "data": "/x"}, "search": {"stage": ["forest", "pool"]}})
    spec = parse_sweep({"name": "s", "base": {"corpus": "emodb", "data": "/x"},
                        "search": {"stage": ["forest", "acp"], "stage.epsilon": [0.0, 0.2], "stage.dim": [8, 16]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        t = study.ask()
        spec.space(t)
        assert ("stage.epsilon" in t.params) == ("stage.dim" in t.params) == (t.params["stage.name"] == "acp")
        seen.add(t.params["stage.name"])
    assert seen == {"forest", "acp"}
    assert {c.stage.name for c in spec.samples} == {"forest", "acp"}
    assert all(c.stage.name == "acp" or c.stage.dim == StageSpec().dim for c in spec.samples)


def test_final_model_refuses_the_acp_stage(tmp_path) -> None:
    from dsl.pipeline.model import train_final

    cfg = ChainConfig(data=str(tmp_path / "nowhere")).replace(**{"stage.name": "acp"})
    with pytest.raises(ConfigError, match="supports stage.name: forest only"):
        train_final(cfg, tmp_path / "model", show_progress=False)


@pytest.mark.slow
@pytest.mark.emodb
def test_acp_stage_on_emodb_cpu_preset_refinery(emodb_path, feature_cache) -> None:
    """The `cpu` preset on the whole EmoDB, iteration 0, leak-free refinery protocol, ACP on the embeddings."""
    from dsl.studies.run import run

    cfg = load_config(preset_name="cpu", overrides={"data": str(emodb_path), "cache_dir": str(feature_cache),
                                                    "iterations": 0, "protocol.name": "refinery",
                                                    "stage.name": "acp"})
    result = run(cfg, show_progress=False)
    it = result.iterations[0]
    assert result.leak_free and result.n_utterances == 535 and len(it.utterances) == 535
    assert len(it.val_ua) == cfg.protocol.folds and it.selected_iterations == [0] * cfg.protocol.folds
    assert np.allclose([sum(u["proba"]) for u in it.utterances], 1.0, atol=1e-4)
    assert it.ua > 0.4  # chance is 1/7
