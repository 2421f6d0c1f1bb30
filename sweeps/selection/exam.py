"""The final exam: the race's winner and a reference configuration, trained on the search part of the corpus and
scored once on the holdout, over the same seeds, paired.

Both run under the race's protocol (`select.protocol`) with `protocol.holdout`: one scope that trains on every
non-holdout utterance with the protocol's own inner structure and scores the holdout only
(`dsl.protocols.plans.holdout_plan`). So the *optimism*, the winner's ranking-stage score (its race mean on the
search data) minus its holdout score, compares two figures of one protocol, and the *paired gain* (winner minus
reference, seed by seed) says whether what the search found beats the plain recipe on data it never saw. The
reference is the rule baseline at iteration 0 of the sweep's base unless `select.reference` names another.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dsl.config import ChainConfig, LabelSpec, from_dict
from dsl.results.naming import describe
from dsl.results.stats import mean_interval, paired_gain
from sweeps.selection.candidates import objective_figures, objective_key
from sweeps.selection.chains import ChainRequest, ChainStore, run_requests

EXAM_STAGE = "exam"
REFERENCE_KEY = "reference"


def reference_config(base: ChainConfig, overrides: Mapping[str, Any]) -> ChainConfig:
    """The reference: the sweep's base with default label settings and `overrides` (default: baseline, iteration 0)."""
    plain = from_dict({**base.to_dict(), "labels": dataclasses.asdict(LabelSpec())})
    return plain.replace(**dict(overrides))


def exam_config(cfg: ChainConfig, protocol: str, holdout: str) -> ChainConfig:
    return cfg.replace(**{"protocol.name": protocol, "protocol.holdout": holdout, "seeds": []})


def exam_requests(winner_key: str, winner: ChainConfig, reference: ChainConfig, seeds: Sequence[int],
                  data: str = "full") -> list[ChainRequest]:
    """The winner's and the reference's chains, seed by seed (one set when they are the same configuration)."""
    out = []
    for s in seeds:
        out.append(ChainRequest(EXAM_STAGE, winner_key, describe(winner), s, winner.replace(seed=s), data))
        if not same_config(winner, reference):
            out.append(ChainRequest(EXAM_STAGE, REFERENCE_KEY, describe(reference), s, reference.replace(seed=s), data))
    return out


def same_config(a: ChainConfig, b: ChainConfig) -> bool:
    return a.replace(seed=0).to_dict() == b.replace(seed=0).to_dict()


def run_exam(requests: Sequence[ChainRequest], store: ChainStore, runner: Any, tracker: Any,
             score: Callable[[Mapping[str, Any]], float], log: Callable[[str], None] = print,
             chains: Any = None) -> dict:
    """Run (or read back) the exam's chains; (key, seed) -> result. `chains` (a `ChainLog`) counts them."""
    def done(req: ChainRequest, result: Mapping[str, Any], from_disk: bool) -> None:
        if chains is not None:
            chains.note(result, from_disk)
        took = "read back from disk" if from_disk else f"{float(result.get('seconds', 0.0)):.0f} s"
        log(f"  exam {req.name} seed {req.seed}: holdout UA {score(result):.2f} % ({took})")

    return run_requests(requests, store, runner, tracker, score, done)


def exam_summary(results: Mapping[tuple[str, int], Mapping[str, Any]], winner_key: str, seeds: Sequence[int],
                 objective: str, ranking_scores: Sequence[float], winner_name: str, reference_name: str,
                 reference_overrides: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """The exam's figures (fractions): holdout UA/WA with 95 % intervals for both, the paired gain of the winner
    over the reference, and the optimism (ranking-stage mean minus holdout mean, both under `protocol`)."""
    ref_key = REFERENCE_KEY if any(k == REFERENCE_KEY for k, _ in results) else winner_key

    def figures(k: str, which: int) -> list[float]:  # which: 0 the objective's UA, 1 its WA
        return [float(objective_figures(results[(k, s)]["iterations"][-1], objective)[which]) for s in seeds]

    win_ua, win_wa = figures(winner_key, 0), figures(winner_key, 1)
    ref_ua, ref_wa = figures(ref_key, 0), figures(ref_key, 1)
    # a lone candidate wins without a race: no ranking-stage score, so no optimism
    ranking = mean_interval([v / 100.0 for v in ranking_scores]) if ranking_scores else None
    holdout_ua = mean_interval(win_ua)
    first = results[(winner_key, seeds[0])]
    return {"protocol": protocol, "seeds": list(seeds), "objective_key": objective_key(objective),
            "n_holdout": sum(1 for u in first["iterations"][-1]["utterances"] if u["fold"] >= 0),
            "n_train": sum(1 for u in first["iterations"][-1]["utterances"] if u["fold"] < 0),
            "winner": {"key": winner_key, "name": winner_name, "ua": holdout_ua.to_dict(),
                       "wa": mean_interval(win_wa).to_dict(), "ranking_ua": ranking.to_dict() if ranking else None},
            "reference": {"name": reference_name, "overrides": dict(reference_overrides),
                          "same_as_winner": ref_key == winner_key,
                          "ua": mean_interval(ref_ua).to_dict(), "wa": mean_interval(ref_wa).to_dict()},
            "gain_ua": paired_gain(win_ua, ref_ua).to_dict(), "gain_wa": paired_gain(win_wa, ref_wa).to_dict(),
            "optimism": ranking.mean - holdout_ua.mean if ranking else None}
