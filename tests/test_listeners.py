"""Listener agreement: EmoDB's recognition rates against the model's confidence and its targets' entropy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsl.config import ConfigError
from dsl.results.listeners import agreement, agreement_table, load_recognition
from tests.support.data import emodb_root


def _listener_file(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    body = "Nr.\tSatz\terkannt\tnatuerlich\n" + "".join(
        f"{i + 1}\xa0\xa0\t{name}\t{rate}\xa0\xa0\t50,00\xa0\n" for i, (name, rate) in enumerate(rows))
    p = tmp_path / "erkennung.txt"
    p.write_bytes(body.encode("latin-1"))
    return p


def test_reads_decimal_commas_and_names_a_bad_line(tmp_path: Path) -> None:
    rates = load_recognition(_listener_file(tmp_path, [("a.wav", "65,00"), ("b.wav", "100,00")]))
    assert rates == {"a.wav": 0.65, "b.wav": 1.0}
    bad = tmp_path / "bad.txt"
    bad.write_bytes("Nr.\tSatz\terkannt\tnatuerlich\n1\ta.wav\tviel\t3\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"bad.txt: line 2: expected"):
        load_recognition(bad)


def _entry(conf: list[float], ent: list[float | None]) -> dict:
    return {"iteration": 1, "utterances": [
        {"file": f"u{i}.wav", "label": 0, "proba": [c, 1 - c], "target_entropy": e}
        for i, (c, e) in enumerate(zip(conf, ent))]}


def test_agreement_is_spearman_of_rates_with_confidence_and_entropy() -> None:
    rates = {f"u{i}.wav": r for i, r in enumerate([0.2, 0.4, 0.6, 0.8, 1.0])}
    a = agreement(_entry([0.1, 0.3, 0.5, 0.7, 0.9], [0.9, 0.7, None, 0.3, 0.1]), rates)
    assert a["n"] == 5 and a["rho_confidence"] == pytest.approx(1.0)
    assert a["n_entropy"] == 4 and a["rho_target_entropy"] == pytest.approx(-1.0)
    shuffled = agreement(_entry([0.9, 0.1, 0.5, 0.3, 0.7], [None] * 5), rates)
    assert abs(shuffled["rho_confidence"]) < 0.5 and shuffled["rho_target_entropy"] is None


def test_table_pools_a_studys_seeds(tmp_path: Path) -> None:
    rates = {f"u{i}.wav": r for i, r in enumerate(np.linspace(0.2, 1.0, 6))}
    seeds = tmp_path / "study.seeds"
    seeds.mkdir()
    rng = np.random.default_rng(0)
    for s in range(3):
        conf = list(np.linspace(0.1, 0.9, 6) + rng.normal(0, 0.05, 6))
        run = {"config": {"seed": s, "protocol": {"name": "nested"}}, "protocol": {"name": "nested", "leak_free": True},
               "iterations": [_entry(conf, [0.5] * 6) | {"iteration": 0}]}
        (seeds / f"seed{s}.json").write_text(json.dumps(run))
    (tmp_path / "study.json").write_text("{}")
    table = agreement_table([str(tmp_path / "study.json")], rates)
    assert "| nested (true) | 0, 1, 2 | 0 | 6 |" in table and "n/a" in table  # constant entropy: no rank order


def test_real_listener_file_covers_the_corpus() -> None:
    root = emodb_root()
    if root is None or not (root / "erkennung.txt").is_file():
        pytest.skip("EmoDB with erkennung.txt not found (../shared/data/emodb or $DSL_EMODB)")
    from dsl.data.corpora import load_corpus

    rates = load_recognition(root / "erkennung.txt")
    names = {p.name for p in load_corpus("emodb", root).paths}
    assert names <= set(rates) and all(0.0 <= r <= 1.0 for r in rates.values())
