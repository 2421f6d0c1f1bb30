"""`dsl-sweep report RESULTS...`: result JSONs (single runs, replicate studies, sweep exports, selections) as Markdown
tables.

The results pages under `docs/` are produced by this from the JSON files under `docs/results/`, so no
figure is typed by hand. Every row names its protocol (and whether it is leak-free, and how its outer folds
were cut when not label-free), seeds and command; the machines the numbers came from are listed under the
table. Results written before `protocol.outer` existed were cut stratified by label, and say so.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsl.config import ConfigError
from dsl.formats import check_format
from dsl.results.paper_tables import sweep_figure, sweep_tables
from dsl.results.robustness_report import robustness_markdown
from dsl.results.selection_report import (
    BENCHMARK_FORMAT,
    BENCHMARK_KIND,
    SELECTION_FORMAT,
    benchmark_markdown,
    is_selection,
    is_selection_benchmark,
)
from dsl.results.selection_report import markdown as selection_markdown
from dsl.results.stats import Interval, mean_interval
from dsl.results.study import outer_of
from dsl.runtime.environment import describe_machine
from dsl.runtime.paths import WriteTarget, require_writable


def load_result(path: str | Path) -> dict:
    """A run or study JSON, or a study's `<name>.seeds/` folder (aggregated from the seeds on disk so far),
    with a clear error naming the file if it is not one."""
    p = Path(path)
    if p.is_dir():
        return study_from_disk(p)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot read a result JSON: {exc}") from exc
    if isinstance(d, dict) and d.get("kind") == "sweep" and "trials" in d:
        return d  # a sweep export (`dsl-sweep report SWEEP --save-sweep`): the paper's tables
    if is_selection(d):
        check_format(p, int(d.get("format", 0)), SELECTION_FORMAT, "selection", "render it")
        return d  # what `dsl-sweep best` decided: race table, verdict, final exam
    if is_selection_benchmark(d):
        check_format(p, int(d.get("format", 0)), BENCHMARK_FORMAT, "selection benchmark", "render it")
        return d  # `python -m bench.selection compare --json`: strategies side by side
    if not isinstance(d, dict) or "iterations" not in d or "config" not in d:
        raise ConfigError(f"{p}: not a result of `dsl-sweep run` (no config and iterations)")
    d.setdefault("kind", "run")
    if "protocol" not in d:  # written before format 2: the protocol is in the config, leak-freedom unknown
        d["protocol"] = {"name": d["config"]["protocol"]["name"], "leak_free": None}
    if d["kind"] == "study" and d["protocol"].get("leak_free") and not any(
            "selector_agreement" in row for row in d["iterations"]):
        d["iterations"] = _with_agreement(d, p)
    return d


def _with_agreement(study: dict, path: Path) -> list[dict]:
    """A study written before selector agreement existed, aggregated again from its seed files (which hold
    what it is computed from); as it is when they are not beside it."""
    from dsl.results.study import aggregate

    files = [path.parent / f for f in study.get("seed_files", [])]
    if not files or not all(f.is_file() for f in files):
        return study["iterations"]
    return aggregate([json.loads(f.read_text()) for f in files])


OUTER_NOTES = {"stratified": "outer folds stratified by label", "assignment": "outer folds from a file",
               "holdout": "scored on a holdout"}


def study_from_disk(folder: Path) -> dict:
    """A study of the seed results found in `folder` (a study still running, or one that was stopped)."""
    from dsl.config import from_dict
    from dsl.results.study import study_dict

    files = sorted(folder.glob("seed*.json"), key=lambda f: int(f.stem[4:]) if f.stem[4:].isdigit() else -1)
    if not files:
        raise ConfigError(f"{folder}: no seed<N>.json results in this folder")
    runs = [load_result(f) for f in files]
    cfg = from_dict({**runs[0]["config"], "seed": 0})
    if "outer" not in (runs[0]["config"].get("protocol") or {}):  # written before protocol.outer: cut by label
        cfg = cfg.replace(**{"protocol.outer": "stratified"})
    study = study_dict(cfg.replace(seeds=[int(r["config"]["seed"]) for r in runs]), runs, files,
                       folder.parent / (folder.name[:-len(".seeds")] + ".json"), runs[0].get("command", ""))
    study["command"] = (study["command"] + f"  # {len(runs)} seed(s) on disk so far").strip()
    return study


def methods_of(config: Mapping[str, Any]) -> list[str]:
    """The options beside the label rule that make a run another method: an auxiliary task (MTL-AUG), an SSL
    front end, the ACP utterance stage (configs written before an option existed lack its key)."""
    from dsl.training.aux_tasks import AUX_TASKS

    out = []
    if (config.get("features") or {}).get("kind", "logmel") != "logmel":
        out.append(f"{config['features']['kind'].upper()} features")
    aux = (config.get("train") or {}).get("aux", "none")
    if aux != "none":
        out.append(AUX_TASKS[aux].title if aux in AUX_TASKS and AUX_TASKS[aux].title else aux)
    stage = config.get("stage") or {}
    if stage.get("name", "forest") != "forest":
        out.append(f"{stage['name'].upper()} stage")
    if stage.get("fit_on", "in_sample") != "in_sample":
        out.append("stage fit on cross-fit halves")
    if stage.get("test_views", "mean") != "mean":
        out.append("stage on each test view")
    return out


def rule_text(labels: Mapping[str, Any], alpha: Any = None) -> str:
    """E.g. `WDSL α=0.2`, `label_smoothing ε=0.1`, `mix beta=0.3`: the rule's title and its parameters as the
    registry declares them (a rule registered by a plugin that is not imported here: its given parameters)."""
    from dsl.method.rules import RULES

    name = str(labels["rule"])
    rule = RULES[name] if name in RULES else None
    text = rule.title if rule is not None else name
    if isinstance(alpha, dict):
        alpha = None
    if alpha is not None:
        text += f" α={alpha:.2g}"
    elif rule is not None and rule.uses_epsilon:
        text += f" ε={labels.get('epsilon', 0.1):.2g}"
    params = rule.values(labels.get("params")) if rule is not None else dict(labels.get("params") or {})
    return " ".join([text, *(f"{p}={v:.3g}" for p, v in params.items())])


def labels_of(config: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """`baseline (iter. 0)`, e.g. `WDSL α=0.2 (iter. 1)`, `label_smoothing ε=0.1 (iter. 1)`, a rule's own
    parameters (`mix beta=0.3 (iter. 1)`), and the other options that change the method: `MTL-AUG (iter. 0)`,
    `WDSL α=0.2 + ACP stage (iter. 1)`."""
    it = int(entry["iteration"])
    extra = methods_of(config)
    if it == 0:
        return f"{' + '.join(extra) if extra else 'baseline'} (iter. 0)"
    return " + ".join([rule_text(config["labels"], entry.get("alpha")), *extra]) + f" (iter. {it})"


def _leak(d: Mapping[str, Any]) -> str:
    lf = d["protocol"].get("leak_free")
    return "unknown" if lf is None else ("yes" if lf else "**no**")


def _iv(row: Mapping[str, Any], key: str) -> str:
    return Interval.from_dict(row[key]).format() if key in row else "–"


def _mins(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(round(seconds % 60)):02d}"


def paired_against(study: Mapping[str, Any], row: Mapping[str, Any], reference: Mapping[str, Any],
                   key: str = "ua", same_iteration: bool = False) -> Interval | None:
    """`row`'s `key` minus the reference study's iteration 0 (`same_iteration`: its iteration of `row`'s
    number), seed by seed over the seeds both ran (as fractions; one shared seed gives the difference without
    an interval; None when they share no seed or the reference lacks the iteration or the figure)."""
    if key not in row:
        return None
    ref_row = next((r for r in reference["iterations"] if r["iteration"] == row["iteration"]), None) \
        if same_iteration else reference["iterations"][0]
    if ref_row is None or key not in ref_row:
        return None
    mine = dict(zip(study["seeds"], row[key]["values"]))
    base = dict(zip(reference["seeds"], ref_row[key]["values"]))
    shared = [s for s in mine if s in base]
    if not shared:
        return None
    return mean_interval([mine[s] - base[s] for s in shared])


def setting(study: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """What a baseline must share with a study to be paired with it: corpus, protocol, test corpus and outer
    partition (otherwise the same seed cuts other folds)."""
    cfg = study["config"]
    return cfg["corpus"], cfg["protocol"]["name"], cfg["protocol"].get("test_corpus", ""), outer_of(study)


def reference_for(study: Mapping[str, Any], references: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The reference study run in the same setting as `study` (None if there is none)."""
    return next((r for r in references if setting(r) == setting(study)), None)


