"""Racing: give the candidates seeds in rounds and drop those clearly worse than the leader, instead of a fixed
top-k x n re-evaluation.

Why: the effects a DSL sweep searches for are about the size of one seed's noise, so a fixed number of seeds per
candidate either wastes chains on candidates that are clearly worse, or crowns a winner it cannot tell apart. A race
spends its seeds where the question is still open and says in words what it found.

The procedure (a race in the spirit of F-race, Birattari et al. 2002, with paired t-tests and Holm's correction):

- Every survivor of a round gets the same next `seeds_per_round` seeds, so all comparisons are *paired* over the seeds
  the survivors share (every seed every survivor has run).
- A *look* happens after each round once the survivors share at least `min_seeds` seeds. The leader is the survivor
  with the highest mean over them; every other survivor is compared with it by a two-sided paired t-test, and the
  candidates whose difference is significant are dropped.
- The error is controlled over the whole race, not per look: the race spends its `alpha` evenly over its planned looks
  (Bonferroni over looks), and within a look Holm's step-down method runs over the family of *all* pairs of survivors,
  since the leader is chosen after seeing the scores. So with candidates that do not differ, the chance that the race
  declares any difference is at most `alpha` (tests/test_racing.py measures it).
- The race ends when one candidate is left, when the next round would exceed `budget` chains, or when the seeds run out.
- The verdict: one survivor: "X beats Y by d [lo, hi]" (Y the last one dropped, d the mean paired difference over
  their shared seeds, [lo, hi] its interval at the level the test used, so it excludes 0). Several: "no significant
  difference among X, Y, Z; picking the cheapest (fewest iterations, then fewest trainings)"; ties in cost go to the
  higher mean. With `tie_break="mean"` it picks the highest mean over the shared seeds instead (the benchmark in
  `bench/selection.py` measures what each choice costs in regret).

Scores may be told in any order (chains of one round run concurrently) and the whole state round-trips through
`to_dict`/`from_dict`, so an interrupted selection resumes where it stopped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from dsl.formats import check_format

RACE_FORMAT = 1
CORRECTIONS = ("race", "look")
TIE_BREAKS = ("cheapest", "mean")  # RaceSettings.tie_break: what a race with several survivors picks


@dataclass(frozen=True)
class Candidate:
    """One configuration in the race; `iterations` and `trainings` (per chain) are its cost, used to break a tie."""

    key: str
    name: str
    iterations: int = 0
    trainings: int = 0


@dataclass(frozen=True)
class RaceSettings:
    seeds_per_round: int = 1  # seeds each survivor gets per round
    min_seeds: int = 3  # shared seeds before any test may drop a candidate
    alpha: float = 0.05  # family-wise error rate of the whole race (spent evenly over its planned looks)
    budget: int | None = None  # chains at most, over the whole race (None: until one is left or the seeds run out)
    # "race": alpha is the error of the whole race (spent over its looks, Holm over all pairs of survivors);
    # "look": alpha per look, Holm over the leader's comparisons only (classic racing practice: drops sooner, and
    # declares differences that are not there more often than alpha)
    correction: str = "race"
    # several survivors at the end: "cheapest" (fewest iterations, then trainings; ties to the higher mean) or "mean"
    # (the highest mean over the shared seeds, whatever it costs)
    tie_break: str = "cheapest"

    def __post_init__(self) -> None:
        if self.seeds_per_round < 1 or self.min_seeds < 2 or not 0.0 < self.alpha < 1.0:
            raise ValueError(f"race settings: seeds_per_round >= 1, min_seeds >= 2, 0 < alpha < 1 required; got {self}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"race settings: correction {self.correction!r} is unknown; allowed: {', '.join(CORRECTIONS)}")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"race settings: tie_break {self.tie_break!r} is unknown; allowed: {', '.join(TIE_BREAKS)}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"race settings: budget must be >= 1 chain; got {self.budget}")


@dataclass(frozen=True)
class Comparison:
    """A candidate against the leader over their shared seeds: mean paired difference (leader minus candidate), its
    two-sided p-value and its interval at the level the test was held to, and whether it was dropped."""

    key: str
    leader: str
    seeds: tuple[int, ...]
    diff: float
    low: float
    high: float
    p: float
    level: float  # the two-sided level this test was held to (Holm's threshold); [low, high] is its interval
    dropped: bool
    round: int


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.05) -> tuple[float, float, float, float]:
    """Mean of a - b, its two-sided (1 - level) t-interval and the two-sided p-value of H0: mean(a - b) = 0."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n, mean = len(d), float(np.mean(d))
    sd = float(np.std(d, ddof=1)) if n > 1 else float("nan")
    if n < 2 or not np.isfinite(sd):
        return mean, float("nan"), float("nan"), 1.0
    if sd == 0.0:  # identical differences: no noise at all
        return mean, mean, mean, 0.0 if mean != 0 else 1.0
    se = sd / np.sqrt(n)
    half = float(sps.t.ppf(1.0 - level / 2.0, n - 1) * se)
    p = float(2.0 * sps.t.sf(abs(mean) / se, n - 1))
    return mean, mean - half, mean + half, p


