"""Robustness tables of `dsl-sweep report`: replicate studies scored under test conditions (`eval.noise`,
`eval.adversarial`, `dsl.robustness.conditions`), with the paired drop from clean speech.

Two tables. Per condition: one column per method (a study's iteration), each cell the UA under the condition and
its drop from the same method's clean UA, paired by seed. Per group of conditions (a noise type over its SNRs, an
attack over its eps): each method's mean drop and, against the baseline study given with `--paired-with`, the
difference of the drops paired by seed (positive: the method degrades less than the baseline).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsl.results.stats import Interval, mean_interval
from dsl.results.study import outer_of

Column = tuple[str, Mapping[str, Any], Mapping[str, Any]]  # (label, study, iteration row)


def has_conditions(study: Mapping[str, Any]) -> bool:
    return any(row.get("conditions") for row in study.get("iterations", []))


def condition_label(name: str) -> str:
    """`white_10dB` -> `white 10 dB`, `fgsm_eps0.1` -> `FGSM ε=0.1`, `noise_mean` -> `mean over noise`."""
    if name in ("noise_mean", "attack_mean"):
        return f"**mean over {'noise' if name == 'noise_mean' else 'attacks'}**"
    kind, _, level = name.partition("_")
    if level.startswith("eps"):
        return f"{kind.upper()} ε={level[3:]}"
    return f"{kind} {level[:-2]} dB"


def group_of(name: str) -> str | None:
    """The group a condition is summarised in: its noise type or attack (None for the summaries)."""
    return None if name.endswith("_mean") else name.split("_")[0]


def _signature(study: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    parts = [tuple(study["seeds"]), tuple(row["ua"]["values"])]
    parts += [(n, tuple(c["ua"]["values"])) for n, c in sorted(row["conditions"].items()) if "ua" in c]
    return repr(parts)


def columns(studies: Sequence[Mapping[str, Any]], labels_of) -> list[Column]:
    """One column per study iteration scored under conditions; a column equal to one already shown (the same
    baseline reproduced by another study: same seeds and numbers) is shown once."""
    out: list[Column] = []
    seen: set[str] = set()
    for st in studies:
        for row in st["iterations"]:
            if not row.get("conditions"):
                continue
            sig = _signature(st, row)
            if sig not in seen:
                seen.add(sig)
                out.append((labels_of(st["config"], row), st, row))
    return out


def _cell(row: Mapping[str, Any], name: str) -> str:
    c = row["conditions"].get(name)
    if not c or "ua" not in c:
        return "–"
    drop = f" ({Interval.from_dict(c['drop_ua']).format()})" if "drop_ua" in c else ""
    return Interval.from_dict(c["ua"]).format() + drop


def per_seed(study: Mapping[str, Any], values: Sequence[float]) -> dict[int, float]:
    return dict(zip(study["seeds"], values))


def group_drop(study: Mapping[str, Any], row: Mapping[str, Any], group: str) -> dict[int, float]:
    """Per seed, the mean UA drop over the conditions of `group` (their drops from clean UA, paired by seed)."""
    members = [c for n, c in row["conditions"].items() if group_of(n) == group and "drop_ua" in c]
    if not members:
        return {}
    drops = np.mean([c["drop_ua"]["values"] for c in members], axis=0)
    return per_seed(study, drops.tolist())


def condition_table(cols: Sequence[Column]) -> str:
    names = list(dict.fromkeys(n for _, _, row in cols for n in row["conditions"]))
    names = [n for n in names if not n.endswith("_mean")] + [n for n in names if n.endswith("_mean")]
    head = "| condition | " + " | ".join(label for label, _, _ in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols),
             "| clean | " + " | ".join(Interval.from_dict(row["ua"]).format() for _, _, row in cols) + " |"]
    lines += ["| " + condition_label(n) + " | " + " | ".join(_cell(row, n) for _, _, row in cols) + " |" for n in names]
    return "\n".join(lines)


def group_table(cols: Sequence[Column], reference: Mapping[str, Any] | None, reference_path: str = "") -> str:
    groups = list(dict.fromkeys(g for _, _, row in cols for n in row["conditions"] if (g := group_of(n)) is not None))
    ref_row = reference["iterations"][0] if reference is not None and reference["iterations"][0].get("conditions") else None
    head = "| method | clean UA % | " + " | ".join(
        f"{g} drop" + (" | vs baseline" if ref_row is not None else "") for g in groups) + " |"
    lines = [head, "|---|---|" + ("---|---|" if ref_row is not None else "---|") * len(groups)]
    for label, st, row in cols:
        cells = [label, Interval.from_dict(row["ua"]).format()]
        for g in groups:
            mine = group_drop(st, row, g)
            cells.append(mean_interval(list(mine.values())).format() if mine else "–")
            if ref_row is not None:
                base = group_drop(reference, ref_row, g)
                shared = [s for s in mine if s in base]
                cells.append(mean_interval([mine[s] - base[s] for s in shared]).format() if len(shared) >= 2 else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting(study: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """Corpus, protocol, test corpus and outer partition: a baseline in another is never paired (other folds)."""
    cfg = study["config"]
    return cfg["corpus"], cfg["protocol"]["name"], cfg["protocol"].get("test_corpus", ""), outer_of(study)


def robustness_markdown(studies: Sequence[Mapping[str, Any]], labels_of,
                        references: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> str:
    """Both tables for the studies scored under test conditions, per setting (corpus, protocol, test corpus, outer
    partition); ""
    if none is."""
    scored = [st for st in studies if has_conditions(st)]
    settings = list(dict.fromkeys(_setting(st) for st in scored))
    return "\n\n".join(_setting_tables([st for st in scored if _setting(st) == key], labels_of,
                                       [(p, r) for p, r in references if has_conditions(r) and _setting(r) == key])
                       for key in settings)


def _setting_tables(scored: Sequence[Mapping[str, Any]], labels_of,
                    references: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    cols = columns(scored, labels_of)
    first = scored[0]
    ref_path, reference = references[0] if references else ("", None)
    pr, cfg = first["protocol"], first["config"]
    where = f"corpus `{cfg['corpus']}` at `{cfg['data']}`" + (
        f", tested on `{cfg['protocol']['test_corpus']}`" if cfg["protocol"].get("test_corpus") else "")
    intro = (f"**Robustness** ({where}, protocol `{pr['name']}` with {pr.get('folds')} outer folds, leak-free: "
             f"{'yes' if pr.get('leak_free') else 'no'}; seeds {','.join(map(str, first['seeds']))}). Each cell: UA % "
             "under the test condition, mean ± half-width of the 95 % t-interval over seeds, and in brackets its drop "
             "from the same method's clean UA, paired by seed (negative: worse than clean). Only test utterances are "
             "perturbed: noise is added to the waveform before the front end (SNR over the whole utterance; babble from "
             f"`{cfg.get('eval', {}).get('noise', {}).get('babble_data') or '–'}`), attacks (untargeted against the "
             "network's own clean prediction, no label read) perturb the *segment network's* normalised input within "
             "ε feature standard deviations; the forest is not attacked. The UA is each iteration's own (not the "
             "validation-selected one).")
    groups = ("Mean drop per noise type (over its SNRs) and per attack (over its ε), paired by seed" +
              (f"; *vs baseline*: the method's drop minus the drop of iteration 0 of `{ref_path}`, paired by seed "
               "(positive: degrades less than the baseline)." if reference is not None else "."))
    return "\n\n".join([intro, condition_table(cols), groups, group_table(cols, reference, ref_path)])