def _agreement(row: Mapping[str, Any]) -> str:
    """Selector agreement in %, mean ± half-width over seeds ('–' for transductive results)."""
    if "selector_agreement" not in row:
        return "–"
    iv = Interval.from_dict(row["selector_agreement"])
    return iv.format()


def _difference(diff: Interval | None) -> str:
    if diff is None:
        return "–"
    return diff.format() + (" (1 seed)" if diff.n == 1 else "")


def study_table(studies: Sequence[tuple[str, Mapping[str, Any]]],
                references: Sequence[Mapping[str, Any]] = (), same_iteration: bool = False) -> str:
    """One row per study iteration; with `references` (baseline studies), also each row's UA minus the
    iteration 0 of the reference in the same setting (corpus, protocol, test corpus, outer partition), paired by
    seed: how a method compares with the baseline on the same folds and seeds. `same_iteration` pairs each row
    with the reference's iteration of the same number instead, and adds the selected UA's difference; a
    reference listed among `studies` too then gets `reference` in those columns, so the table pairs, row under
    row, e.g. today's stage inputs (the reference) with the matched ones."""
    ref_head, ref_rule = "", ""
    if references:
        ref_head, ref_rule = ((" UA vs reference, same iteration (paired) | selected UA vs reference (paired) |",
                               "---|---|") if same_iteration else (" UA vs baseline (paired) |", "---|"))
    head = (f"| protocol | leak-free | labels | WA % | UA % | UA gain vs iter. 0 (paired) |{ref_head} selected UA % | "
            "selector agreement % | wall time / seed | seeds | command |")
    lines = [head, "|---|---|---|---|---|---|" + ref_rule + "---|---|---|---|---|"]
    for _, st in studies:
        secs = Interval.from_dict(st["seconds_per_seed"])
        for i, row in enumerate(st["iterations"]):
            ref = ""
            reference = reference_for(st, references)
            if references:
                keys = ("ua", "selected_ua") if same_iteration else ("ua",)
                for key in keys:
                    if same_iteration and reference is not None and reference == st:  # itself: 0 at every seed
                        ref += " reference |"
                        continue
                    diff = paired_against(st, row, reference, key, same_iteration) if reference is not None else None
                    ref += f" {_difference(diff)} |"
            corpus, protocol, test, outer = setting(st)
            where = (f"`{protocol}`" + (f" {corpus} → {test}" if test else "")
                     + (f" ({OUTER_NOTES[outer]})" if outer in OUTER_NOTES else ""))
            lines.append(
                f"| {where} | {_leak(st)} | {labels_of(st['config'], row)} | {_iv(row, 'wa')} | "
                f"{_iv(row, 'ua')} | {_iv(row, 'gain_ua')} |{ref} {_iv(row, 'selected_ua')} | {_agreement(row)} | "
                f"{_mins(secs.mean) if i == 0 else ''} | {','.join(map(str, st['seeds'])) if i == 0 else ''} | "
                f"{'`' + st['command'] + '`' if i == 0 and st.get('command') else ''} |")
    return "\n".join(lines)


