"""`dsl.pipeline.model.EmotionModel`: fit on a corpus, predict new audio, save/load with a format version."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsl.config import ChainConfig
from dsl.data.bundle import prepare_data
from dsl.pipeline.model import MODEL_FORMAT, EmotionModel, final_config
from tests.support.data import TINY


@pytest.fixture(scope="module")
def fitted(tone_corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("model-cache")
    cfg = ChainConfig(corpus="csv", data=str(tone_corpus), cache_dir=str(cache)).replace(**{**TINY, "iterations": 1})
    data = prepare_data(cfg, show_progress=False)
    model = EmotionModel(cfg).fit(data, show_progress=False, info={"source": "test"})
    return model, data


def test_fit_returns_self_and_predicts_the_training_tones(fitted) -> None:
    model, data = fitted
    assert model.label_names == data.label_names and model.info["iteration"] == 1
    labels = model.predict(data.paths)
    proba = model.predict_proba(data.paths)
    assert proba.shape == (len(data.paths), len(data.label_names))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    truth = [data.label_names[i] for i in data.labels]
    assert np.mean([a == b for a, b in zip(labels, truth)]) >= 0.8  # three pitch ranges are easy


def test_save_load_predicts_the_same(fitted, tmp_path: Path) -> None:
    model, data = fitted
    d = model.save(tmp_path / "m")
    assert json.loads((d / "model.json").read_text())["format"] == MODEL_FORMAT
    back = EmotionModel.load(d)
    np.testing.assert_array_equal(back.predict_proba(data.paths[:4]), model.predict_proba(data.paths[:4]))
    details = back.predict_details(data.paths[:1])[0]
    assert details.segment_posteriors.shape[1] == len(data.label_names)


def test_model_format_is_checked(fitted, tmp_path: Path) -> None:
    model, _ = fitted
    d = model.save(tmp_path / "m")
    info = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**info, "format": MODEL_FORMAT + 1}))
    with pytest.raises(ValueError, match=r"model.json: model format \d+ is newer"):
        EmotionModel.load(d)
    (d / "model.json").write_text(json.dumps({k: v for k, v in info.items() if k != "format"}))
    with pytest.warns(UserWarning, match="model format 1"):
        EmotionModel.load(d)


def test_unfitted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        EmotionModel(ChainConfig()).predict(["x.wav"])


def test_leak_free_protocols_train_the_final_model_transductively() -> None:
    assert final_config(ChainConfig().replace(**{"protocol.name": "nested"})).protocol.name == "stratified"
    assert final_config(ChainConfig().replace(**{"protocol.name": "speaker"})).protocol.name == "speaker_transductive"
