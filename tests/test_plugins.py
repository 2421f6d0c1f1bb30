"""`ChainConfig.plugins`: a user's own backbone and rule, registered in a module, reach spawned fold workers
and sweep validation; a plugin that cannot be imported is a config error naming the module."""
from __future__ import annotations

import sys
import uuid

import numpy as np
import pytest
import yaml

from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import ConfigError, load_config
from dsl.pipeline.checks import check_config
from sweeps.search.spec import parse_sweep
from tests.support.data import TINY

PLUGIN = '''
import numpy as np
import torch
from torch import nn

from dsl.training.backbones import register_backbone
from dsl.method.rules import register_rule


class Prior(nn.Module):
    """Ignores its input and learns the class prior: every posterior of one model is the same."""

    def __init__(self, n_classes):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


@register_backbone("{name}_prior")
def prior(n_classes):
    return Prior(n_classes)


@register_rule("{name}_keep")
def keep(q, y, utt):
    """Keeps the original labels."""
    return y.astype(np.float32)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    """A fresh, importable plugin module (not imported yet) registering `<name>_prior` and `<name>_keep`."""
    name = f"dsl_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit the parent's sys.path
    yield name
    sys.modules.pop(name, None)


def test_plugin_backbone_and_rule_run_in_spawned_fold_workers(plugin, tone_corpus, feature_cache) -> None:
    cfg = ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(feature_cache)).replace(**{
        **TINY, "plugins": [plugin], "backbone": f"{plugin}_prior", "labels.rule": f"{plugin}_keep",
        "train.workers": 2, "train.epochs": 2, "iterations": 1})
    check_config(cfg)  # imports the plugin here; the two worker processes must import it themselves
    assert plugin in sys.modules
    data = prepare_data(cfg, show_progress=False)
    result = run_chain(cfg, data, show_progress=False)
    assert [r.iteration for r in result.iterations] == [0, 1]
    last = result.iterations[-1]
    assert last.changed_label_share == 0.0  # the plugin rule kept the utterance labels
    # The plugin backbone ignores its input, so a fold's predictions are one posterior repeated.
    distinct = np.unique(np.round(last.posteriors, 5), axis=0)
    assert len(distinct) <= cfg.protocol.folds


def test_plugins_config_round_trip_and_comma_list(plugin) -> None:
    cfg = load_config(overrides={"plugins": f"{plugin}, json"})
    assert cfg.plugins == (plugin, "json")
    again = load_config(overrides=yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.to_dict()["plugins"] == [plugin, "json"]
    with pytest.raises(ConfigError, match="config.plugins: expected a list of module names"):
        load_config(overrides={"plugins": [3]})


def test_missing_plugin_is_a_config_error_naming_the_module() -> None:
    cfg = ChainConfig(plugins=("no_such_dsl_plugin_module",), backbone="mine")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    text = str(err.value)
    assert "plugins: cannot import 'no_such_dsl_plugin_module'" in text and "ModuleNotFoundError" in text
    assert "backbone 'mine' is unknown" in text  # the other problems are still reported


def test_sweep_search_may_name_plugin_backbones(plugin, tone_corpus) -> None:
    raw = {"name": "plugins", "base": {"corpus": "csv", "data": str(tone_corpus), "plugins": [plugin]},
           "search": {"backbone": [f"{plugin}_prior", "small_cnn"]}}
    spec = parse_sweep(raw)
    assert spec.base.plugins == (plugin,)
    with pytest.raises(ConfigError, match=r"unknown nope_cnn; allowed: .*_prior"):
        parse_sweep({**raw, "search": {"backbone": ["nope_cnn"]}})


def test_saved_model_with_a_plugin_backbone_loads_in_a_fresh_registry(plugin, tmp_path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from dsl.method.rules import RULES
    from dsl.pipeline.model import EmotionModel
    from dsl.training.backbones import BACKBONES, create_backbone

    cfg = ChainConfig(plugins=(plugin,), backbone=f"{plugin}_prior")
    check_config(cfg)
    net = create_backbone(cfg.backbone, 2)
    forest = RandomForestClassifier(n_estimators=2).fit(np.eye(16), [0, 1] * 8)
    fitted = EmotionModel(cfg)
    fitted.label_names, fitted.network, fitted.forest = ("a", "b"), net, forest
    fitted.mean, fitted.std = np.zeros(64, dtype=np.float32), np.ones(64, dtype=np.float32)
    fitted.save(tmp_path / "model")
    BACKBONES.unregister(cfg.backbone)  # as in a new process that never imported the plugin
    RULES.unregister(f"{plugin}_keep")
    sys.modules.pop(plugin)
    model = EmotionModel.load(tmp_path / "model")
    assert type(model.network).__name__ == "Prior"