def run_table(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    from dsl.protocols.selection import selector_agreement

    lines = ["| protocol | leak-free | seed | labels | WA % | UA % | selected UA % | selector agreement % | wall time "
             "| command |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in runs:
        outer = outer_of(r)
        where = f"`{r['protocol']['name']}`" + (f" ({OUTER_NOTES[outer]})" if outer in OUTER_NOTES else "")
        for i, it in enumerate(r["iterations"]):
            sel = f"{100 * it['selected_ua']:.1f}" if it.get("selected_ua") is not None else "–"
            agree = it.get("selector_agreement")
            if agree is None and it.get("val_ua") is not None:  # written before it existed: from the history
                agree = selector_agreement(r["iterations"][:i + 1])
            agree_text = "–" if agree is None else f"{100 * agree:.0f}"
            lines.append(f"| {where} | {_leak(r)} | {r['config']['seed']} | {labels_of(r['config'], it)} | "
                         f"{100 * it['wa']:.1f} | {100 * it['ua']:.1f} | {sel} | {agree_text} | "
                         f"{_mins(r['seconds']) if i == 0 else ''} | "
                         f"{'`' + r['command'] + '`' if i == 0 and r.get('command') else ''} |")
    return "\n".join(lines)


def machines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, str] = {}
    for d in results:
        for env in d.get("environments") or ([d["environment"]] if "environment" in d else []):
            seen.setdefault(env.get("fingerprint", "?"), describe_machine(env))
    return [f"`{k}`: {v}" for k, v in seen.items()]


def markdown(paths: Sequence[str | Path], paired_with: Sequence[str | Path] = (), same_iteration: bool = False) -> str:
    """Tables of every study and every run among `paths`, then the machines they ran on; `paired_with`
    (baseline studies) adds each study row's UA difference from the iteration 0 (`same_iteration`: the same
    iteration) of the baseline run in the same setting, paired by seed."""
    loaded = [(str(p), load_result(p)) for p in paths]
    references = [load_result(p) for p in paired_with]
    for p, r in zip(paired_with, references):
        if r["kind"] != "study":
            raise ConfigError(f"{p}: --paired-with needs a replicate study (a `dsl-sweep run --seeds` result)")
    studies = [(p, d) for p, d in loaded if d["kind"] == "study"]
    others = ("study", "sweep", "selection", BENCHMARK_KIND)
    runs = [(p, d) for p, d in loaded if d["kind"] not in others]
    parts = [sweep_tables(d) for _, d in loaded if d["kind"] == "sweep"]
    parts += [selection_markdown(d) for _, d in loaded if d["kind"] == "selection"]
    parts += [benchmark_markdown(d) for _, d in loaded if d["kind"] == BENCHMARK_KIND]
    if studies:
        which = "the same iteration" if same_iteration else "iteration 0"
        parts.append("Mean ± half-width of the 95 % t-interval over seeds. The gain is paired: each seed's "
                     "iteration minus the same seed's iteration 0. *Selected UA*: each outer fold's iteration "
                     "picked on its own training utterances (leak-free protocols only). *Selector agreement*: the "
                     "share of outer folds whose picked iteration has the best outer-test UA among iterations 0 to "
                     "this one (ties agree; 100 % at iteration 0)." +
                     (f" *vs reference/baseline*: each row's figure minus {which} of " +
                      ", ".join(f"`{p}`" for p in paired_with) + " (the one with the same corpus, protocol, test "
                      "corpus and outer partition), seed by seed over the seeds both ran." if references else "")
                     + "\n\n" + study_table(studies, references, same_iteration))
        robust = robustness_markdown([d for _, d in studies], labels_of,
                                     [(str(p), r) for p, r in zip(paired_with, references)])
        if robust:
            parts.append(robust)
    if runs:
        parts.append(run_table(runs))
    ms = machines([d for _, d in loaded if d["kind"] not in ("selection", BENCHMARK_KIND)])  # they name their own
    if ms:
        parts.append("Machines: " + "; ".join(ms) + ".")
    parts.append("Files: " + ", ".join(f"`{p}`" for p, _ in loaded) + ".")
    return "\n\n".join(parts) + "\n"


def format_study(study: Mapping[str, Any]) -> str:
    """A terminal table of a study: per iteration, mean ± 95 % interval of WA/UA and the paired UA gain."""
    pr = study["protocol"]
    lines = [f"{len(study['seeds'])} seeds ({', '.join(map(str, study['seeds']))}) | protocol {pr['name']}, "
             f"leak_free: {str(pr['leak_free']).lower()} | mean ± 95 % interval",
             f"{'iter':>4} {'WA %':>12} {'UA %':>12} {'UA gain':>12} {'sel UA %':>12}"]
    for row in study["iterations"]:
        lines.append(f"{row['iteration']:>4} {_iv(row, 'wa'):>12} {_iv(row, 'ua'):>12} {_iv(row, 'gain_ua'):>12} "
                     f"{_iv(row, 'selected_ua'):>12}")
        for name, c in (row.get("conditions") or {}).items():  # eval.noise / eval.adversarial
            lines.append(f"     {name:<14} UA {_iv(c, 'ua'):>12}, drop from clean {_iv(c, 'drop_ua'):>12}")
    lines.append(f"wall time per seed: {_mins(Interval.from_dict(study['seconds_per_seed']).mean)}")
    return "\n".join(lines)


BEGIN, END = "<!-- dsl-sweep report: begin -->", "<!-- dsl-sweep report: end -->"


def markers(block: str = "") -> tuple[str, str]:
    """The comment lines around a generated block (`block` names one of several in a document)."""
    if not block:
        return BEGIN, END
    return f"<!-- dsl-sweep report: begin {block} -->", f"<!-- dsl-sweep report: end {block} -->"


def splice(document: str | Path, text: str, command: str, block: str = "") -> Path:
    """Replace what stands between the report markers (of `block`) in `document` (e.g. a docs page) with `text`."""
    begin, end = markers(block)
    doc = Path(document)
    body = doc.read_text()
    if begin not in body or end not in body:
        raise ConfigError(f"{doc}: no '{begin}' ... '{end}' block to fill")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n<!-- generated by: {command} -->\n\n{text}\n{end}{tail}")
    return doc


def figure_link(figure: str | Path, document: str | Path | None) -> str:
    """The figure's path as a Markdown link in `document`: relative to the document's folder (a docs page
    links `results/x.png`, not `docs/results/x.png`, or MkDocs cannot find it); as given when printed."""
    if document is None:
        return Path(figure).as_posix()
    return Path(os.path.relpath(Path(figure).resolve(), Path(document).resolve().parent)).as_posix()


def report_outputs(out: str | None = None, figure: str | None = None, into: str | None = None) -> list[WriteTarget]:
    """The files a report writes (each checked before anything is read)."""
    named = (("--out", out), ("--figure", figure), ("--into", into))
    return [WriteTarget.file(path, flag) for flag, path in named if path]


def report_result_files(paths: Sequence[str], out: str | None = None, figure: str | None = None,
                        into: str | None = None, command: str = "", block: str = "",
                        paired_with: Sequence[str] = (), same_iteration: bool = False) -> str:
    """`dsl-sweep report FILE...`: the Markdown tables of result files (runs, studies, sweep exports), also
    written to `out`, spliced into `into`, with a UA figure when asked; returns the Markdown. `same_iteration`:
    see `markdown`."""
    require_writable(report_outputs(out, figure, into))
    text = markdown(paths, paired_with, same_iteration)
    if figure:
        from dsl.results.plots import study_plot

        loaded = [load_result(p) for p in paths]
        studies = [d for d in loaded if d["kind"] == "study"]
        sweeps = [d for d in loaded if d["kind"] == "sweep"]
        document = into or out
        if sweeps:
            fig = sweep_figure(sweeps[0], figure)
            text += f"\n![UA per iteration by rule]({figure_link(fig, document)})\n"
        elif studies:
            fig = study_plot(studies, figure, title="UA per iteration, mean and 95 % interval over seeds")
            text += f"\n![UA per iteration over seeds]({figure_link(fig, document)})\n"
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    if into:
        splice(into, text, command, block)
    return text
