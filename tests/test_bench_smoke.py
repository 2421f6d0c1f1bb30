"""Smoke test of the benchmark code on tiny synthetic data (no EmoDB, no timing assertions)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.common import torch_threads
from bench.features import compare, run_features
from bench.plain_chain import plain_runner
from bench.report import render
from bench.throughput import SegmentSet, materialise, plain_steps, project_steps
from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import FeatureSpec
from tests.support.data import write_tone


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory):
    """Three pitch classes x 6 utterances (22.05 kHz, like EmoDB, so loading resamples), 3 speakers."""
    root = tmp_path_factory.mktemp("bench-tones")
    rows = ["path,label,speaker"]
    rng = np.random.default_rng(0)
    for c, base in enumerate((200.0, 800.0, 2400.0)):
        for i in range(6):
            name = f"c{c}_{i}.wav"
            write_tone(root / name, seconds=0.6 + 0.05 * i, rate=22050, freq=base * (1 + 0.1 * rng.random()))
            rows.append(f"{name},class{c},spk{i % 3}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_feature_paths_agree_within_tolerance(tone_manifest) -> None:
    paths = sorted(tone_manifest.parent.glob("*.wav"))[::3]
    res = run_features(paths, repeats=1)
    eq = res["equality"]
    assert eq["within_tolerance"], eq
    assert eq["max_abs_logmel_above_floor"] <= eq["log_tolerance"]
    assert eq["max_power_diff_relative_to_peak"] <= eq["power_tolerance"]
    assert res["max_abs_signal_diff_librosa_load_vs_load_audio"] < 1e-6
    assert res["plain_files_per_s"] > 0 and res["project_files_per_s"] > 0
    text = render({"meta": {"date": "d", "command": "c", "device": "x", "python": "3", "torch": "t",
                            "torch_default_threads": 1, "note": "n"}, "sections": {"features": res}})
    assert "Log-Mel extraction" in text and "within tolerance" in text


def test_compare_flags_a_real_difference() -> None:
    spec = FeatureSpec()
    a = np.log(np.full((10, 64), 1.0, dtype=np.float32) + spec.log_eps)
    b = a.copy()
    b[3, 5] += 0.1  # 10 % in power on a loud bin
    assert compare([a], [a], spec)["within_tolerance"]
    assert not compare([a], [b], spec)["within_tolerance"]


def test_plain_and_project_loops_both_train() -> None:
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((400, 64)).astype(np.float32)
    starts = rng.integers(0, 400 - 32, size=96)
    rows = starts[:, None] + np.arange(32)[None, :]
    targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=96)]
    s = SegmentSet(frames, rows, targets, 3)
    x = materialise(frames, rows)
    assert tuple(x.shape) == (96, 1, 64, 32) and x.is_contiguous()
    # the plain input equals what SegmentBatcher gathers for the same rows
    import torch

    from dsl.training.train import SegmentBatcher

    gathered = SegmentBatcher(torch.from_numpy(frames))(torch.from_numpy(rows[:5].astype(np.int64)))
    assert torch.equal(gathered, x[:5])
    with torch_threads(1):  # two threads crawl on a 2-core machine shared with other jobs
        plain = plain_steps("small_cnn", x, targets, warmup=1, steps=2, batch_size=16)
        proj = project_steps("small_cnn", s, warmup=1, steps=2, batch_size=16)
    assert np.isfinite(plain) and plain > 0 and np.isfinite(proj) and proj > 0


def test_plain_runner_gives_a_valid_chain_result(tone_manifest, tmp_path) -> None:
    cfg = ChainConfig(corpus="csv", data=str(tone_manifest), cache_dir=str(tmp_path / "cache")).replace(**{
        "segments.hop": 4, "train.epochs": 3, "train.lr": 3e-3, "protocol.folds": 2, "protocol.eval_folds": 2,
        "iterations": 1, "train.num_threads": 1})
    data = prepare_data(cfg, show_progress=False)
    result = run_chain(cfg, data, runner=plain_runner(data, cfg, batch_size=16, threads=1), show_progress=False)
    assert [r.iteration for r in result.iterations] == [0, 1]
    for r in result.iterations:
        assert r.posteriors.shape == (result.n_segments, 3)
        np.testing.assert_allclose(r.posteriors.sum(axis=1), 1.0, atol=1e-4)
        assert 0.0 <= r.ua <= 1.0 and 0.0 <= r.wa <= 1.0
        assert 1 <= r.epochs <= 3
        assert np.array(r.confusion).sum() == data.n_utterances
    assert result.iterations[0].changed_label_share == 0.0
    assert result.iterations[1].target_entropy > 0.0  # WDSL targets are soft
    assert max(r.segment_accuracy for r in result.iterations) > 0.5  # pitch classes are easy (chance 1/3)


def test_chain_section_runs_both_sides_per_seed_and_renders(tone_manifest, tmp_path) -> None:
    from bench.chain_bench import plain_config, run_chains
    from bench.plain_chain import PLAIN_RECIPE

    shrink = {"segments.hop": 4, "train.epochs": 2, "protocol.folds": 2, "protocol.eval_folds": 2, "iterations": 1,
              "train.num_threads": 1, "train.workers": 1}
    cfg = ChainConfig(corpus="csv", data=str(tone_manifest), cache_dir=str(tmp_path / "cache")).replace(
        **{**shrink, "train.epoch_fraction": 0.5, "train.lr": 3e-3})
    assert plain_config(cfg).train.epoch_fraction == 1.0 and plain_config(cfg).train.lr == PLAIN_RECIPE["train.lr"]
    data = prepare_data(cfg, show_progress=False)
    res = run_chains(data, cfg, seeds=(0, 1), log=lambda *a, **k: None, shrink=shrink)
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    assert res["plain_config"]["epoch_fraction"] == 1.0 and res["config"]["epoch_fraction"] == 0.5
    assert res["speedup"] == pytest.approx(res["plain_seconds"] / res["project_seconds"])
    mean_ua = np.mean([r["project"][-1]["ua"] for r in res["runs"]])
    assert res["project_mean_ua"][-1] == pytest.approx(mean_ua)
    assert res["equal_or_better_ua"] == (res["project_mean_ua"][-1] >= res["plain_mean_ua"][-1])
    text = render({"meta": {"date": "d", "command": "c", "device": "x", "python": "3", "torch": "t",
                            "torch_default_threads": 1, "note": "n"}, "sections": {"chain": res}})
    assert "| mean | **project** |" in text and "Speed-up (total plain / total project)" in text


def test_sweep_three_ways_check_and_table() -> None:
    """The cached-vs-computed check compares per configuration and iteration and fails on any difference; the
    section renders the ratios and the verdict (no Ray: the sweeps themselves run in `bench.run --only sweep`)."""
    from bench.sweep_compare import compare_metrics, config_key, summarise

    assert config_key({"ray_trial_id": "a", "train.workers": "1", "labels.rule": "bdsl"}) == "labels.rule=bdsl"
    cfg_a, cfg_b = config_key({"labels.rule": "bdsl", "iterations": "2"}), config_key({"labels.rule": "gsl"})
    computed = [{"trial_id": "n1", "config": cfg_a, "ua": {0: 0.5, 1: 0.55, 2: 0.56}, "wa": {0: 0.6, 1: 0.61, 2: 0.62},
                 "cached": []},
                {"trial_id": "n2", "config": cfg_b, "ua": {0: 0.5}, "wa": {0: 0.6}, "cached": []}]
    cached = [{"trial_id": "c1", "config": cfg_a, "ua": {0: 0.5, 1: 0.55}, "wa": {0: 0.6, 1: 0.61}, "cached": [0]}]
    eq = compare_metrics(cached, computed)
    assert eq["identical"] and eq["values_compared"] == 4 and eq["configs_in_both"] == 1
    assert eq["configs_only_uncached"] == 1 and eq["max_abs_difference"] == 0.0
    cached[0]["ua"][1] = 0.5501
    eq = compare_metrics(cached, computed)
    assert not eq["identical"] and eq["max_abs_difference"] == pytest.approx(1e-4)
    assert eq["mismatches"][0]["iteration"] == 1
    assert not compare_metrics([], computed)["identical"]  # nothing compared is no pass

    row = {"cache": {"wall_seconds": 100.0, "trials": 8, "errors": 0, "runs": cached, "iterations_trained": 2,
                     "iterations_from_cache": 1},
           "nocache": {"wall_seconds": 250.0, "trials": 8, "errors": 0, "runs": computed},
           "plain": {"wall_seconds": 300.0, "trials": 8, "errors": 0}}
    summarise(row)
    assert row["nocache_over_cache"] == 2.5 and row["plain_over_cache"] == 3.0
    tw = {"sweep_file": "sweeps/examples/quick_emodb.yaml", "quick_recipe": None, "step_cache_supported": True,
          "by_trials": {"8": row}, "meets_2x": True, "ratio_grows_with_trials": True}
    text = render({"meta": {"date": "d", "command": "c", "device": "x", "python": "3", "torch": "t",
                            "torch_default_threads": 1, "note": "n"}, "sections": {"sweep": {"three_ways": tw}}})
    assert "| 8 | 100.0 | 250.0 | 300.0 | **2.50x** | 3.00x | 1 of 2 | FAIL" in text
    assert "Goal >= 2x cache vs no cache: 8 trials met (2.50x); ratio grows with the number of trials: yes." in text
    # a count measured without the plain sweep (--plain-trials), and one below the goal
    tw["by_trials"]["24"] = {"cache": {**row["cache"], "folds_from_cache": 3}, "nocache": row["nocache"]}
    summarise(tw["by_trials"]["24"])
    tw["by_trials"]["24"]["nocache_over_cache"] = 1.5
    text = render({"meta": {"date": "d", "command": "c", "device": "x", "python": "3", "torch": "t",
                            "torch_default_threads": 1, "note": "n"}, "sections": {"sweep": {"three_ways": tw}}})
    assert "| 24 | 100.0 | 250.0 | - | **1.50x** | - | 1 of 2 (3 fold trainings) |" in text
    assert "8 trials met (2.50x), 24 trials NOT met (1.50x)" in text


def test_report_command_rewrites_the_block_of_a_results_file(tmp_path) -> None:
    import json

    from bench.report import main

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmarks\n\nprose that stays\n")
    results = {"meta": {"date": "d", "command": "c", "device": "x", "python": "3", "torch": "t",
                        "torch_default_threads": 1, "note": "n"}, "sections": {"sweep": {}}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main([str(tmp_path / "r.json"), "--md", str(md)]) == 0
    text = md.read_text()
    assert "prose that stays" in text and "<!-- bench:full-sweep:begin -->" in text
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "bad.json"), "--md", str(md)])
    assert exc.value.code == 2