def holm_levels(p_values: Sequence[float], alpha: float, family: int | None = None) -> tuple[list[bool], list[float]]:
    """Holm's step-down test at family-wise level `alpha`: per hypothesis, rejected or not and the level it was held to
    (`alpha / (family - rank)`). `family` (default: the number of p-values) may be larger, when the p-values given
    are a chosen part of a larger family (the leader's comparisons among all pairs)."""
    m = len(p_values)
    family = max(family or m, m)
    order = np.argsort(p_values, kind="stable")
    reject, levels = [False] * m, [alpha / family] * m
    going = True
    for rank, i in enumerate(order):
        levels[int(i)] = alpha / (family - rank)
        going = going and p_values[i] <= levels[int(i)]
        reject[int(i)] = going
    return reject, levels


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections at family-wise level `alpha`, in the order given."""
    return holm_levels(p_values, alpha)[0]


@dataclass
class Verdict:
    winner: str
    winner_name: str
    text: str
    survivors: list[str]
    dropped: list[dict]
    chains: int
    means: dict[str, float]
    seeds: dict[str, list[int]]
    significant: bool  # one candidate is left: it beat the others

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Race:
    """The state of one race; `requests` says which chains to run next, `tell` takes their scores."""

    candidates: list[Candidate]
    seeds: list[int]
    settings: RaceSettings = field(default_factory=RaceSettings)
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    alive: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    rounds: int = 0  # rounds whose scores are all in
    assigned: int = 0  # seeds handed out so far (the survivors' shared prefix of `seeds`)
    finished: str = ""  # why the race ended ("" while it runs)

    def __post_init__(self) -> None:
        keys = [c.key for c in self.candidates]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"a race needs distinct candidate keys; got {keys}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"a race needs distinct seeds; got {self.seeds}")
        for k in keys:
            self.scores.setdefault(k, {})
        if not self.alive:
            self.alive = list(keys)
        if len(self.alive) == 1 and not self.finished:
            self.finished = "one candidate"

    # -- running ------------------------------------------------------------------------------------------------
    @property
    def by_key(self) -> dict[str, Candidate]:
        return {c.key: c for c in self.candidates}

    @property
    def chains(self) -> int:
        """Chains whose scores are in."""
        return sum(len(s) for s in self.scores.values())

    def round_seeds(self) -> list[int]:
        """The seeds of the round in progress (handed out, not necessarily all told)."""
        start = max(0, self.assigned - self.settings.seeds_per_round)
        return self.seeds[start:self.assigned]

    def pending(self) -> list[tuple[str, int]]:
        """Chains handed out whose scores are not in yet."""
        return [(k, s) for k in self.alive for s in self.seeds[:self.assigned] if s not in self.scores[k]]

    def requests(self) -> list[tuple[str, int]]:
        """The chains to run now: the round in progress's missing ones, or the next round's; [] when the race is over."""
        if (waiting := self.pending()):
            return waiting
        if self.finished:
            return []
        self._close_round()
        if self.finished:
            return []
        nxt = self.seeds[self.assigned:self.assigned + self.settings.seeds_per_round]
        cost = len(nxt) * len(self.alive)
        if not nxt:
            self.finished = "seeds exhausted"
            return []
        if self.settings.budget is not None and self.chains + cost > self.settings.budget:
            self.finished = "budget spent"
            return []
        self.assigned += len(nxt)
        return [(k, s) for k in self.alive for s in nxt]

    def tell(self, key: str, seed: int, score: float) -> None:
        if key not in self.scores:
            raise KeyError(f"unknown candidate {key!r}")
        if seed not in self.seeds:
            raise KeyError(f"seed {seed} is not one of the race's seeds")
        self.scores[key][int(seed)] = float(score)

    def run(self, score_of) -> Verdict:
        """Run the race to its end with `score_of(key, seed) -> score` (offline use: a table, a benchmark)."""
        while (todo := self.requests()):
            for k, s in todo:
                self.tell(k, s, score_of(k, s))
        return self.verdict()

    def _shared(self, keys: Sequence[str]) -> list[int]:
        return [s for s in self.seeds if all(s in self.scores[k] for k in keys)]

    def _close_round(self) -> None:
        """All scores of the round are in: test the survivors against the leader and drop the clearly worse."""
        if self.assigned == 0 or self.rounds * self.settings.seeds_per_round >= self.assigned:
            return  # nothing handed out yet, or this round was closed already
        self.rounds += 1
        shared = self._shared(self.alive)
        if len(self.alive) < 2 or len(shared) < self.settings.min_seeds:
            return
        means = {k: float(np.mean([self.scores[k][s] for s in shared])) for k in self.alive}
        leader = max(self.alive, key=lambda k: (means[k], -self.alive.index(k)))
        others = [k for k in self.alive if k != leader]
        lead = [self.scores[leader][s] for s in shared]
        tests = [paired_difference(lead, [self.scores[k][s] for s in shared]) for k in others]
        m = len(self.alive)
        if self.settings.correction == "race":
            rejected, levels = holm_levels([t[3] for t in tests], self.settings.alpha / self.planned_looks(),
                                           family=m * (m - 1) // 2)
        else:
            rejected, levels = holm_levels([t[3] for t in tests], self.settings.alpha)
        for k, (d, _, _, p), drop, level in zip(others, tests, rejected, levels):
            d, lo, hi, _ = paired_difference(lead, [self.scores[k][s] for s in shared], level)
            self.comparisons.append(Comparison(k, leader, tuple(shared), d, lo, hi, p, level, drop and d > 0,
                                               self.rounds))
        self.alive = [k for k in self.alive if k == leader or not (rejected[others.index(k)])]
        if len(self.alive) == 1:
            self.finished = "one candidate"

    def planned_looks(self) -> int:
        """The most looks this race can take: one per round from the round that reaches `min_seeds` shared seeds on,
        as many rounds as the seeds allow and, under a budget, as the budget allows if the survivors fell to two at the
        first look (an upper bound, so spending `alpha` over it is safe)."""
        spr, n, budget = self.settings.seeds_per_round, len(self.candidates), self.settings.budget
        first = -(-self.settings.min_seeds // spr)  # the round whose seeds reach min_seeds
        rounds = -(-len(self.seeds) // spr)
        if budget is not None:
            used, fit = 0, 0
            while fit < rounds:
                cost = (n if fit < first else min(n, 2)) * spr
                if used + cost > budget:
                    break
                used, fit = used + cost, fit + 1
            rounds = fit
        return max(1, rounds - first + 1)

    # -- the outcome ----------------------------------------------------------------------------------------------
    def correction_words(self) -> str:
        if self.settings.correction == "race":
            return f"Holm over all pairs, alpha {self.settings.alpha} spent over {self.planned_looks()} looks"
        return f"Holm over the leader's comparisons at alpha {self.settings.alpha} per look, not corrected for looks"

    def means(self) -> dict[str, float]:
        return {k: float(np.mean(list(v.values()))) if v else float("nan") for k, v in self.scores.items()}

    def verdict(self) -> Verdict:
        """The winner and the sentence that says why (see the module docstring)."""
        if self.pending():
            raise RuntimeError(f"the race still waits for {len(self.pending())} chain(s)")
        self._close_round()
        by, means = self.by_key, self.means()
        shared = self._shared(self.alive)
        shared_mean = {k: float(np.mean([self.scores[k][s] for s in shared])) if shared else means[k]
                       for k in self.alive}
        dropped = [asdict(c) for c in self.comparisons if c.dropped]
        if len(self.alive) == 1:
            winner = self.alive[0]
            last = [c for c in self.comparisons if c.dropped][-1] if dropped else None
            if last is None:
                text = f"{by[winner].name} is the only candidate"
            else:
                text = (f"{by[winner].name} beats {by[last.key].name} by {last.diff:.2f} [{last.low:.2f}, {last.high:.2f}] "
                        f"(paired over seeds {', '.join(map(str, last.seeds))}; two-sided paired t-test at level "
                        f"{last.level:.2g}: {self.correction_words()})")
            significant = last is not None
        else:
            names = ", ".join(by[k].name for k in self.alive)
            if self.settings.tie_break == "mean":
                winner = max(self.alive, key=lambda k: shared_mean[k])
                why = "picking the highest mean"
            else:
                winner = min(self.alive, key=lambda k: (by[k].iterations, by[k].trainings, -shared_mean[k]))
                why = "picking the cheapest (fewest iterations, then fewest trainings)"
            text = (f"no significant difference among {names} (paired over seeds {', '.join(map(str, shared))}); "
                    f"{why}: {by[winner].name}")
            significant = False
        if self.finished and len(self.alive) > 1:
            text += f" [race ended: {self.finished} after {self.chains} chains]"
        return Verdict(winner, by[winner].name, text, list(self.alive), dropped, self.chains, means,
                       {k: sorted(v) for k, v in self.scores.items()}, significant)

    # -- persistence --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": RACE_FORMAT, "candidates": [asdict(c) for c in self.candidates], "seeds": list(self.seeds),
                "settings": asdict(self.settings),
                "scores": {k: {str(s): v for s, v in d.items()} for k, d in self.scores.items()},
                "alive": list(self.alive), "comparisons": [asdict(c) for c in self.comparisons],
                "rounds": self.rounds, "assigned": self.assigned, "finished": self.finished}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "race state") -> Race:
        check_format(path, int(d.get("format", 0)), RACE_FORMAT, "race state", "resume this race")
        return cls([Candidate(**c) for c in d["candidates"]], list(d["seeds"]), RaceSettings(**d["settings"]),
                   {k: {int(s): float(v) for s, v in sc.items()} for k, sc in d["scores"].items()}, list(d["alive"]),
                   [Comparison(**{**c, "seeds": tuple(c["seeds"])}) for c in d["comparisons"]], int(d["rounds"]),
                   int(d["assigned"]), str(d["finished"]))
