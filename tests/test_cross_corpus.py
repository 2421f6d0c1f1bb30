"""Cross-corpus protocol: train on one corpus, test on another over their shared classes, leak-free."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import ConfigError
from dsl.data.corpora import load_corpus
from dsl.data.cross_corpus import shared_corpus
from dsl.pipeline.checks import check_config
from tests.support.data import TINY, write_tone

BASES = {"class0": 200.0, "class1": 800.0, "class2": 2400.0, "class3": 5000.0}


def _tones(root: Path, classes: list[str], n: int, seed: int, relabel: dict[str, str] | None = None) -> Path:
    """n tones per class (pitch range = class) as a CSV manifest; `relabel` writes other labels on the files."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,speaker"]
    for c in classes:
        for i in range(n):
            name = f"{c}_{i}.wav"
            write_tone(root / name, seconds=0.6 + 0.04 * i, freq=BASES[c] * (1 + 0.1 * rng.random()))
            rows.append(f"{name},{(relabel or {}).get(c, c)},spk{i % 3}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("xc")
    src = _tones(base / "src", ["class0", "class1", "class2"], 8, 0)
    tgt = _tones(base / "tgt", ["class0", "class1", "class3"], 6, 1)
    swapped = _tones(base / "tgt_swapped", ["class0", "class1", "class3"], 6, 1,
                     relabel={"class0": "class1", "class1": "class0"})  # same audio, test labels swapped
    return src, tgt, swapped, base / "cache"


def _cfg(src: Path, tgt: Path, cache: Path, **extra) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(src), cache_dir=str(cache)).replace(**{
        **TINY, "protocol.name": "cross_corpus", "protocol.test_corpus": "csv", "protocol.test_data": str(tgt),
        "iterations": 1, **extra})


def test_shared_classes_and_label_map(corpora) -> None:
    src, tgt, _, _ = corpora
    s, t = load_corpus("csv", src), load_corpus("csv", tgt)
    both = shared_corpus(s, t)
    assert both.label_names == ("class0", "class1") and len(both) == 16 + 12
    assert both.speakers[0].startswith("csv:")
    mapped = shared_corpus(s, t, "class3=class2")
    assert mapped.label_names == ("class0", "class1", "class2") and len(mapped) == 24 + 18
    with pytest.raises(ConfigError, match="share fewer than two classes"):
        shared_corpus(s, t, "class1=class0")  # one shared class left


def test_config_needs_the_test_corpus() -> None:
    with pytest.raises(ConfigError, match="needs protocol.test_corpus"):
        check_config(ChainConfig().replace(**{"protocol.name": "cross_corpus"}))
    with pytest.raises(ConfigError, match="apply only to protocol cross_corpus"):
        check_config(ChainConfig().replace(**{"protocol.test_data": "/x"}))


def test_trains_on_one_corpus_and_scores_only_the_other_without_reading_its_labels(corpora) -> None:
    src, tgt, swapped, cache = corpora
    cfg = _cfg(src, tgt, cache)
    data = prepare_data(cfg, show_progress=False)
    res = run_chain(cfg, data, show_progress=False).to_dict()
    assert res["protocol"]["name"] == "cross_corpus" and res["protocol"]["leak_free"] is True
    for it in res["iterations"]:
        folds = [u["fold"] for u in it["utterances"]]
        assert folds.count(0) == 12 and folds.count(-1) == 16  # the training corpus is never scored
        assert sum(map(sum, it["confusion"])) == 12
    assert res["iterations"][-1]["ua"] >= 0.7  # the same pitch ranges in both corpora: easy
    # The test corpus's labels reach nothing but its scores: swap them and every prediction stays put.
    cfg2 = _cfg(src, swapped, cache)
    res2 = run_chain(cfg2, prepare_data(cfg2, show_progress=False), show_progress=False).to_dict()
    for a, b in zip(res["iterations"], res2["iterations"]):
        pa = [u["proba"] for u in a["utterances"] if u["fold"] == 0]
        pb = [u["proba"] for u in b["utterances"] if u["fold"] == 0]
        assert len(pa) == 12 and pa == pb
        assert a["selected_iterations"] == b["selected_iterations"]
    assert res2["iterations"][-1]["ua"] < res["iterations"][-1]["ua"]  # ... while the scores see the swap


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leakcheck_rotates_the_test_corpus_labels_and_nothing_of_it_moves(corpora, seed) -> None:
    """`dsl.studies.leakcheck` on cross_corpus: the relabelled fold is the whole test corpus, so a control run
    (every other training utterance relabelled) must move its predictions instead of other folds."""
    from dsl.studies.leakcheck import leakcheck

    src, tgt, _, cache = corpora
    cfg = _cfg(src, tgt, cache, seed=seed, **{"train.epochs": 2, "protocol.select_folds": 2})
    check = leakcheck(cfg, prepare_data(cfg, show_progress=False))
    assert len(check.relabelled) == 12 and check.leak_free
    assert check.exit_code == 0, check.format()
    assert check.control_moved and check.control_moved > 0
