"""Test conditions (`eval.noise`, `eval.adversarial`): noise at a measured SNR, babble without test speakers,
attacks that move the loss the right way (and not at all at eps 0), conditions through the chain, the step cache,
the objective, the metrics and the report. Synthetic tones and segments: seconds."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import ConfigError, load_config
from dsl.execution.step_cache import StepCache
from dsl.pipeline.checks import config_problems
from dsl.robustness import conditions as cond_mod
from dsl.robustness.conditions import ChainConditions, condition_names, with_summaries
from dsl.robustness.noise import make_noise, measured_snr, mix_at_snr, utterance_rng
from dsl.training.attacks import attack, attack_loss
from dsl.training.layer_sum import create_network
from dsl.training.train import predict_proba
from tests.support.data import TINY, write_tone
from tests.support.segments import separable_segments


# noise ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise_type", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr", [30.0, 20.0, 10.0, 5.0, 0.0, -5.0])
def test_noise_at_a_given_snr_measures_that_snr_on_the_waveform(noise_type, snr) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(32000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.4)).astype(np.float32)  # a pause, then a tone
    sources = [rng.standard_normal(n).astype(np.float32) * a for n, a in ((9000, 0.1), (40000, 2.0), (16000, 0.5))]
    noise = make_noise(noise_type, len(speech), utterance_rng(0, "x/a.wav", noise_type), sources)
    noisy = mix_at_snr(speech, noise, snr)
    assert noisy.dtype == np.float32 and noisy.shape == speech.shape
    assert abs(measured_snr(speech, noisy) - snr) < 0.1


def test_noise_is_seeded_per_utterance_and_type() -> None:
    a = make_noise("white", 1000, utterance_rng(0, "/a/03a01Fa.wav", "white"))
    assert np.array_equal(a, make_noise("white", 1000, utterance_rng(0, "/elsewhere/03a01Fa.wav", "white")))
    assert not np.array_equal(a, make_noise("white", 1000, utterance_rng(0, "/a/03a01Nc.wav", "white")))
    assert not np.array_equal(a, make_noise("white", 1000, utterance_rng(1, "/a/03a01Fa.wav", "white")))
    pink = make_noise("pink", 4096, utterance_rng(0, "p.wav", "pink"))
    spectrum = np.abs(np.fft.rfft(pink)) ** 2
    assert spectrum[10:40].mean() > 5 * spectrum[1000:2000].mean()  # 1/f: low frequencies carry more power


@pytest.fixture(scope="module")
def speakers_corpus(tmp_path_factory):
    """12 tone utterances of 3 classes by 4 speakers (a CSV manifest), each file its own pitch."""
    root = tmp_path_factory.mktemp("rb-tones")
    rows = ["path,label,speaker"]
    for c, base in enumerate((250.0, 700.0, 1900.0)):
        for i in range(8):
            name = f"c{c}_{i}.wav"
            write_tone(root / name, seconds=0.5 + 0.03 * i, freq=base * (1 + 0.04 * i))
            rows.append(f"{name},class{c},spk{i % 4}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_babble_never_uses_a_test_speaker_and_is_cached(speakers_corpus, tmp_path, monkeypatch) -> None:
    cfg = ChainConfig(corpus="csv", data=str(speakers_corpus / "manifest.csv"), cache_dir=str(tmp_path)).replace(
        **{"eval.noise.types": "babble", "eval.noise.snr": "5", "eval.noise.babble_data": str(speakers_corpus),
           "eval.noise.babble_talkers": 3})
    data = prepare_data(cfg, show_progress=False)
    fold_of = np.array([int(s[-1]) % 2 for s in data.speakers])  # two folds of two speakers each, by speaker
    chosen: list[tuple[frozenset, list[Path]]] = []
    original = cond_mod.BabblePool.choose

    def spy(self, excluded, talkers, rng):
        out = original(self, excluded, talkers, rng)
        chosen.append((excluded, out))
        return out

    monkeypatch.setattr(cond_mod.BabblePool, "choose", spy)
    first = ChainConditions(cfg, data.paths, data.speakers, fold_of, show_progress=False)
    speaker_of = {Path(p).name: s for p, s in zip(data.paths, data.speakers)}
    assert len(chosen) == data.n_utterances
    for u, (excluded, files) in enumerate(chosen):
        test_speakers = {str(s) for s in data.speakers[fold_of == fold_of[u]]}
        assert excluded == test_speakers and len(files) == 3
        assert not {speaker_of[f.name] for f in files} & test_speakers
    loads = []
    monkeypatch.setattr(cond_mod, "load_audio", lambda *a, **k: loads.append(a) or None)
    again = ChainConditions(cfg, data.paths, data.speakers, fold_of, show_progress=False)  # from the feature cache
    assert loads == []
    for u in range(data.n_utterances):
        assert np.array_equal(first.noisy["babble_5dB"][u], again.noisy["babble_5dB"][u])
    with pytest.raises(ConfigError, match="test speaker"):  # every speaker is a test speaker of the one fold
        ChainConditions(cfg, data.paths, data.speakers, np.zeros(data.n_utterances, dtype=int), show_progress=False)


# attacks ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_toy():
    """small_cnn trained for a few steps on two separable classes of 32x64 segments: mostly right."""
    torch.manual_seed(0)
    labels, batcher, rows, targets = separable_segments(256)
    model = create_network("small_cnn", 2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        idx = torch.arange(step * 64, step * 64 + 64) % 256
        loss = -(targets[idx] * torch.log_softmax(model(batcher(rows[idx])), 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, labels, batcher, rows


def test_fgsm_and_pgd_at_eps_zero_equal_the_clean_prediction(trained_toy) -> None:
    model, _, batcher, rows = trained_toy
    spec = ChainConfig().train
    clean = predict_proba(model, batcher, rows, spec)
    for kind in ("fgsm", "pgd"):
        zero = predict_proba(model, batcher, rows, spec, lambda m, x, kind=kind: attack(m, x, kind, 0.0, 3))
        assert np.array_equal(clean, zero)
        moved = predict_proba(model, batcher, rows, spec, lambda m, x, kind=kind: attack(m, x, kind, 0.5, 3))
        assert not np.array_equal(clean, moved)


def test_larger_eps_never_lowers_the_segment_loss_on_average(trained_toy) -> None:
    model, labels, batcher, rows = trained_toy
    x = batcher(rows)
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1)
    truth = torch.as_tensor(labels)
    assert (predicted == truth).float().mean() > 0.9  # a toy where predictions are mostly right
    for kind in ("fgsm", "pgd"):
        own, true_ce = [], []
        for eps in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
            with torch.no_grad():
                out = model(attack(model, x, kind, eps, 5))
            own.append(float(attack_loss(out, predicted)) / len(x))  # the loss the attack raises
            true_ce.append(float(attack_loss(out, truth)) / len(x))  # and the true-label cross-entropy
            assert float((attack(model, x, kind, eps, 5) - x).abs().max()) <= eps + 1e-6  # inside the ball
        assert all(b >= a - 1e-6 for a, b in zip(own, own[1:])), (kind, own)
        assert all(b >= a - 1e-6 for a, b in zip(true_ce, true_ce[1:])), (kind, true_ce)
        assert own[-1] > own[0] + 0.1


# through the chain ------------------------------------------------------------------------------------------------
EVAL = {"eval.noise.types": "white", "eval.noise.snr": "10", "eval.adversarial.attacks": "fgsm",
        "eval.adversarial.eps": "0,0.5"}


def _cfg(root, cache, **extra) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(root / "manifest.csv"), cache_dir=str(cache)).replace(
        **{**TINY, "iterations": 0, "train.epochs": 3, "protocol.name": "refinery", "train.workers": 1, **extra})


def test_conditions_through_the_chain_and_the_step_cache(speakers_corpus, feature_cache, tmp_path) -> None:
    steps = StepCache(tmp_path / "steps")
    clean_cfg = _cfg(speakers_corpus, feature_cache)
    data = prepare_data(clean_cfg, show_progress=False)
    clean = run_chain(clean_cfg, data, show_progress=False, step_cache=steps).iterations[0]
    assert clean.conditions == {}
    cfg = _cfg(speakers_corpus, feature_cache, **EVAL)
    first = run_chain(cfg, data, show_progress=False, step_cache=steps).iterations[0]
    assert first.cached_folds == 0  # the clean-only fold outputs are not served to a run that asks for conditions
    assert (first.wa, first.ua, first.confusion) == (clean.wa, clean.ua, clean.confusion)  # clean numbers unchanged
    assert list(first.conditions) == [*condition_names(cfg.eval), "noise_mean", "attack_mean"]
    eps0 = first.conditions["fgsm_eps0"]  # FGSM at eps 0 is the clean score, through the stage
    assert (eps0["wa"], eps0["ua"], eps0["selected_ua"]) == (first.wa, first.ua, first.selected_ua)
    assert eps0["predicted"] == [int(v) for v in first.utterance_predictions]
    assert first.conditions["fgsm_eps0.5"]["segment_accuracy"] < first.segment_accuracy
    again = run_chain(cfg, data, show_progress=False, step_cache=steps).iterations[0]
    assert again.from_cache and again.conditions == first.conditions
    json.dumps(again.to_dict())


def test_conditions_under_a_transductive_protocol(speakers_corpus, feature_cache) -> None:
    cfg = _cfg(speakers_corpus, feature_cache, **{**EVAL, "protocol.name": "stratified"})
    it = run_chain(cfg, prepare_data(cfg, show_progress=False), show_progress=False).iterations[0]
    assert (it.conditions["fgsm_eps0"]["ua"], it.conditions["fgsm_eps0"]["fold_ua"]) == (it.ua, it.fold_ua)
    assert "selected_ua" not in it.conditions["white_10dB"]


# config, objective, metrics, report ---------------------------------------------------------------------------------
def test_eval_config_lists_checks_and_off_by_default() -> None:
    cfg = load_config(overrides={"eval.noise.types": "white,babble", "eval.noise.snr": "20,-5",
                                 "eval.adversarial.attacks": ["pgd"], "eval.adversarial.eps": 0.2})
    assert cfg.eval.noise.snr == (20.0, -5.0) and cfg.eval.adversarial.eps == (0.2,)
    assert condition_names(cfg.eval) == ("white_20dB", "white_-5dB", "babble_20dB", "babble_-5dB", "pgd_eps0.2")
    problems = " ".join(config_problems(cfg.replace(**{"eval.adversarial.eps": "-1", "eval.noise.types": "brown"})))
    assert "brown" in problems and "eps" in problems
    assert "babble_data" in " ".join(config_problems(cfg))
    assert not ChainConfig().eval.enabled
    with pytest.raises(ConfigError, match="eval.noise.snr"):
        load_config(overrides={"eval.noise.snr": "loud"})


def test_objective_metrics_and_summaries(tmp_path: Path) -> None:
    from sweeps.search.spec import parse_sweep
    from tracking.schema import iteration_metrics
    from trainables.metrics import objective_value

    conditions = with_summaries({"white_10dB": {"wa": 0.5, "ua": 0.4, "selected_ua": 0.45},
                                 "white_0dB": {"wa": 0.3, "ua": 0.2, "selected_ua": 0.25},
                                 "fgsm_eps0.1": {"wa": 0.1, "ua": 0.1, "selected_ua": 0.1}})
    assert conditions["noise_mean"]["ua"] == pytest.approx(0.3) and conditions["attack_mean"]["ua"] == 0.1
    d = {"ua": 0.7, "wa": 0.7, "selected_ua": 0.65, "fold_ua": [0.7], "fold_wa": [0.7], "conditions": conditions}
    assert objective_value(d, "selected:noise_mean") == pytest.approx(0.35)
    assert objective_value(d, "final:white_10dB") == 0.4 and objective_value(d, "selected") == 0.65
    with pytest.raises(ValueError, match="pink_5dB"):
        objective_value(d, "final:pink_5dB")
    metrics = iteration_metrics(d)
    assert metrics["ua/white_10dB"] == 0.4 and metrics["selected_ua/noise_mean"] == pytest.approx(0.35)
    base = {"preset": "cpu", "data": "x", "protocol": {"name": "refinery"},
            "eval": {"noise": {"types": ["white"], "snr": [10]}}}
    assert parse_sweep({"name": "r", "base": base, "objective": "selected:white_10dB"}).objective == "selected:white_10dB"
    for objective, message in (("selected:white_5dB", "no test condition"), ("best:white_10dB", "unknown")):
        with pytest.raises(ConfigError, match=message):
            parse_sweep({"name": "r", "base": base, "objective": objective})
    with pytest.raises(ConfigError, match="eval"):
        parse_sweep({"name": "r", "base": base, "search": {"eval.noise.seed": [0, 1]}})
    import yaml

    example = Path(__file__).parents[1] / "sweeps" / "examples" / "robust_emodb.yaml"
    raw = yaml.safe_load(example.read_text())
    babble = tmp_path / "urdu"  # the example names ../shared/data/urdu, which a machine without the data lacks
    babble.mkdir()
    raw["base"]["eval"]["noise"]["babble_data"] = os.path.relpath(babble)
    spec = parse_sweep(raw, data="/data/emodb")
    assert spec.objective == "selected:noise_mean" and spec.base.eval.noise.babble_data == str(babble.resolve())


def _fake_seed(cfg: ChainConfig, seed: int, clean: float, white: float, it: int = 0) -> dict:
    conditions = with_summaries({"white_10dB": {"wa": white, "ua": white, "selected_ua": white, "selected_wa": white}})
    entry = {"iteration": it, "alpha": None, "wa": clean, "ua": clean, "selected_wa": clean, "selected_ua": clean,
             "seconds": 1.0, "conditions": conditions}
    return {"config": cfg.replace(seed=seed).to_dict(), "iterations": [entry], "label_names": ["a", "b"],
            "n_utterances": 2, "n_segments": 4, "seconds": 1.0, "environment": {"fingerprint": "m"}, "command": "c"}


def test_report_shows_conditions_with_paired_drops(tmp_path) -> None:
    from dsl.results.report import markdown
    from dsl.results.study import study_dict

    base_cfg = ChainConfig(data="x").replace(**{"protocol.name": "refinery", "eval.noise.types": "white",
                                                "eval.noise.snr": "10"})
    paths = {}
    for name, (clean, white), extra in (("base", ((0.70, 0.60, 0.66), (0.50, 0.40, 0.47)), {}),
                                        ("mtl", ((0.72, 0.62, 0.67), (0.62, 0.52, 0.58)), {"train.aux": "mtl_aug"})):
        cfg = base_cfg.replace(**extra)
        runs = [_fake_seed(cfg, s, c, w) for s, (c, w) in enumerate(zip(clean, white))]
        study = study_dict(cfg.replace(seeds=[0, 1, 2]), runs, [tmp_path / f"{s}.json" for s in range(3)],
                           tmp_path / f"{name}.json", "c")
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(study))
    row = json.loads(paths["base"].read_text())["iterations"][0]["conditions"]["white_10dB"]
    assert row["drop_ua"]["mean"] == pytest.approx(-0.1967, abs=1e-3)  # paired: (-0.20, -0.20, -0.19)
    text = markdown([paths["base"], paths["mtl"]], [paths["base"]])
    assert "| white 10 dB | 45.7 ± " in text and "(-19.7 ± " in text
    assert "MTL-AUG (iter. 0)" in text and "| white drop | vs baseline |" in text
    mtl_line = next(line for line in text.splitlines() if line.startswith("| MTL-AUG (iter. 0) | 67.0"))
    assert mtl_line.endswith("| -9.7 ± 1.4 | 10.0 ± 0.0 |")  # 10 points less drop than the baseline, paired by seed


@pytest.mark.slow
def test_sweep_scores_conditions_in_fold_tasks_and_maximises_one(tmp_path_factory) -> None:
    """A tiny sweep on EmoDB with folds as Ray tasks: every trial logs `ua/<condition>` to MLflow, and its objective
    is the UA under white noise it logged."""
    import ray
    from mlflow.tracking import MlflowClient

    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import parse_sweep
    from tests.support.data import emodb_root, tiny_emodb
    from tests.support.sweep import children, tiny_sweep

    root = emodb_root()
    if root is None:
        pytest.skip("EmoDB not found (../shared/data/emodb or $DSL_EMODB)")
    if ray.is_initialized():
        ray.shutdown()
    base = tmp_path_factory.getbasetemp()
    data = tiny_emodb(root, base / "tiny_emodb")
    tmp = tmp_path_factory.mktemp("robust-sweep")
    raw = tiny_sweep("robust", data, base / "dsl-cache", tmp / "ray_results", num_samples=2, max_concurrent=1,
                     resources={"cpu": 0.5, "fold_workers": 2, "head_cpu": 0.5}, objective="final:white_10dB",
                     search={"rule": ["baseline", "wdsl"], "iterations": 0})
    raw["base"]["eval"] = {"noise": {"types": ["white"], "snr": [10]}, "adversarial": {"attacks": ["fgsm"], "eps": [0.1]}}
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSL_PROGRESS", "0")
        out = run_sweep(parse_sweep(raw), tracking_uri=uri)
    assert not out.interrupted and out.errors == 0
    client = MlflowClient(uri)
    runs = children(client, "robust")
    assert len(runs) == 2
    for run in runs:
        m = run.data.metrics
        assert {"ua/white_10dB", "ua/fgsm_eps0.1", "ua/noise_mean", "segment_accuracy/fgsm_eps0.1"} <= set(m)
    assert sorted(r.objective for r in out.rows) == sorted(r.data.metrics["ua/white_10dB"] for r in runs)
