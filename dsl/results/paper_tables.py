"""The paper's tables from a sweep's trials: accuracy per iteration by label rule (Table II), by backbone
(Table III) and by α of WDSL (Table IV).

Input is a sweep export (`kind: sweep`, written by `dsl-sweep report SWEEP --save-sweep FILE` from the
sweep's MLflow runs): per trial its flat params and UA/WA per iteration. A cell is the mean over the
trials in it; with two or more trials, ± the half-width of the 95 % t-interval over them (they may differ
in other parameters: the `n` column says how many). Each table names the sweep's protocol and whether it
is leak-free: a transductive sweep's numbers graded themselves.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsl.results.stats import mean_interval

TABLES = (("labels.rule", "Table II: accuracy per iteration by label rule", None),
          ("backbone", "Table III: accuracy per iteration by backbone", None),
          ("labels.alpha", "Table IV: accuracy per iteration of WDSL by α", ("labels.rule", "wdsl")))


def _iterations(trials: Sequence[Mapping[str, Any]]) -> list[int]:
    return sorted({int(i) for t in trials for i in t["ua"]})


def _cell(values: Sequence[float]) -> str:
    if not values:
        return ""
    return mean_interval(values).format()


def group_table(trials: Sequence[Mapping[str, Any]], key: str) -> tuple[list[str], list[list[str]]]:
    """Rows per value of `key`: n, then `UA (WA)` per iteration."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for t in trials:
        groups[str(t["params"].get(key, "?"))].append(t)
    its = _iterations(trials)
    cols = [key, "n", *[f"it {i}: UA (WA) %" for i in its]]
    rows = []
    for value in sorted(groups, key=lambda v: (_num(v) is None, _num(v) or 0.0, v)):
        g = groups[value]
        cells = []
        for i in its:
            ua = [t["ua"][str(i)] for t in g if str(i) in t["ua"]]
            wa = [t["wa"][str(i)] for t in g if str(i) in t["wa"]]
            cells.append(f"{_cell(ua)} ({_cell(wa)})" if ua else "")
        rows.append([value, str(len(g)), *cells])
    return cols, rows


def _num(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _markdown(cols: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def sweep_header(export: Mapping[str, Any]) -> str:
    pr = export.get("protocol") or {}
    leak = pr.get("leak_free")
    n_seeds = int(export.get("objective_seeds") or 1)
    first = (export.get("seeds") or [0])[0]
    seeds = (f"seeds {', '.join(str(first + i) for i in range(n_seeds))} per trial (objective: their mean)"
             if n_seeds > 1 else f"seed(s) {', '.join(map(str, export.get('seeds', []))) or '?'}")
    holdout = f" | holdout: {export['holdout']}" if export.get("holdout") not in (None, "none") else ""
    return (f"Sweep `{export['name']}`: {len(export['trials'])} trials | protocol {pr.get('name', '?')}, leak_free: "
            f"{'unknown' if leak is None else str(leak).lower()} | folds {pr.get('folds', '?')} | {seeds} | data "
            f"{export.get('data', '?')}{holdout}" + cost_line(export))


def cost_line(export: Mapping[str, Any]) -> str:
    """What the sweep cost: fold trainings needed, served by the step cache and computed; the trials' summed time
    and the sweep's wall time (exports written before these were logged have none)."""
    costs = [t.get("cost") or {} for t in export["trials"]]
    if not any("fold_trainings" in c for c in costs):
        return ""
    need = int(sum(c.get("fold_trainings", 0) for c in costs))
    served = int(sum(c.get("cached_folds", 0) for c in costs))
    wall = export.get("sweep_seconds")
    return (f"\n\nCost: {need} fold trainings, {served} served by the step cache, {need - served} computed; the "
            f"trials' iterations took {sum(c.get('seconds', 0.0) for c in costs) / 60:.1f} min in all"
            + (f", the sweep {wall / 60:.1f} min of wall time" if wall else "") + ".")


def sweep_tables(export: Mapping[str, Any]) -> str:
    """Markdown: the header, then each table whose key takes at least two values among the trials."""
    trials = [t for t in export["trials"] if t["ua"]]
    parts = [sweep_header(export), "Cells: mean over the trials with that value (± half-width of the 95 % "
             "t-interval over them when n ≥ 2); trials stopped early count at the iterations they reached."]
    for key, title, only in TABLES:
        sub = [t for t in trials if only is None or t["params"].get(only[0]) == only[1]]
        if len({t["params"].get(key) for t in sub}) < 2:
            continue
        cols, rows = group_table(sub, key)
        parts.append(f"**{title}**\n\n{_markdown(cols, rows)}")
    if len(parts) == 2:
        parts.append("(no rule, backbone or α takes two values in this sweep: no table to compare)")
    return "\n\n".join(parts) + "\n"


def sweep_figure(export: Mapping[str, Any], path: str | Path) -> Path:
    """UA per iteration, mean over the trials of each rule."""
    from dsl.results.plots import trials_plot

    trials = [t for t in export["trials"] if t["ua"]]
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for t in trials:
        groups[t["params"].get("labels.rule", "?")].append(t)
    series = []
    for rule, g in sorted(groups.items()):
        its = _iterations(g)
        means = [mean_interval([t["ua"][str(i)] for t in g if str(i) in t["ua"]]).mean for i in its]
        series.append((f"{rule} (n={len(g)})", rule, its, means))
    pr = export.get("protocol") or {}
    machine = (export.get("environment") or {}).get("fingerprint", "?")
    title = (f"{export['name']}: UA per iteration, mean over each rule's trials\n{pr.get('name', '?')} (leak_free: "
             f"{str(pr.get('leak_free')).lower()}), {pr.get('folds', '?')} folds, seed(s) "
             f"{','.join(map(str, export.get('seeds', [])))}, {export.get('data', '?').split(' ')[0]}"
             f"{' without the holdout (' + export['holdout'] + ')' if export.get('holdout') not in (None, 'none') else ''}"
             f", machine {machine}")
    return trials_plot(series, path, title)
