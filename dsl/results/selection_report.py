"""A selection (`dsl-sweep best`'s `selection.json`) as text: the race table, the verdict and the final-exam table.

`dsl-sweep best` prints these as it ends and `dsl-sweep report selection.json` renders the same from the committed
file, so a figure in the docs is never typed by hand. Every table names its protocols (the sweep's, the race's and
the exam's), seeds, data and the machines the chains ran on.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsl.results.stats import Interval
from dsl.runtime.environment import describe_machine

SELECTION_FORMAT = 1


def _seeds(seeds: list[int]) -> str:
    if not seeds:
        return "–"
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _leak(protocol: Mapping[str, Any]) -> str:
    return f"`{protocol['name']}` ({'leak-free' if protocol.get('leak_free') else 'transductive'})"


def race_table(sel: Mapping[str, Any]) -> str:
    race = sel["race"]
    sweep_pr = sel["sweep_protocol"]["name"]
    lines = [f"| candidate | sweep UA % (`{sweep_pr}`, self-graded) | seeds run | race UA % (`{sel['protocol']['name']}`, "
             "mean) | leader minus candidate, points [interval] | p (level) | outcome |",
             "|---|---|---|---|---|---|---|"]
    for r in race["rows"]:
        c = r.get("vs_leader")
        if r["leader"]:
            diff, p = "leader", ""
        elif c is None:
            diff, p = "–", ""
        else:
            diff = f"{c['diff']:+.2f} [{c['low']:.2f}, {c['high']:.2f}]"
            p = f"{c['p']:.3g} ({c['level']:.3g}{', uncorrected' if c.get('uncorrected') else ''})"
        lines.append(f"| {r['name']} (#{r['trial_id'] or r['key']}) | {100 * r['sweep_score']:.1f} | "
                     f"{len(r['seeds'])} ({_seeds(r['seeds'])}) | {r['mean']:.1f} | {diff} | {p} | {r['status']} |")
    return "\n".join(lines)


def verdict_text(sel: Mapping[str, Any]) -> str:
    race = sel["race"]
    v = race["verdict"]
    return (f"**Verdict:** {v['text']}.\n\n"
            f"The race: {race['settings_text']}. It ran {race['chains']} chains "
            f"({race.get('chains_run', race['chains'])} computed, {race.get('chains_read_back', 0)} read back from disk)"
            f"{'; it ended: ' + race['finished'] if race.get('finished') else ''}. Scores: {sel['objective']} "
            f"under `{sel['protocol']['name']}` on the {sel['data']['search_utterances']} utterances the search saw "
            f"({sel['data']['corpus']}), in percent.")


def exam_table(sel: Mapping[str, Any]) -> str:
    ex = sel.get("exam")
    if not ex:
        return "No final exam: the sweep has no `holdout:`, so no data is left that the selection has not seen."
    w, ref = ex["winner"], ex["reference"]
    h = sel["data"]["holdout"]
    iv = Interval.from_dict
    head = ("| configuration | role | holdout UA % | holdout WA % | UA gain vs reference, points (paired) | "
            f"ranking-stage UA % (race, `{ex['protocol']}`) | optimism, points |")
    lines = [head, "|---|---|---|---|---|---|---|",
             f"| {w['name']} | winner | {iv(w['ua']).format()} | {iv(w['wa']).format()} | {iv(ex['gain_ua']).format()} "
             f"| {iv(w['ranking_ua']).format() if w.get('ranking_ua') else '–'} | "
             f"{'–' if ex['optimism'] is None else format(100 * ex['optimism'], '+.1f')} |"]
    if not ref.get("same_as_winner"):
        lines.append(f"| {ref['name']} | reference | {iv(ref['ua']).format()} | {iv(ref['wa']).format()} | – | – | – |")
    else:
        lines.append(f"| {ref['name']} | reference (the winner itself) | – | – | 0 | – | – |")
    caption = (f"Final exam under `{ex['protocol']}` (leak-free): trained on the {ex['n_train']} utterances the search "
               f"saw, with `{ex['protocol']}`'s inner structure, scored once on the holdout ({h['how']}: "
               f"{ex['n_holdout']} utterances{': ' + h['classes'] if h.get('classes') else ''}), seeds "
               f"{_seeds(ex['seeds'])} (the sweep ran on seed {sel.get('sweep_seed', 0)}), mean ± half-width of the 95 % "
               f"t-interval. The gain is paired by seed. The "
               f"optimism is the winner's ranking-stage mean (its race seeds, on the search data) minus its holdout "
               f"mean, both under `{ex['protocol']}`; the sweep itself ranked under {_leak(sel['sweep_protocol'])}.")
    return caption + "\n\n" + "\n".join(lines)


def markdown(sel: Mapping[str, Any]) -> str:
    """Race table, verdict, final exam, machines and the command, for one selection."""
    parts = [f"Sweep `{sel['sweep']}`: the top {len(sel['race']['rows'])} distinct configurations of the sweep "
             f"(ranked by {sel['objective']} under {_leak(sel['sweep_protocol'])}, seed {sel['sweep_seed']}) raced "
             f"on fresh seeds under {_leak(sel['protocol'])}.",
             race_table(sel), verdict_text(sel), exam_table(sel)]
    if sel.get("seconds"):
        ex = sel.get("exam") or {}
        exam_chains = int(ex.get("chains_run", 0)) + int(ex.get("chains_read_back", 0))
        parts.append(f"Wall time of `dsl-sweep best`: {sel['seconds'] / 60:.0f} min for {sel['race']['chains']} race "
                     f"chains" + (f" and {exam_chains} exam chains" if exam_chains else "") + ".")
    envs = sel.get("environments") or []
    if envs:
        parts.append("Machines: " + "; ".join(f"`{e.get('fingerprint', '?')}`: {describe_machine(e)}" for e in envs) + ".")
    if sel.get("command"):
        parts.append(f"Command: `{sel['command']}`.")
    return "\n\n".join(parts)


def is_selection(d: Any) -> bool:
    return isinstance(d, Mapping) and d.get("kind") == "selection" and "race" in d


# --- the selection benchmark (`python -m bench.selection compare --json`) -------------------------------------------
BENCHMARK_KIND = "selection-benchmark"
BENCHMARK_FORMAT = 1


def is_selection_benchmark(d: Any) -> bool:
    return isinstance(d, dict) and d.get("kind") == BENCHMARK_KIND


def benchmark_markdown(d: Mapping[str, Any]) -> str:
    """The strategies of the selection benchmark side by side: chains after the sweep, P(within 1 point of the true
    best), mean and 90th-percentile regret; with the grid, seeds, truth, data and machine it was measured on."""
    seeds = list(d["seeds"])
    means = sorted(zip(d["configs"], d["mean_ua"]), key=lambda x: -x[1])
    lines = [f"Selection benchmark: {len(d['configs'])} configurations x {len(seeds)} seeds ({_seeds(seeds)}) on "
             f"{d['data']}, `{d['protocol']}` (leak-free), {d['recipe']}. {d['resamples']} resamplings of the seed "
             f"order: the first seed is the sweep, the next ones are the fresh seeds a strategy may use, and the last "
             f"{d['truth_seeds']} are the truth (each configuration's mean over them), seen by no strategy. Regret: the "
             "true best's UA minus the pick's, in points.", "",
             "| strategy | chains after the sweep | P(within 1 point of the true best) | mean regret | regret, 90th "
             "percentile |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['strategy']} | {r['chains']:.1f} | {r['p_within_1']:.2f} | {r['regret']:.2f} | "
                     f"{r['regret_p90']:.2f} |")
    lines += ["", f"**Goal** (a race reaches top3x5's mean regret with at most half its chains): {d['goal']}.", "",
              "Mean UA over all seeds, best first: " + ", ".join(f"{c} {u:.1f}"
                                                                for c, u in means[:6]) + ", ...", "",
              "Machines: " + "; ".join(d["machines"]) + ".", "", f"Command: `{d['command']}`."]
    return "\n".join(lines)
