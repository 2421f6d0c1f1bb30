"""Listener agreement: does the chain doubt the utterances people doubt?

EmoDB's `erkennung.txt` (ISO-8859-1, tab-separated: number, file, `erkannt` = share of listeners who
recognised the intended emotion, `natuerlich` = share who judged it natural; decimal commas) gives each
utterance's recognition rate. Per iteration we report Spearman's rank correlation between that rate and
(a) the model's confidence in the utterance's label (the forest's probability of it, out of sample) and
(b) the mean entropy of the DSL targets the utterance's segments were trained on. Agreement shows as
rho > 0 for (a) and rho < 0 for (b).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsl.config import ConfigError


def load_recognition(path: str | Path) -> dict[str, float]:
    """File name -> recognition rate in [0, 1]; a malformed line is named with its number."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("latin-1")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the listener test file: {exc}") from exc
    rates: dict[str, float] = {}
    lines = text.splitlines()
    if not lines or "erkannt" not in lines[0]:
        raise ConfigError(f"{p}: line 1 is not the header 'Nr. Satz erkannt natuerlich'")
    for i, line in enumerate(lines[1:], start=2):
        cells = [c.replace("\xa0", " ").strip() for c in line.split("\t")]
        if not any(cells):
            continue
        try:
            name, rate = cells[1], float(cells[2].replace(",", "."))
        except (IndexError, ValueError):
            raise ConfigError(f"{p}: line {i}: expected 'number<TAB>file<TAB>rate<TAB>rate', got {line!r}") from None
        if not 0.0 <= rate <= 100.0:
            raise ConfigError(f"{p}: line {i}: recognition rate {rate} is not a percentage")
        rates[name] = rate / 100.0
    return rates


def _spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:  # no rank order on a constant side
        return None, None
    res = spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    return (None, None) if math.isnan(rho) else (rho, p)


def agreement(entry: Mapping[str, Any], rates: Mapping[str, float]) -> dict[str, Any]:
    """Spearman correlations of one iteration's per-utterance records with the listeners' recognition rates."""
    conf, rate_c, ent, rate_e = [], [], [], []
    for u in entry.get("utterances") or []:
        r = rates.get(u["file"])
        if r is None:
            continue
        conf.append(float(u["proba"][u["label"]]))
        rate_c.append(r)
        if u.get("target_entropy") is not None:
            ent.append(float(u["target_entropy"]))
            rate_e.append(r)
    rho_c, p_c = _spearman(rate_c, conf)
    rho_e, p_e = _spearman(rate_e, ent)
    return {"iteration": int(entry["iteration"]), "n": len(conf), "rho_confidence": rho_c, "p_confidence": p_c,
            "n_entropy": len(ent), "rho_target_entropy": rho_e, "p_target_entropy": p_e}


def runs_of(path: str | Path) -> list[dict]:
    """The single runs behind a result path: a run JSON, a study's `.seeds/` folder, or a study JSON (its
    `<name>.seeds/` folder beside it)."""
    import json

    p = Path(path)
    if p.is_file() and p.with_suffix(".seeds").is_dir():
        p = p.with_suffix(".seeds")
    files = sorted(p.glob("seed*.json")) if p.is_dir() else [p]
    runs = []
    for f in files:
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{f}: cannot read a result JSON: {exc}") from exc
        if "iterations" not in d or not d["iterations"] or "utterances" not in d["iterations"][0]:
            raise ConfigError(f"{f}: not a run result with per-utterance records (format 2)")
        runs.append(d)
    if not runs:
        raise ConfigError(f"{p}: no seed*.json results in it")
    return runs


def default_listener_file(run: Mapping[str, Any]) -> Path:
    """`erkennung.txt` in the run's EmoDB data folder or the folder above it."""
    data = Path(run["config"].get("data", "."))
    for cand in (data / "erkennung.txt", data.parent / "erkennung.txt"):
        if cand.is_file():
            return cand
    raise ConfigError(f"no erkennung.txt in {data} or {data.parent}: give --listeners FILE")


def agreement_table(paths: Sequence[str | Path], rates: Mapping[str, float]) -> str:
    """Markdown: per result and iteration, rho(rate, confidence) and rho(rate, target entropy); over a
    study's seeds, the mean ± half-width of the 95 % t-interval of the per-seed rho."""
    from dsl.results.stats import mean_interval

    rows = ["| result | protocol (leak_free) | seeds | iteration | n | ρ(rate, confidence) | "
            "ρ(rate, target entropy) |", "|---|---|---|---|---|---|---|"]
    for path in paths:
        runs = runs_of(path)
        pr = runs[0].get("protocol") or {"name": runs[0]["config"]["protocol"]["name"], "leak_free": None}
        seeds = ", ".join(str(r["config"].get("seed", "?")) for r in runs)
        for it in range(min(len(r["iterations"]) for r in runs)):
            per = [agreement(r["iterations"][it], rates) for r in runs]

            def cell(key: str, per: list[dict] = per) -> str:
                vals = [a[key] for a in per if a[key] is not None]
                return "n/a" if not vals else mean_interval(vals).format(scale=1.0, digits=2)

            rows.append(f"| `{path}` | {pr['name']} ({str(pr.get('leak_free')).lower()}) | {seeds} | {it} | "
                        f"{per[0]['n']} | {cell('rho_confidence')} | {cell('rho_target_entropy')} |")
    return "\n".join(rows)


def agreement_report(paths: Sequence[str], listeners: str | None = None, out: str | None = None,
                     into: str | None = None, block: str = "", command: str = "") -> str:
    """`dsl-sweep agreement`: the listener-agreement Markdown of result files, also written to `out` and spliced
    into `into`; returns the Markdown."""
    from dsl.results.report import report_outputs, splice
    from dsl.runtime.paths import require_writable

    require_writable(report_outputs(out=out, into=into))
    first = runs_of(paths[0])[0]
    source = Path(listeners) if listeners else default_listener_file(first)
    rates = load_recognition(source)
    text = (f"Listener agreement (EmoDB listening test, `{source.name}`: share of listeners who recognised the "
            "intended emotion). Spearman's ρ per iteration between that rate and the model's out-of-sample "
            "confidence in the utterance's label (> 0: it doubts what people doubt) and the mean entropy of "
            "the DSL targets the utterance was trained on (< 0: its targets soften where people disagree; n/a "
            "for results written before targets were recorded per utterance). Mean ± 95 % interval over seeds.\n\n"
            + agreement_table(paths, rates) + "\n")
    from dsl.results.report import machines

    ms = machines([r for p in paths for r in runs_of(p)])
    if ms:
        text += "\nMachines: " + "; ".join(ms) + ".\n"
    if out:
        Path(out).write_text(text)
    if into:
        splice(into, text, command, block)
    return text
