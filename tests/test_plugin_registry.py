"""Registries that know their facts: one plugin file adds a protocol and a rule with a parameter of its own, and
every part of the project (config checks, trial configs, the conditional search space, trial names, the report,
the final model's config, the CLI help, a chain, a sweep) follows it without another file changing.

The plugin (`PLUGIN`) is written to a temporary folder; `repo_unchanged` asserts that no file of the project's
packages changed while a test ran, so the plugin file is the only file such an extension touches.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import ConfigError
from dsl.pipeline.checks import check_config
from dsl.pipeline.keys import key_applies
from dsl.pipeline.trial_config import trial_config
from dsl.registry import DuplicateName, Registry, UnknownName
from tests.support.data import TINY

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''"""A held-out protocol, a label rule with a parameter and an utterance stage, registered from one file."""
import numpy as np

from dsl.method.rules import RuleParam, register_rule
from dsl.method.stages import UtteranceStage, register_stage
from dsl.protocols.plans import FoldPlan, Scope, register_protocol, stratified_folds


@register_protocol("{name}_holdout", leak_free=True, transductive_twin="stratified")
def holdout(labels, speakers, spec, seed, outer=None):
    """One stratified outer split: an in-sample chain on the training part, its first fold only predicted."""
    test = stratified_folds(labels, spec.folds, seed)[0] if outer is None else outer[0]
    train = np.setdiff1d(np.arange(len(labels)), test)
    return FoldPlan("{name}_holdout", (Scope(train, (train,), test, in_sample=True),), False, partial=True)


@register_rule("{name}_mix", params={{"beta": RuleParam(0.5, 0.0, 1.0, "weight of the original label")}})
def mix(q, y, utt, beta):
    """g = (1 - beta) q + beta y."""
    t = (1.0 - beta) * q + beta * y
    return (t / t.sum(axis=1, keepdims=True)).astype(np.float32)


@register_stage("{name}_mean")
class MeanPosterior(UtteranceStage):
    """Each utterance's mean segment posterior, averaged over the fold networks' views (nothing is fitted)."""

    def fit_proba(self, train, labels, views, seed):
        return np.mean([[v.mean(axis=0) for v in view] for view in views], axis=0).astype(np.float32)
'''


PACKAGES = ("dsl", "tracking", "trainables", "sweeps")  # what an extension would otherwise have to edit


def _package_sources() -> dict[str, bytes]:
    """The project's package files (every one, not only `.py`) and their contents."""
    return {str(f.relative_to(REPO)): f.read_bytes() for pkg in PACKAGES for f in sorted((REPO / pkg).rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts}


@pytest.fixture
def repo_unchanged():
    """Fails the test if a file of the project's packages was created, removed or changed while it ran."""
    before = _package_sources()
    yield
    after = _package_sources()
    changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    assert not changed, f"the test changed files of the project: {changed}"


@pytest.fixture
def plugin(tmp_path, monkeypatch, repo_unchanged) -> str:
    """A fresh plugin module in its own folder, importable here and in processes started from here."""
    name = f"dsl_plugin_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / f"{name}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    yield name
    from dsl.method.rules import RULES
    from dsl.method.stages import STAGES
    from dsl.protocols.plans import PROTOCOLS

    for registry, entry in ((PROTOCOLS, f"{name}_holdout"), (RULES, f"{name}_mix"), (STAGES, f"{name}_mean")):
        if entry in registry:
            registry.unregister(entry)
    sys.modules.pop(name, None)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".py") == [f"{name}.py"]  # the only file


def _cfg(plugin: str, tone_corpus: Path, feature_cache: Path, **overrides) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(feature_cache)).replace(**{
        **TINY, "plugins": [plugin], "protocol.name": f"{plugin}_holdout", "labels.rule": f"{plugin}_mix",
        "train.epochs": 1, "iterations": 1, **overrides})


def test_registry_refuses_duplicates_and_names_the_known_entries() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Thing:
        name: str

    things: Registry[Thing] = Registry("thing")
    things.register(Thing("a"))
    things.decorator(lambda fn: Thing(fn.__name__))(lambda: None)  # a decorator returns what it registered
    assert things.names() == ("<lambda>", "a") and "a" in things and len(things) == 2 and list(things) == ["a", "<lambda>"]
    with pytest.raises(DuplicateName, match="thing 'a' is already registered"):
        things.register(Thing("a"))
    with pytest.raises(UnknownName, match=r"unknown thing 'b'; known: <lambda>, a") as err:
        things.get("b")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, KeyError)
    assert things.unregister("a") == Thing("a") and "a" not in things

    from dsl.method.rules import register_rule
    from dsl.protocols.plans import register_protocol

    with pytest.raises(DuplicateName, match="protocol 'stratified' is already registered"):
        register_protocol("stratified")(lambda *a: None)
    with pytest.raises(DuplicateName, match="rule 'wdsl' is already registered"):
        register_rule("wdsl")(lambda q, y, utt: y)
    with pytest.raises(ConfigError, match="'protocol.folds_x' is not a protocol.\\* config key"):
        register_protocol("x", keys=("protocol.folds_x",))


