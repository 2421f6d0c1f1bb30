"""Sweep YAML parsing and the define-by-run conditional space (no Ray, no data)."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from dsl.config import ChainConfig, ConfigError
from dsl.method.rules import RULES
from dsl.pipeline.checks import check_config
from dsl.pipeline.trial_config import trial_config
from sweeps.search.space import SearchSpace, enumerate_grid
from sweeps.search.spec import parse_sweep

EXAMPLES = Path(__file__).resolve().parents[1] / "sweeps" / "examples"
ALL_RULES = ["baseline", "bdsl", "wdsl", "gsl", "hdl", "label_smoothing"]


def _spec(search: dict, **top):
    raw = {"name": "t", "base": {"preset": "cpu", "data": "/nonexistent/emodb"}, "search": search, **top}
    return parse_sweep(raw)


def _space(search: dict) -> tuple[SearchSpace, ChainConfig]:
    spec = _spec(search)
    return spec.space, spec.base


FULL = {"backbone": ["small_cnn", "densenet22"], "rule": ALL_RULES, "alpha": {"low": 0.0, "high": 1.0},
        "schedule": ["constant", "step", "linear", "cosine"], "alpha_end": {"low": 0.0, "high": 0.5},
        "alpha_step": [0.1, 0.2], "epsilon": {"low": 0.05, "high": 0.3}, "iterations": {"low": 1, "high": 5},
        "lr": {"low": 1e-4, "high": 3e-3, "log": True}, "segment_hop": [8, 16]}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_alpha_only_in_wdsl_trials(sampler: str) -> None:
    space, base = _space(FULL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.samplers.TPESampler(seed=1, n_startup_trials=10) if sampler == "tpe" else \
        optuna.samplers.RandomSampler(seed=1)
    study = optuna.create_study(direction="maximize", sampler=s)
    seen_rules = set()
    for i in range(150):
        trial = study.ask()
        constants = space(trial) or {}
        params = {**constants, **trial.params}
        rule = params["labels.rule"]
        seen_rules.add(rule)
        alpha_keys = {k for k in params if k in ("labels.alpha", "labels.schedule", "labels.alpha_end",
                                                 "labels.alpha_step")}
        if RULES[rule].uses_alpha:
            assert {"labels.alpha", "labels.schedule"} <= alpha_keys
            sched = params["labels.schedule"]
            assert ("labels.alpha_end" in params) == (sched != "constant")
            assert ("labels.alpha_step" in params) == (sched == "step")
            if sched != "constant":
                assert params["labels.alpha_end"] <= params["labels.alpha"] + 1e-12
        else:
            assert not alpha_keys, f"{rule} trial got {alpha_keys}"
        assert ("labels.epsilon" in params) == (rule == "label_smoothing")
        cfg = trial_config(base, params)
        check_config(cfg)  # every sampled trial is a valid chain config
        study.tell(trial, float(i % 7) / 7)
    assert seen_rules == set(ALL_RULES)


def test_constants_follow_their_branch() -> None:
    space, base = _space({"rule": ["baseline", "wdsl"], "alpha": 0.3, "iterations": 2})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        consts = space(t) or {}
        assert ("labels.alpha" in consts) == (t.params["labels.rule"] == "wdsl")
        assert consts["iterations"] == 2
        study.tell(t, 0.0)


def test_trial_config_resets_labels_that_do_not_apply() -> None:
    base = _spec({"rule": ["hdl"]}).base.replace(**{"labels.alpha": 0.7, "labels.schedule": "linear"})
    cfg = trial_config(base, {"labels.rule": "bdsl"})
    assert (cfg.labels.alpha, cfg.labels.schedule) == (0.2, "constant")
    check_config(cfg)
    cfg = trial_config(base, {"labels.rule": "wdsl"})
    assert (cfg.labels.alpha, cfg.labels.schedule) == (0.7, "linear")


def test_grid_enumerates_each_branch_once() -> None:
    space, _ = _space({"backbone": ["efficientnet_b0", "mobilenetv2_100", "vgg19", "densenet22"],
                       "rule": ALL_RULES, "alpha": {"low": 0.0, "high": 1.0, "step": 0.1}})
    grid = enumerate_grid(space)
    assert len(grid) == 4 * (5 + 11)
    assert len({tuple(sorted(g.items())) for g in grid}) == len(grid)
    assert all(("labels.alpha" in g) == (g["labels.rule"] == "wdsl") for g in grid)
    alphas = sorted({g["labels.alpha"] for g in grid if "labels.alpha" in g})
    assert alphas == pytest.approx([i / 10 for i in range(11)])
    space, _ = _space({"rule": ["wdsl"], "schedule": ["constant", "linear"],
                       "alpha": [0.5, 0.9], "alpha_end": {"low": 0.0, "high": 0.6, "step": 0.3}})
    # constant: 2 alphas; linear: alpha 0.5 -> end in {0, 0.3}, alpha 0.9 -> end in {0, 0.3, 0.6}
    assert len(enumerate_grid(space)) == 2 + 2 + 3


def test_grid_points_are_accepted_by_optuna() -> None:
    space, _ = _space({"rule": ["bdsl", "wdsl"], "alpha": {"low": 0.0, "high": 1.0, "step": 0.1},
                       "iterations": {"low": 1, "high": 3}})
    grid = enumerate_grid(space)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for g in grid:
        study.enqueue_trial(g)
    for g in grid:
        t = study.ask()
        space(t)
        assert t.params == pytest.approx(g)
        study.tell(t, 0.0)


def test_sweep_errors_are_listed_together() -> None:
    with pytest.raises(ConfigError) as err:
        parse_sweep({"name": "bad name", "base": {"preset": "cpu", "data": "/x"}, "colour": 1,
                     "search": {"backbone": ["small_cnn", "resnet9000"], "alpha": {"low": 0.5},
                                "nonsense": [1, 2]},
                     "sampler": {"type": "annealing"}, "num_samples": 0})
    msg = str(err.value)
    for fragment in ("colour", "name", "resnet9000", "search.alpha", "search.nonsense", "sampler.type",
                     "num_samples"):
        assert fragment in msg, fragment


def test_search_may_not_touch_features() -> None:
    with pytest.raises(ConfigError, match="features"):
        _spec({"features.n_mels": [40, 64]})


@pytest.mark.parametrize("name", ["quick_emodb", "paper_grid", "optuna_search", "gpu_emodb", "cross_corpus"])
def test_examples_parse(name: str) -> None:
    raw = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    spec = parse_sweep(raw, data="/nonexistent/emodb")
    assert spec.name == name
    if name == "quick_emodb":
        assert spec.num_samples >= 8 and spec.base.backbone == "small_cnn"
    if name == "cross_corpus":
        assert spec.base.protocol.name == "cross_corpus" and spec.select.protocol == "cross_corpus"
        assert Path(spec.base.protocol.test_data).is_absolute()  # trials run in other directories
    if name == "paper_grid":
        assert len(enumerate_grid(spec.space)) == spec.num_samples == 64


def test_seed_is_not_searchable_and_selection_is_leak_free() -> None:
    with pytest.raises(ConfigError) as err:
        _spec({"seed": [0, 1, 2]}, objective="selected", select={"protocol": "stratified", "seeds": 1})
    msg = str(err.value)
    assert "search.seed: the seed is not searchable" in msg
    assert "objective 'selected' needs a leak-free search protocol" in msg  # the base is stratified
    assert "select.protocol 'stratified' is not a leak-free protocol" in msg and "seeds >= 2" in msg
    spec = _spec({"rule": ["wdsl"]}, objective="final", select={"protocol": "nested", "top_k": 2, "seeds": 4})
    assert (spec.objective, spec.select.protocol, spec.select.top_k, spec.select.seeds) == ("final", "nested", 2, 4)
    raw = {"name": "t", "base": {"preset": "cpu", "data": "/x", "protocol": {"name": "refinery"}},
           "search": {"rule": ["wdsl"]}, "objective": "selected"}
    assert parse_sweep(raw).objective == "selected"


def test_holdout_select_and_objective_seeds_are_checked_together() -> None:
    with pytest.raises(ConfigError) as err:
        _spec({"rule": ["wdsl"]}, holdout={"speakers": ["03"], "fraction": 0.2}, objective_seeds=0,
              select={"budget": 0, "alpha": 1.5, "correction": "none", "reference": {"rule": "nonsense"}})
    msg = str(err.value)
    assert "holdout: give exactly one of speakers" in msg and "objective_seeds: an integer >= 1" in msg
    assert "select.budget" in msg and "select.alpha" in msg and "select.correction 'none' is unknown" in msg
    assert "select.reference: the reference config" in msg and "nonsense" in msg
    spec = _spec({"rule": ["wdsl"]}, holdout={"speakers": ["03", "08"]}, objective_seeds=3,
                 select={"top_k": 4, "budget": 20, "reference": {"rule": "wdsl", "alpha": 0.5, "iterations": 1}})
    assert spec.holdout.speakers == ("03", "08") and spec.objective_seeds == 3
    assert (spec.select.top_k, spec.select.budget, spec.select.exam_seeds) == (4, 20, 5)
    assert spec.select.reference_overrides() == {"labels.rule": "wdsl", "labels.alpha": 0.5, "iterations": 1}
    assert _spec({"rule": ["wdsl"]}).select.reference_overrides() == {"labels.rule": "baseline", "iterations": 0}
