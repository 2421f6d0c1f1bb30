"""Replicate studies, intervals, validation-selected iterations, the report command and per-machine determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data
from dsl.config import ConfigError, load_config
from dsl.protocols.selection import select_iterations, selected_scores
from dsl.results.report import load_result, markdown
from dsl.results.stats import mean_interval, paired_gain
from dsl.results.study import aggregate, seed_path
from dsl.runtime.environment import machine_info
from dsl.studies.replicates import run_replicates
from sweeps.cli import main
from tests.support.data import TINY


def test_t_interval_and_paired_gain() -> None:
    iv = mean_interval([0.6, 0.7, 0.8])
    assert iv.mean == pytest.approx(0.7) and iv.sd == pytest.approx(0.1)
    assert iv.high - iv.mean == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)  # t(0.975, 2)
    assert mean_interval([0.5]).low is None  # one seed: no interval
    g = paired_gain([0.7, 0.8, 0.9], [0.6, 0.7, 0.8])  # the same +0.1 on every seed: a zero-width interval
    assert g.mean == pytest.approx(0.1) and g.high - g.low == pytest.approx(0.0, abs=1e-12)
    assert mean_interval([0.6, 0.7, 0.8]).format() == "70.0 ± 24.8"
    assert all(type(v) is float for v in (iv.mean, iv.sd, iv.low, iv.high))  # yaml.safe_dump takes no numpy floats


def test_seeds_parse_from_yaml_lists_ranges_and_reject_nonsense() -> None:
    assert load_config(overrides={"seeds": "0-2,7"}).seeds == (0, 1, 2, 7)
    assert load_config(overrides={"seeds": [3, 4]}).seeds == (3, 4)
    for bad in ("a,b", [1, 1], [0.5]):
        with pytest.raises(ConfigError, match="seeds"):
            load_config(overrides={"seeds": bad})


def _entry(it: int, val: list[float], proba: list[list[float]]) -> dict:
    return {"iteration": it, "val_ua": val, "utterances": [
        {"file": f"u{i}", "fold": i % 2, "label": i % 2, "predicted": int(np.argmax(p)), "proba": p}
        for i, p in enumerate(proba)]}


def test_each_outer_fold_picks_its_iteration_on_validation_only() -> None:
    right = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    wrong = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    # fold 0 is best at iteration 0 by validation, fold 1 at iteration 1: the picks ignore the test outcome
    h = [_entry(0, [0.9, 0.5], right), _entry(1, [0.8, 0.7], wrong)]
    assert select_iterations(h) == [0, 1]
    picks, sc = selected_scores(h, 2)
    assert picks == [0, 1] and sc.wa == pytest.approx(0.5)  # fold 0 right (iteration 0), fold 1 wrong (iteration 1)
    assert select_iterations([_entry(0, [0.7, 0.7], right), _entry(1, [0.7, 0.7], wrong)]) == [0, 0]  # ties: earlier


def test_aggregate_reports_paired_gain_per_iteration() -> None:
    runs = [{"iterations": [{"iteration": 0, "wa": b, "ua": b, "seconds": 1.0},
                            {"iteration": 1, "alpha": 0.2, "wa": b + 0.05, "ua": b + 0.05, "seconds": 1.0}]}
            for b in (0.5, 0.6, 0.7)]
    rows = aggregate(runs)
    assert rows[1]["ua"]["mean"] == pytest.approx(0.65)
    assert rows[1]["gain_ua"]["mean"] == pytest.approx(0.05) and rows[1]["gain_ua"]["high"] == pytest.approx(0.05)
    assert "gain_ua" not in rows[0] and "selected_ua" not in rows[0]


def test_study_writes_each_seed_resumes_from_disk_and_is_deterministic_per_machine(tone_corpus, feature_cache,
                                                                                   tmp_path, capsys) -> None:
    cfg = ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(feature_cache)).replace(
        **{**TINY, "iterations": 1, "protocol.name": "refinery", "train.epochs": 3})
    data = prepare_data(cfg, show_progress=False)
    out = tmp_path / "study.json"
    study = run_replicates(cfg, data, out, seeds=[0, 1], show_progress=False)
    assert study["seeds"] == [0, 1] and study["protocol"]["leak_free"] is True
    assert [r["iteration"] for r in study["iterations"]] == [0, 1] and "gain_ua" in study["iterations"][1]
    assert "selected_ua" in study["iterations"][1]
    first = json.loads(seed_path(out, 1).read_text())
    seed_path(out, 1).unlink()  # as if the study had stopped during seed 1
    seen = []
    again = run_replicates(cfg, data, out, seeds=[0, 1], show_progress=False,
                           on_seed=lambda s, d, from_disk: seen.append((s, from_disk)))
    assert seen == [(0, True), (1, False)]
    second = json.loads(seed_path(out, 1).read_text())
    # Deterministic per seed on the same machine and library versions (the fingerprint says which):
    assert first["environment"]["fingerprint"] == second["environment"]["fingerprint"] == machine_info()["fingerprint"]
    for a, b in zip(first["iterations"], second["iterations"]):
        assert a["utterances"] == b["utterances"] and a["ua"] == b["ua"]
    assert [r["ua"] for r in again["iterations"]] == [r["ua"] for r in study["iterations"]]
    text = markdown([out, seed_path(out, 0)])
    assert "`refinery` | yes |" in text and "± " in text and machine_info()["fingerprint"] in text
    assert main(["report", str(out), "--out", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 0 and "![UA" in (tmp_path / "r.md").read_text()
    capsys.readouterr()


def test_report_names_a_bad_file(tmp_path, capsys) -> None:
    bad = tmp_path / "not_a_result.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="not_a_result.json"):
        load_result(bad)
    assert main(["report", str(bad)]) == 2 and "not_a_result.json" in capsys.readouterr().err


def test_paired_against_pairs_rows_with_the_reference_baseline_by_seed() -> None:
    from dsl.results.report import paired_against

    def study(seeds, uas):
        return {"seeds": seeds, "iterations": [{"ua": {"values": uas}}]}

    reference = study([0, 1, 2, 3], [0.60, 0.70, 0.50, 0.65])
    other = study([3, 1, 0], [0.70, 0.72, 0.66])  # another order, one seed missing
    diff = paired_against(other, other["iterations"][0], reference)
    assert diff is not None and diff.n == 3
    assert sorted(round(v, 6) for v in diff.values) == [0.02, 0.05, 0.06]
    assert paired_against(study([7, 8], [0.5, 0.5]), {"ua": {"values": [0.5, 0.5]}}, reference) is None
    same = {"seeds": [0, 1], "iterations": [{"iteration": 0, "ua": {"values": [0.5, 0.5]}},
                                            {"iteration": 1, "ua": {"values": [0.6, 0.7]}}]}
    mine = {"iteration": 1, "ua": {"values": [0.65, 0.7]}}
    assert sorted(round(v, 6) for v in paired_against(same, mine, same, same_iteration=True).values) == [0.0, 0.05]
    assert paired_against(same, {"iteration": 2, "ua": {"values": [0.6, 0.6]}}, same, same_iteration=True) is None


def test_results_written_before_the_outer_partition_and_the_agreement_existed_say_so() -> None:
    """The committed refinery study (stratified outer folds, no `outer` key, no selector agreement): the report
    names its partition, computes the agreement from its seed files, and does not pair it with a balanced one."""
    from pathlib import Path

    from dsl.results.report import outer_of, setting

    path = Path(__file__).resolve().parents[1] / "docs" / "results" / "emodb_cpu_refinery.json"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    study = load_result(path)
    assert outer_of(study) == "stratified" and "outer" not in study["protocol"]
    assert study["iterations"][0]["selector_agreement"]["mean"] == 1.0
    assert 0.0 <= study["iterations"][1]["selector_agreement"]["mean"] <= 1.0
    text = markdown([path])
    assert "`refinery` (outer folds stratified by label)" in text and "selector agreement %" in text
    balanced = {**study, "protocol": {**study["protocol"], "outer": "balanced"}}
    assert setting(balanced) != setting(study)


def test_a_seed_written_before_the_outer_partition_and_stage_inputs_resumes_only_under_them() -> None:
    """A seed file without protocol.outer (cut stratified by label) and without stage.fit_on/test_views (today's)
    is the same config as one that names those values, and another config than the balanced default."""
    from dsl.results.study import comparable_config

    new = ChainConfig().replace(**{"protocol.name": "refinery", "protocol.outer": "stratified"}).to_dict()
    old = json.loads(json.dumps(new))
    del old["protocol"]["outer"], old["stage"]["fit_on"], old["stage"]["test_views"]
    assert comparable_config(old) == comparable_config(new)
    balanced = ChainConfig().replace(**{"protocol.name": "refinery"}).to_dict()
    assert comparable_config(old) != comparable_config(balanced)


def test_a_seed_written_before_a_key_was_added_resumes_and_a_changed_value_does_not() -> None:
    """A key added since (here `protocol.holdout`, whose default keeps the earlier behaviour) is read as its
    default, so an upgrade that only adds keys does not rerun finished seeds; a set value still counts."""
    from dsl.results.study import comparable_config

    new = ChainConfig().replace(**{"protocol.name": "refinery"}).to_dict()
    old = json.loads(json.dumps(new))
    del old["protocol"]["holdout"]
    assert comparable_config(old) == comparable_config(new)
    held = ChainConfig().replace(**{"protocol.name": "refinery", "protocol.holdout": "h.json"}).to_dict()
    assert comparable_config(old) != comparable_config(held)
    gone = {**old, "a_key_since_removed": 1}
    assert comparable_config(gone) != comparable_config(new)