def test_builtin_entries_carry_their_facts() -> None:
    from dsl.method.stages import STAGES, stage_input
    from dsl.protocols.plans import PROTOCOLS

    for name in PROTOCOLS:
        info = PROTOCOLS[name]
        assert info.twin in PROTOCOLS and not PROTOCOLS[info.twin].leak_free, name  # a transductive twin
        assert info.grouped == PROTOCOLS[info.twin].grouped, name
    assert PROTOCOLS["speaker"].twin == "speaker_transductive" and PROTOCOLS["stratified"].twin == "stratified"
    assert PROTOCOLS["cross_corpus"].needs == ("protocol.test_corpus", "protocol.test_data")
    assert [n for n in PROTOCOLS.names() if PROTOCOLS[n].nested] == ["cross_corpus", "nested", "speaker"]
    assert STAGES["forest"].final_model and not STAGES["acp"].final_model
    assert "stage.dim" in STAGES["acp"].keys and STAGES["forest"].keys == ("stage.test_views",)
    assert stage_input(ChainConfig().stage) == "posterior"
    assert stage_input(ChainConfig().replace(**{"stage.name": "acp"}).stage) == "embedding"
    # The one key_applies reads the declarations: schedules own their alpha keys, aux tasks and stages theirs.
    assert key_applies("labels.alpha_step", {"labels.rule": "wdsl", "labels.schedule": "step"})
    assert not key_applies("labels.alpha_step", {"labels.rule": "wdsl", "labels.schedule": "linear"})
    assert not key_applies("labels.alpha_end", {"labels.rule": "wdsl", "labels.schedule": "constant"})
    assert not key_applies("labels.alpha", {"labels.rule": "bdsl"}) and key_applies("labels.epsilon",
                                                                                   {"labels.rule": "label_smoothing"})
    assert not key_applies("train.aux_data", {"train.aux": "none"}) and key_applies("train.aux_data",
                                                                                  {"train.aux": "mtl_aug"})
    assert not key_applies("features.ssl_layer", {"features.kind": "ssl", "features.ssl_layer_sum": True})
    assert not key_applies("protocol.test_data", ChainConfig()) and key_applies("train.lr", ChainConfig())


def test_one_plugin_file_adds_a_protocol_a_rule_with_a_parameter_and_a_stage(plugin, tone_corpus,
                                                                           feature_cache) -> None:
    from dsl.pipeline.model import check_stage, final_config
    from dsl.results.naming import describe
    from dsl.results.report import labels_of
    from sweeps.cli.run import registry_help

    cfg = _cfg(plugin, tone_corpus, feature_cache, **{"labels.params.beta": 1.0})
    check_config(cfg)  # imports the plugin: its names are now known everywhere
    rule, protocol = f"{plugin}_mix", f"{plugin}_holdout"
    assert protocol in registry_help()["protocol"] and rule in registry_help()["rule"]
    # checks: the parameter's range, parameters the rule does not declare
    with pytest.raises(ConfigError, match=r"labels.params.beta = 1.5 is outside \[0.0, 1.0\]"):
        check_config(cfg.replace(**{"labels.params.beta": 1.5}))
    with pytest.raises(ConfigError, match="labels.params.gamma given but rule .* has the parameter.s. beta"):
        check_config(cfg.replace(**{"labels.params.gamma": 0.1}))
    with pytest.raises(ConfigError, match="labels.params.beta given but rule 'wdsl' has no parameters"):
        check_config(cfg.replace(**{"labels.rule": "wdsl"}))
    # conditional keys, trial configs, names, report, the final model's protocol
    assert key_applies("labels.params.beta", cfg) and not key_applies("labels.alpha", cfg)
    assert not key_applies("labels.params.beta", cfg.replace(**{"labels.rule": "wdsl"}))
    assert trial_config(cfg, {"labels.rule": "wdsl"}).labels.params == {}
    no_beta = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, params={}))
    assert trial_config(no_beta, {}).labels.params == {"beta": 0.5}  # the declared default, made explicit
    assert describe(trial_config(cfg, {"labels.params.beta": 0.25})) == f"small_cnn {rule} beta=0.25 T=1"
    assert labels_of(cfg.to_dict(), {"iteration": 1}) == f"{rule} beta=1 (iter. 1)"
    assert final_config(cfg).protocol.name == "stratified"
    stage = {"stage.name": f"{plugin}_mean"}
    check_config(cfg.replace(**stage))
    with pytest.raises(ConfigError, match=f"stage.name '{plugin}_mean': the final EmotionModel .* supports stage.name: "
                                          "forest only"):
        check_stage(cfg.replace(**stage))

    data = prepare_data(cfg, show_progress=False)
    runs = {beta: run_chain(cfg.replace(**{"labels.params.beta": beta, **extra}), data, show_progress=False)
            for beta, extra in ((1.0, {}), (0.0, stage))}  # the forest, then the plugin's stage
    for result in runs.values():
        assert result.leak_free  # the protocol's fact
        last = result.iterations[-1]
        scored = [u for u in last.utterances if u["fold"] >= 0]
        assert len(scored) == data.n_utterances // TINY["protocol.folds"]  # its test fold only
        assert last.selected_ua is not None  # held out: an iteration picked per scope
    # beta = 1 keeps the one-hot labels; beta = 0 trains on the soft posteriors (the parameter reached the rule)
    assert runs[1.0].iterations[1].target_entropy == pytest.approx(0.0, abs=1e-6)
    assert runs[0.0].iterations[1].target_entropy > 0.01


