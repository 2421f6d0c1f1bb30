"""The sweep's comparison of its trials, logged to the parent run under `comparison/`: UA per iteration of
every trial coloured by rule (`ua_per_iteration.png`), a sortable trial table (`trials.html`, `trials.csv`)
and the search's parameter importances (`param_importances.png`/`.json`, computed by the caller)."""
from __future__ import annotations

import csv
import html
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsl.results import plots

from .schema import RESULT_ARTIFACT, SWEEP_SECONDS_METRIC, UA, WA
from .sweep_runs import SweepRun

FOLDER = "comparison"
COST_KEYS = ("seconds", "fold_trainings", "cached_folds")  # per iteration; a trial's cost is their sum
PARAM_COLUMNS = ("labels.rule", "labels.alpha", "labels.schedule", "iterations", "backbone", "train.lr",
                 "segments.hop", "protocol.name", "seed")


@dataclass
class TrialSummary:
    run_id: str
    run_name: str
    trial_id: str
    status: str
    stopped_early: bool
    params: dict[str, str]
    ua: dict[int, float] = field(default_factory=dict)  # iteration -> UA
    wa: dict[int, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # seconds, fold_trainings, cached_folds: summed over iterations

    @property
    def last(self) -> int | None:
        return max(self.ua) if self.ua else None


def trial_summaries(sweep: SweepRun) -> list[TrialSummary]:
    out = [TrialSummary(t.run_id, t.run_name, t.trial_id, t.status, t.stopped_early, t.params, t.metrics[UA],
                        t.metrics[WA], {k: sum(t.metrics[k].values()) for k in COST_KEYS if t.metrics[k]})
           for t in sweep.trial_histories((UA, WA, *COST_KEYS))]
    return sorted(out, key=lambda t: -(t.ua[t.last] if t.last is not None else -1.0))


def table_rows(trials: Sequence[TrialSummary]) -> tuple[list[str], list[list[Any]]]:
    """Columns: trial, run, status, the parameters that vary (from PARAM_COLUMNS), iterations, final UA/WA,
    best UA over iterations (shown, not used to rank: the sweep ranks by the final one)."""
    varying = [k for k in PARAM_COLUMNS if len({t.params.get(k) for t in trials}) > 1] or ["labels.rule"]
    cols = ["trial", "run", "status", *varying, "iterations done", "UA % (last)", "WA % (last)", "UA % (max)"]
    rows = []
    for t in trials:
        last = t.last
        status = "stopped early" if t.stopped_early else t.status.lower()
        rows.append([t.trial_id, t.run_name, status, *[t.params.get(k, "") for k in varying],
                     0 if last is None else last + 1,
                     None if last is None else round(100 * t.ua[last], 2),
                     None if last is None or last not in t.wa else round(100 * t.wa[last], 2),
                     None if not t.ua else round(100 * max(t.ua.values()), 2)])
    return cols, rows


_SORT_JS = """<script>
document.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
  const tb = th.closest('table').tBodies[0], rows = [...tb.rows], asc = th.dataset.asc !== '1';
  const key = r => { const v = r.cells[i].dataset.v; const n = parseFloat(v); return isNaN(n) ? v : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  th.dataset.asc = asc ? '1' : '0'; rows.forEach(r => tb.appendChild(r));
}));
</script>"""


def table_html(cols: Sequence[str], rows: Sequence[Sequence[Any]], title: str) -> str:
    """A self-contained HTML table; click a column header to sort by it."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f'<td data-v="{html.escape("" if v is None else str(v))}">'
                                    f'{html.escape("-" if v is None else str(v))}</td>' for v in r) + "</tr>"
                   for r in rows)
    style = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{cursor:pointer;background:#eee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3>"
            f"<p>Click a column header to sort.</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"</table>{_SORT_JS}</body></html>")


def write_comparison(trials: Sequence[TrialSummary], out: Path, title: str,
                     importances: Mapping[str, float] | None = None, importance_note: str = "") -> list[Path]:
    """The comparison files in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    cols, rows = table_rows(trials)
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([["" if v is None else v for v in r] for r in rows])
    (out / "trials.html").write_text(table_html(cols, rows, title))
    files = [out / "trials.csv", out / "trials.html"]
    series = [(t.trial_id.split("_")[-1], t.params.get("labels.rule", "?"), sorted(t.ua), [t.ua[i] for i in sorted(t.ua)])
              for t in trials if t.ua]
    if series:
        files.append(plots.trials_plot(series, out / "ua_per_iteration.png", f"{title}: UA per iteration"))
    (out / "param_importances.json").write_text(json.dumps({"importances": dict(importances or {}),
                                                            "note": importance_note}, indent=1))
    files.append(out / "param_importances.json")
    if importances:
        files.append(plots.importance_plot(importances, out / "param_importances.png",
                                           f"{title}: parameter importances (Optuna)"))
    return files


def log_comparison(sweep: SweepRun, title: str, importances: Mapping[str, float] | None = None,
                   importance_note: str = "") -> list[str]:
    """Write the comparison of the parent's child runs and log it to the parent under `comparison/`."""
    trials = trial_summaries(sweep)
    with tempfile.TemporaryDirectory(prefix="dsl-cmp-") as tmp:
        files = write_comparison(trials, Path(tmp), title, importances, importance_note)
        sweep.log_files(files, FOLDER)
    return [f"{FOLDER}/{f.name}" for f in files]


EXPORT_FORMAT = 1


def sweep_export(sweep: SweepRun, name: str) -> dict[str, Any]:
    """The sweep's trials as plain data (`kind: sweep`) for `dsl.results.paper_tables`: flat params and UA/WA per
    iteration of every child run, the protocol, seeds and data, and the machine of its first result."""
    trials = trial_summaries(sweep)
    settings = sweep.settings()
    first = trials[0].params if trials else {}
    from dsl.protocols.plans import is_leak_free

    protocol = first.get("protocol.name", "")
    environment = None
    for t in trials:  # a trial that failed before its first iteration has no result.json
        result = sweep.trial_artifact_json(t.run_id, RESULT_ARTIFACT)
        if result is not None:
            environment = result.get("environment")
            break
    return {"format": EXPORT_FORMAT, "kind": "sweep", "name": name,
            "objective_seeds": settings.objective_seeds, "holdout": settings.holdout,
            "sweep_seconds": sweep.parent_metrics().get(SWEEP_SECONDS_METRIC),
            "protocol": {"name": protocol, "leak_free": is_leak_free(protocol) if protocol else None,
                         "folds": first.get("protocol.folds")},
            "seeds": sorted({int(t.params["seed"]) for t in trials if t.params.get("seed", "").isdigit()}),
            "data": f"{first.get('corpus', '?')} ({first.get('data', '?')})", "environment": environment,
            "trials": [{"trial_id": t.trial_id, "run_name": t.run_name, "status": t.status,
                        "stopped_early": t.stopped_early, "params": t.params,
                        "ua": {str(i): v for i, v in sorted(t.ua.items())},
                        "wa": {str(i): v for i, v in sorted(t.wa.items())}, "cost": t.cost} for t in trials]}
