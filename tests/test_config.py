"""Config loading (preset < file < flags) and checks that fail before any work with allowed values."""
from __future__ import annotations

import numpy as np
import pytest

from dsl.config import ChainConfig, ConfigError, from_dict, load_config
from dsl.pipeline.checks import check_config, check_data


def test_layering_and_round_trip(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("backbone: densenet22\ntrain:\n  epochs: 4\n")
    cfg = load_config(f, "cpu", {"train.epochs": 3, "seed": 7})
    assert cfg.backbone == "densenet22" and cfg.train.epochs == 3 and cfg.seed == 7
    assert cfg.segments.hop == 8  # from the preset
    assert from_dict(__import__("yaml").safe_load(cfg.to_yaml())) == cfg
    paper = load_config(None, "paper", {"corpus": "casia"})
    assert paper.backbone == "efficientnet_b0" and paper.train.epochs == 20 and paper.segments.hop == 3


def test_unknown_keys_and_bad_types_are_named() -> None:
    with pytest.raises(ConfigError, match="trian"):
        from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="config.train.epochs"):
        from_dict({"train": {"epochs": "many"}})


@pytest.mark.parametrize("overrides, needle", [
    ({"backbone": "resnet9000"}, "allowed: densenet22, efficientnet_b0"),
    ({"labels.rule": "magic"}, "allowed: baseline, bdsl"),
    ({"labels.alpha": 1.5}, "outside [0, 1]"),
    ({"labels.rule": "gsl", "labels.alpha": 0.5}, "alpha applies only to: wdsl"),
    ({"iterations": -1}, "must be >= 0"),
    ({"protocol.folds": 1}, "protocol.folds = 1; must be >= 2"),
    ({"protocol.name": "loso"}, "allowed: cross_corpus, nested, refinery, speaker, speaker_transductive, stratified"),
])
def test_bad_configs_fail_with_allowed_values(overrides, needle) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(ChainConfig().replace(**overrides))
    assert needle in str(err.value)


def test_data_checks_small_classes_and_speakers() -> None:
    labels = np.array([0] * 12 + [1] * 3)
    speakers = np.array(["a", "b", "c"] * 5)
    with pytest.raises(ConfigError, match=r"b \(3\)"):
        check_data(ChainConfig().replace(**{"protocol.folds": 5, "protocol.eval_folds": 2}), labels, speakers, ("a", "b"))
    with pytest.raises(ConfigError, match="only 3 speakers"):
        check_data(ChainConfig().replace(**{"protocol.name": "speaker", "protocol.folds": 4,
                                             "protocol.eval_folds": 2}), np.array([0, 1] * 8),
                   np.array(list("abc") * 5 + ["a"]), ("a", "b"))