def test_sweep_file_searches_the_plugin_protocol_and_the_rule_parameter(plugin, tone_corpus) -> None:
    from sweeps.search.space import enumerate_grid
    from sweeps.search.spec import parse_sweep

    rule, protocol = f"{plugin}_mix", f"{plugin}_holdout"
    spec = parse_sweep(_sweep(plugin, tone_corpus, Path("/nonexistent")))
    grid = enumerate_grid(spec.space)
    assert len(grid) == 2 * (2 + 1)  # protocols x (mix x 2 betas + wdsl)
    assert {(g["protocol.name"], g.get("labels.params.beta")) for g in grid if g["labels.rule"] == rule} == {
        (p, b) for p in (protocol, "stratified") for b in (0.0, 1.0)}
    assert all("labels.params.beta" not in g for g in grid if g["labels.rule"] == "wdsl")
    assert {(c.labels.rule, tuple(c.labels.params)) for c in spec.samples} == {(rule, ("beta",)), ("wdsl", ())}
    with pytest.raises(ConfigError, match=r"search.protocol: unknown nope"):
        parse_sweep({**_sweep(plugin, tone_corpus, Path("/x")), "search": {"protocol": ["nope"]}})
    with pytest.raises(ConfigError, match=r"search.labels.params.gamma: unknown parameter"):
        parse_sweep({**_sweep(plugin, tone_corpus, Path("/x")), "search": {"labels.params.gamma": [0.1, 0.2]}})


def _sweep(plugin: str, tone_corpus: Path, tmp: Path, rules: tuple[str, ...] = ("{}_mix", "wdsl")) -> dict:
    """A grid over the plugin protocol and stratified, the plugin rule's beta and (by default) WDSL."""
    return {"name": f"plugin_{plugin[-8:]}",
            "base": {"corpus": "csv", "data": str(tone_corpus), "plugins": [plugin], "iterations": 1, "seed": 0,
                     "segments": {"hop": 4}, "protocol": {"folds": 2, "eval_folds": 2, "inner_folds": 2},
                     "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "num_threads": 1}},
            "search": {"protocol": [f"{plugin}_holdout", "stratified"], "rule": [r.format(plugin) for r in rules],
                       "labels.params.beta": [0.0, 1.0]},
            "sampler": {"type": "grid"}, "scheduler": "none", "max_concurrent": 2, "resources": {"cpu": 1},
            "storage_path": str(tmp / "ray_results"), "step_cache": False}


@pytest.mark.slow
def test_sweep_runs_the_plugin_protocol_and_rule_parameter_in_ray_trials(plugin, tone_corpus, feature_cache,
                                                                         tmp_path) -> None:
    """Ray trials (fresh interpreters) import the plugin named in the base config and run its grid."""
    import ray

    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import parse_sweep

    if ray.is_initialized():
        ray.shutdown()
    raw = _sweep(plugin, tone_corpus, tmp_path, rules=("{}_mix",))
    raw["base"]["cache_dir"] = str(feature_cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSL_PROGRESS", "0")
        out = run_sweep(parse_sweep(raw), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not out.interrupted and out.errors == 0 and [r.status for r in out.rows] == ["done"] * 4
    done = {(r.config.protocol.name, r.config.labels.params["beta"]) for r in out.rows}
    assert done == {(p, b) for p in (f"{plugin}_holdout", "stratified") for b in (0.0, 1.0)}
    assert all(r.ua is not None and 0.0 <= r.ua <= 1.0 for r in out.rows)
    assert np.isfinite([r.objective for r in out.rows]).all()
