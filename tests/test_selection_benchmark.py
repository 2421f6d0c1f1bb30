"""The selection benchmark (bench/selection.py) on its committed table: every strategy is scored on seeds it did not
see, the JSON renders through `dsl-sweep report`, and the truth seeds are the same for every strategy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import selection as bs
from dsl.results.report import markdown


def test_compare_on_the_committed_table_renders_through_report(tmp_path: Path) -> None:
    table = bs.load_table()
    assert len(table.seeds) >= 8 and len(table.configs) >= 8  # the minimum grid
    out = tmp_path / "compare.json"
    rows = bs.compare(bs.OUT, resamples=40, seed=1, truth_seeds=2, json_out=out, plot_out=tmp_path / "c.png")
    names = [r["strategy"] for r in rows]
    assert names[0].startswith("argmax") and names[1].startswith("top3x5")
    top = next(r for r in rows if r["strategy"].startswith("top3x5"))
    assert top["chains"] == 15 and all(r["chains"] <= 15 for r in rows)
    assert all(r["regret"] >= 0 and 0 <= r["p_within_1"] <= 1 for r in rows)
    text = markdown([out])
    assert "| top3x5 (fixed re-evaluation) | 15.0 |" in text and "**Goal**" in text
    assert json.loads(out.read_text())["kind"] == "selection-benchmark" and (tmp_path / "c.png").stat().st_size > 0


def test_the_truth_is_never_seen_and_is_the_same_for_every_strategy() -> None:
    """A strategy that peeks at the truth seeds would pick the true best every time: the harness must not let it."""
    table = bs.load_table()
    seen: list[set[int]] = []

    def spy(t, order):
        seen.append(set(int(s) for s in order))
        return 0, 0

    bs.evaluate(table, bs.Strategy("spy", spy), resamples=30, truth_seeds=2, rng=np.random.default_rng(0))
    assert all(len(s) == len(table.seeds) - 2 for s in seen)
