"""The race (dsl.results.racing): it stops early on a clear winner, says "no significant difference" when there is
none, respects its budget, pairs its comparisons, and resumes from its saved state."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsl.results.racing import Candidate, Race, RaceSettings, holm, paired_difference


def _table(means: dict[str, float], n_seeds: int, noise: float, seed: int = 0) -> dict[tuple[str, int], float]:
    """Scores with a per-seed effect shared by all candidates (what pairing removes) and independent noise."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 3.0, n_seeds)
    return {(k, s): m + shared[s] + rng.normal(0, noise) for k, m in means.items() for s in range(n_seeds)}


def _cands(keys, iterations=None):
    return [Candidate(k, f"cfg-{k}", (iterations or {}).get(k, 1), 3) for k in keys]


def test_clear_winner_stops_early_and_says_who_beats_whom():
    table = _table({"a": 70.0, "b": 60.0, "c": 58.0}, 20, noise=1.0)
    race = Race(_cands("abc"), list(range(20)), RaceSettings(min_seeds=3))
    verdict = race.run(lambda k, s: table[(k, s)])
    assert verdict.winner == "a" and verdict.significant
    assert verdict.chains < 3 * 20 / 2  # far fewer chains than giving everyone every seed
    assert verdict.text.startswith("cfg-a beats cfg-")
    assert "Holm" in verdict.text and "paired over seeds" in verdict.text


def test_no_difference_ends_with_the_cheapest_and_says_so():
    table = _table({"a": 65.0, "b": 65.0, "c": 65.0}, 8, noise=1.5, seed=1)
    race = Race(_cands("abc", {"a": 3, "b": 0, "c": 2}), list(range(8)), RaceSettings(min_seeds=3))
    verdict = race.run(lambda k, s: table[(k, s)])
    assert not verdict.significant and sorted(verdict.survivors) == ["a", "b", "c"]
    assert verdict.winner == "b"  # the fewest iterations
    assert verdict.text.startswith("no significant difference among cfg-a, cfg-b, cfg-c")
    assert "picking the cheapest" in verdict.text


def test_no_difference_with_tie_break_mean_picks_the_highest_shared_mean():
    table = _table({"a": 65.0, "b": 65.0, "c": 65.0}, 8, noise=1.5, seed=1)
    race = Race(_cands("abc", {"a": 3, "b": 0, "c": 2}), list(range(8)), RaceSettings(min_seeds=3, tie_break="mean"))
    verdict = race.run(lambda k, s: table[(k, s)])
    assert not verdict.significant and len(verdict.survivors) == 3
    shared = {k: np.mean([table[(k, s)] for s in range(8)]) for k in "abc"}
    assert verdict.winner == max(shared, key=shared.get)
    assert "picking the highest mean" in verdict.text
    with pytest.raises(ValueError, match="tie_break"):
        RaceSettings(tie_break="coin")


def test_budget_is_never_exceeded():
    table = _table({"a": 65.0, "b": 64.5, "c": 64.0, "d": 63.5}, 30, noise=2.0, seed=2)
    race = Race(_cands("abcd"), list(range(30)), RaceSettings(min_seeds=2, budget=13))
    verdict = race.run(lambda k, s: table[(k, s)])
    assert verdict.chains <= 13
    assert race.finished in ("budget spent", "one candidate")


def test_comparisons_are_paired_over_shared_seeds():
    # b is always exactly 1 below a, but the seeds differ wildly: only a paired test sees it at once
    base = {s: 50.0 + 10.0 * np.sin(s) for s in range(10)}
    race = Race(_cands("ab"), list(range(10)), RaceSettings(min_seeds=3))
    verdict = race.run(lambda k, s: base[s] + (1.0 if k == "a" else 0.0))
    assert verdict.winner == "a" and verdict.chains == 6  # dropped right after the third shared seed
    assert race.comparisons[-1].seeds == (0, 1, 2)


def test_scores_in_any_order_and_resume_from_saved_state(tmp_path):
    table = _table({"a": 70.0, "b": 62.0, "c": 61.0}, 12, noise=1.0, seed=3)
    full = Race(_cands("abc"), list(range(12)), RaceSettings()).run(lambda k, s: table[(k, s)])

    race = Race(_cands("abc"), list(range(12)), RaceSettings())
    todo = race.requests()
    for k, s in reversed(todo[:2]):  # two chains of the first round finish, out of order, then the process dies
        race.tell(k, s, table[(k, s)])
    path = tmp_path / "race.json"
    path.write_text(json.dumps(race.to_dict()))
    resumed = Race.from_dict(json.loads(path.read_text()))
    assert sorted(resumed.requests()) == sorted(todo[2:])  # only the missing chains of the round, none twice
    verdict = resumed.run(lambda k, s: table[(k, s)])
    assert verdict.to_dict() == full.to_dict()


def test_holm_and_paired_difference():
    assert holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]  # 0.01 <= .05/3; 0.03 > .05/2 stops
    assert holm([0.001, 0.02, 0.04], 0.05) == [True, True, True]
    d, lo, hi, p = paired_difference([3, 4, 5, 6], [1, 2, 3, 5])
    assert d == pytest.approx(1.75) and lo < d < hi and p < 0.05


def test_bad_settings_and_candidates_are_refused():
    with pytest.raises(ValueError):
        RaceSettings(min_seeds=1)
    with pytest.raises(ValueError):
        Race(_cands("aa"), [0, 1], RaceSettings())


def test_false_winners_are_rare_when_nobody_differs():
    """Many races among five equal candidates: the race spends alpha over its looks and over all pairs, so a
    'beats' verdict (or any drop) is rare; an uncorrected race (one look's Holm at alpha each round) is not."""
    alpha, races, false = 0.05, 200, 0
    for r in range(races):
        table = _table({k: 60.0 for k in "abcde"}, 10, noise=2.0, seed=100 + r)
        race = Race(_cands("abcde"), list(range(10)), RaceSettings(alpha=alpha))
        verdict = race.run(lambda k, s, table=table: table[(k, s)])
        false += bool(verdict.dropped)
    assert false / races <= alpha + 0.03  # binomial margin over 200 races
