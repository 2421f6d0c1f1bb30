"""The race of `dsl-sweep best`: the racing core (`dsl.results.racing`) driven by real chains.

Each round the race asks for (candidate, seed) chains; they run side by side (`sweeps.selection.chains`), each
result is on disk the moment it is in, and the race is told its score: the candidate's objective (UA at its last
iteration, in percent) under the selection protocol on the search part of the corpus. A resumed `best` builds a
fresh race with the same candidates, seeds and settings and replays it: every chain whose result is on disk is
read back, in the same order, so the race reaches the same state (the core is deterministic given its scores) and
runs only what is missing.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsl.config import ChainConfig
from dsl.results.racing import Candidate, Race, RaceSettings, Verdict, paired_difference
from sweeps.selection.chains import ChainRequest, ChainStore, run_requests

RACE_STAGE = "race"


@dataclass(frozen=True)
class RaceEntry:
    """A candidate of the race: its racing identity, the config its chains run, and what the sweep scored it."""

    candidate: Candidate
    config: ChainConfig  # the selection protocol's config (without seed)
    sweep_score: float  # the sweep's own objective (fraction), under the sweep's protocol
    trial_id: str = ""
    run_id: str = ""
    data: str = "search"  # which dataset of the runner its chains read (one per front end)


def score_in_percent(objective: str) -> Callable[[Mapping[str, Any]], float]:
    """A chain result's score for the race: the sweep objective (`final`, `selected`, either under a test condition)
    at the last iteration, in percent."""
    from sweeps.selection.candidates import objective_figures

    def score(result: Mapping[str, Any]) -> float:
        value = objective_figures(result["iterations"][-1], objective)[0]
        if value is None:
            raise ValueError(f"the chain result has no score for objective {objective!r} ('selected' needs a "
                             "held-out protocol)")
        return 100.0 * float(value)
    return score


def describe_settings(race: Race) -> str:
    st = race.settings
    budget = f"; budget {st.budget} chains" if st.budget else ""
    return (f"{len(race.candidates)} candidates, up to {len(race.seeds)} seeds each ({', '.join(map(str, race.seeds))}), "
            f"{st.seeds_per_round} seed{'s' if st.seeds_per_round != 1 else ''} per round; a two-sided paired t-test of each survivor against the leader "
            f"over the seeds they share, from {st.min_seeds} shared seeds on ({race.correction_words()}){budget}")


def look_lines(race: Race, comparisons: list) -> list[str]:
    """What a look decided, one line per comparison."""
    names = {c.key: c.name for c in race.candidates}
    out = []
    for c in comparisons:
        verb = "dropped" if c.dropped else "kept"
        out.append(f"  round {c.round} look: {names[c.leader]} minus {names[c.key]} = {c.diff:+.2f} points "
                   f"[{c.low:.2f}, {c.high:.2f}] over seeds {', '.join(map(str, c.seeds))}, p = {c.p:.3g} "
                   f"(level {c.level:.3g}): {names[c.key]} {verb}")
    return out


@dataclass
class ChainLog:
    """What the chains of a selection did: how many ran now or were read back, and the machines they ran on."""

    run: int = 0
    read_back: int = 0
    environments: dict[str, dict] = field(default_factory=dict)

    def note(self, result: Mapping[str, Any], from_disk: bool) -> None:
        if from_disk:
            self.read_back += 1
        else:
            self.run += 1
        env = result.get("environment") or {}
        self.environments.setdefault(str(env.get("fingerprint", "?")), env)


def run_race(race: Race, entries: Mapping[str, RaceEntry], store: ChainStore, runner: Any, tracker: Any,
             score: Callable[[Mapping[str, Any]], float], on_round: Callable[[Race], None] | None = None,
             log: Callable[[str], None] = print, chains: ChainLog | None = None) -> Verdict:
    """Run the race to its verdict: rounds of chains, each told as it arrives; `on_round` after each round (the
    caller writes the race's state there); `chains` counts what ran and what was read back."""
    printed = 0
    stats = chains if chains is not None else ChainLog()

    def done(req: ChainRequest, result: Mapping[str, Any], from_disk: bool) -> None:
        stats.note(result, from_disk)
        took = "read back from disk" if from_disk else f"{float(result.get('seconds', 0.0)):.0f} s"
        log(f"  {req.name} seed {req.seed}: UA {score(result):.2f} % ({took})")

    log(f"race: {describe_settings(race)}")
    logged = race.rounds
    while True:
        requests = race.requests()  # closes the round whose scores are all in: its look drops candidates
        fresh = race.comparisons[printed:]
        printed = len(race.comparisons)
        for line in look_lines(race, fresh):
            log(line)
        if race.rounds > logged:  # the race after the round's look: means so far, survivors, chains
            tracker.round(race.rounds, race.means(), race.alive, race.chains)
            logged = race.rounds
        if not requests:
            break
        seeds = sorted({s for _, s in requests})
        n = len({k for k, _ in requests})
        log(f"round {race.rounds + 1}: seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))} for {n} "
            f"candidate{'s' if n != 1 else ''} ({race.chains} chains so far)")
        reqs = [ChainRequest(RACE_STAGE, k, entries[k].candidate.name, s, entries[k].config.replace(seed=s),
                             entries[k].data) for k, s in requests]
        results = run_requests(reqs, store, runner, tracker, score, done, round_=race.rounds + 1)
        for k, s in requests:  # in request order: a replay tells the same scores in the same order
            race.tell(k, s, score(results[(k, s)]))
        if on_round:
            on_round(race)
    verdict = race.verdict()
    log(f"race over after {race.chains} chains ({stats.run} run now, {stats.read_back} read back from disk)"
        f"{': ' + race.finished if race.finished else ''}")
    return verdict


def race_rows(race: Race, entries: Mapping[str, RaceEntry], verdict: Verdict) -> list[dict[str, Any]]:
    """Per candidate, for the race table: seeds run, mean, the paired difference to the leader with its interval
    (the test that dropped it, or the last look's), and the round it was dropped in."""
    means = race.means()
    shared = [s for s in race.seeds if all(s in race.scores[k] for k in race.alive)]
    shared_mean = {k: float(np.mean([race.scores[k][s] for s in shared])) if shared else means[k] for k in race.alive}
    leader = max(race.alive, key=lambda k: (shared_mean[k], -race.alive.index(k)))
    last: dict[str, Any] = {}
    for c in race.comparisons:
        last[c.key] = c
    rows = []
    for cand in race.candidates:
        k = cand.key
        c = last.get(k)
        if k in race.alive and k != leader and shared and (c is None or c.leader != leader
                                                            or tuple(c.seeds) != tuple(shared)):
            d, lo, hi, p = paired_difference([race.scores[leader][s] for s in shared],
                                             [race.scores[k][s] for s in shared], race.settings.alpha)
            comparison = {"leader": leader, "diff": d, "low": lo, "high": hi, "p": p, "level": race.settings.alpha,
                          "seeds": shared, "round": None, "dropped": False, "uncorrected": True}
        elif c is not None:
            comparison = {"leader": c.leader, "diff": c.diff, "low": c.low, "high": c.high, "p": c.p, "level": c.level,
                          "seeds": list(c.seeds), "round": c.round, "dropped": c.dropped, "uncorrected": False}
        else:
            comparison = None
        e = entries[k]
        status = ("winner" if k == verdict.winner else "survivor" if k in race.alive
                  else f"dropped in round {comparison['round'] if comparison else '?'}")
        rows.append({"key": k, "name": cand.name, "trial_id": e.trial_id, "iterations": cand.iterations,
                     "trainings": cand.trainings, "sweep_score": e.sweep_score, "seeds": sorted(race.scores[k]),
                     "scores": {str(s): v for s, v in sorted(race.scores[k].items())}, "mean": means[k],
                     "leader": k == leader, "status": status, "vs_leader": comparison})
    return rows


def make_race(entries: Mapping[str, RaceEntry], seeds: list[int], settings: RaceSettings) -> Race:
    return Race([e.candidate for e in entries.values()], list(seeds), settings)
