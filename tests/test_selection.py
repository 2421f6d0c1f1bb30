"""`dsl-sweep best`'s race and final exam, driven by a table of scores instead of chains (seconds, no Ray): the race
stops early when one candidate is clearly best and says "no significant difference" when none is; an interrupted
race resumes from the chains on disk without running one twice and reaches the same verdict; the final-exam table
carries the holdout figures, the paired gain and the optimism."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dsl.config import ChainConfig
from dsl.results.racing import Candidate, RaceSettings
from dsl.results.selection_report import markdown
from sweeps.selection.chains import ChainRequest, ChainStore
from sweeps.selection.exam import REFERENCE_KEY, exam_summary
from sweeps.selection.race import ChainLog, RaceEntry, make_race, race_rows, run_race, score_in_percent
from tracking.selection_run import NoTracker

BASE = ChainConfig(corpus="emodb", data="/data/emodb", iterations=1).replace(**{"protocol.name": "refinery"})


def _entries(names: str) -> dict[str, RaceEntry]:
    return {k: RaceEntry(Candidate(k, f"config {k}", iterations=i % 3, trainings=3 * (i % 3 + 1)),
                         BASE.replace(**{"labels.alpha": 0.1 * (i + 1)}), 0.5 + 0.01 * i, f"trial{k}")
            for i, k in enumerate(names)}


def _result(req: ChainRequest, ua: float) -> dict:
    return {"config": req.config.to_dict(), "seconds": 1.0, "environment": {"fingerprint": "test"},
            "iterations": [{"iteration": req.config.iterations, "ua": ua, "wa": ua + 0.01,
                            "utterances": [{"fold": 0}, {"fold": -1}, {"fold": -1}]}]}


class TableRunner:
    """Chains whose UA (a fraction) comes from `table[(key, seed)]`; it raises KeyboardInterrupt after `stop_after`
    chains (an interrupted `best`) and records what it ran."""

    def __init__(self, table: dict[tuple[str, int], float], stop_after: int | None = None):
        self.table, self.stop_after, self.ran = table, stop_after, []

    def run(self, requests):
        for req in requests:
            if self.stop_after is not None and len(self.ran) >= self.stop_after:
                raise KeyboardInterrupt
            self.ran.append((req.key, req.seed))
            yield req, _result(req, self.table[(req.key, req.seed)])


def _table(means: dict[str, float], seeds: list[int], noise: float, seed: int = 0) -> dict[tuple[str, int], float]:
    """Per seed a shared offset (folds and initialisation hit every candidate alike) plus a little own noise."""
    rng = np.random.default_rng(seed)
    shared = {s: rng.normal(0, 0.03) for s in seeds}
    return {(k, s): m + shared[s] + rng.normal(0, noise) for k, m in means.items() for s in seeds}


def _race(tmp: Path, table, names: str, seeds: list[int], runner=None, settings: RaceSettings | None = None):
    entries = _entries(names)
    race = make_race(entries, seeds, settings or RaceSettings())
    runner = runner or TableRunner(table)
    log = ChainLog()
    verdict = run_race(race, entries, ChainStore(tmp), runner, NoTracker(), score_in_percent("ua"),
                       log=lambda line: None, chains=log)
    return race, entries, verdict, runner, log


def test_the_race_stops_early_when_one_candidate_is_clearly_best(tmp_path: Path) -> None:
    seeds = list(range(1, 11))
    table = _table({"a": 0.62, "b": 0.55, "c": 0.54, "d": 0.53}, seeds, noise=0.004)
    race, entries, verdict, runner, _ = _race(tmp_path, table, "abcd", seeds)
    assert verdict.winner == "a" and verdict.significant
    assert re.match(r"config a beats config [bcd] by \d+\.\d+ \[\d+\.\d+, \d+\.\d+\] \(paired over seeds", verdict.text)
    assert len(runner.ran) < 4 * len(seeds)  # stopped before the seeds ran out
    rows = {r["key"]: r for r in race_rows(race, entries, verdict)}
    assert rows["a"]["status"] == "winner" and all(rows[k]["status"].startswith("dropped in round") for k in "bcd")
    assert all(rows[k]["vs_leader"]["low"] > 0 for k in "bcd")  # each drop: an interval that excludes 0


def test_the_race_declares_no_significant_difference_among_equals(tmp_path: Path) -> None:
    seeds = list(range(1, 9))
    table = _table({"a": 0.60, "b": 0.60, "c": 0.60}, seeds, noise=0.01, seed=3)
    race, entries, verdict, runner, _ = _race(tmp_path, table, "abc", seeds)
    assert not verdict.significant and len(runner.ran) == 3 * len(seeds)
    assert verdict.text.startswith("no significant difference among config a, config b, config c")
    # the cheapest survivor: fewest iterations (entry a has 0), then fewest trainings
    assert verdict.winner == "a" and "picking the cheapest" in verdict.text


def test_a_budget_ends_the_race_and_says_so(tmp_path: Path) -> None:
    seeds = list(range(1, 9))
    table = _table({"a": 0.60, "b": 0.60, "c": 0.60}, seeds, noise=0.01, seed=4)
    race, _, verdict, runner, _ = _race(tmp_path, table, "abc", seeds, settings=RaceSettings(budget=10))
    assert len(runner.ran) <= 10 and race.finished == "budget spent" and "budget spent" in verdict.text


def test_an_interrupted_race_resumes_without_running_a_chain_twice(tmp_path: Path) -> None:
    seeds = list(range(1, 11))
    table = _table({"a": 0.62, "b": 0.58, "c": 0.55, "d": 0.60}, seeds, noise=0.01, seed=5)
    whole = _race(tmp_path / "whole", table, "abcd", seeds)
    stopped = TableRunner(table, stop_after=7)
    with pytest.raises(KeyboardInterrupt):
        _race(tmp_path / "resumed", table, "abcd", seeds, runner=stopped)
    assert len(stopped.ran) == 7
    race, _, verdict, again, log = _race(tmp_path / "resumed", table, "abcd", seeds)
    assert not set(stopped.ran) & set(again.ran)  # no chain ran twice
    assert log.read_back == 7 and log.run == len(again.ran)
    assert verdict.to_dict() == whole[2].to_dict() and race.to_dict() == whole[0].to_dict()
    # a third run reads everything back and runs nothing
    *_, third, log3 = _race(tmp_path / "resumed", table, "abcd", seeds)
    assert third.ran == [] and log3.read_back == race.chains


def test_the_final_exam_table_reports_the_holdout_the_paired_gain_and_the_optimism(tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4, 5]
    race_table = _table({"a": 0.64, "b": 0.55}, list(range(1, 11)), noise=0.004)
    race, entries, verdict, _, log = _race(tmp_path, race_table, "ab", list(range(1, 11)))
    holdout = {("a", s): 0.60 + 0.01 * s for s in seeds} | {(REFERENCE_KEY, s): 0.57 + 0.01 * s for s in seeds}
    results = {k: _result(ChainRequest("exam", k[0], k[0], k[1], BASE.replace(seed=k[1])), v)
               for k, v in holdout.items()}
    ranking = [race.scores["a"][s] for s in sorted(race.scores["a"])]
    exam = exam_summary(results, "a", seeds, "ua", ranking, "config a", "small_cnn baseline T=0",
                        {"rule": "baseline", "iterations": 0}, "refinery")
    assert exam["gain_ua"]["mean"] == pytest.approx(0.03) and exam["gain_ua"]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert exam["winner"]["ua"]["mean"] == pytest.approx(0.63)
    assert exam["optimism"] == pytest.approx(np.mean(ranking) / 100 - 0.63)
    assert exam["n_holdout"] == 1 and exam["n_train"] == 2
    sel = {"sweep": "toy", "objective": "final UA at the last iteration", "sweep_seed": 0,
           "sweep_protocol": {"name": "stratified", "leak_free": False}, "protocol": {"name": "refinery",
                                                                                     "leak_free": True},
           "data": {"corpus": "emodb (wav)", "search_utterances": 2,
                    "holdout": {"how": "speakers 03, 08", "classes": "1 anger"}},
           "race": {"rows": race_rows(race, entries, verdict), "verdict": verdict.to_dict(),
                    "settings_text": "toy settings", "chains": race.chains, "chains_run": log.run,
                    "chains_read_back": log.read_back, "finished": race.finished},
           "exam": exam, "environments": [{"fingerprint": "test", "cpu": "toy CPU"}], "command": "dsl-sweep best toy"}
    text = markdown(sel)
    assert f"**Verdict:** {verdict.text}." in text
    exam_rows = [line for line in text.splitlines() if line.startswith("| config a | winner")]
    assert exam_rows == [f"| config a | winner | 63.0 ± 2.0 | 64.0 ± 2.0 | 3.0 ± 0.0 | "
                         f"{exam['winner']['ranking_ua']['mean'] * 100:.1f} ± "
                         f"{(exam['winner']['ranking_ua']['high'] - exam['winner']['ranking_ua']['mean']) * 100:.1f} | "
                         f"{100 * exam['optimism']:+.1f} |"]
    assert "| small_cnn baseline T=0 | reference | 60.0 ± 2.0 |" in text
    assert "`refinery` (leak-free)" in text and "`stratified` (transductive)" in text and "seeds 1–5" in text
    # `dsl-sweep report selection.json` renders the same tables from the file best writes
    from dsl.results.report import markdown as report_markdown
    from dsl.results.selection_report import SELECTION_FORMAT

    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"format": SELECTION_FORMAT, "kind": "selection", **sel}))
    assert text in report_markdown([path])


def test_a_lone_candidate_wins_without_a_race_and_without_optimism(tmp_path: Path) -> None:
    """A sweep with one distinct configuration: no race chain runs, so no race interval and no optimism; the exam
    still reports the holdout figures and the registered model gets no race figures it does not have."""
    from sweeps.selection.best import _interval
    from tracking.registry import selection_figures

    assert _interval([]) is None
    seeds = [1, 2, 3]
    holdout = {("a", s): 0.60 + 0.01 * s for s in seeds} | {(REFERENCE_KEY, s): 0.58 + 0.01 * s for s in seeds}
    results = {k: _result(ChainRequest("exam", k[0], k[0], k[1], BASE.replace(seed=k[1])), v)
               for k, v in holdout.items()}
    exam = exam_summary(results, "a", seeds, "final", [], "config a", "small_cnn baseline T=0",
                        {"rule": "baseline", "iterations": 0}, "refinery")
    assert exam["optimism"] is None and exam["winner"]["ranking_ua"] is None
    assert exam["gain_ua"]["mean"] == pytest.approx(0.02)
    metrics, tags = selection_figures({"verdict": "config a is the only candidate", "protocol": "refinery",
                                       "race": {"seeds": [], "ua": None}, "holdout": None})
    assert metrics == {} and "dsl.race_ua" not in tags and tags["dsl.verdict"].endswith("only candidate")
