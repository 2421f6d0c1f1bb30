"""`dsl-sweep best SWEEP`: decide among the sweep's top configurations, say how sure the decision is, and, with a
holdout, measure what it is worth on data the selection never saw.

The sweep's ranking graded itself (it chose its top trials on the folds and seed whose scores it reports), and the
effects a DSL sweep searches for are about one seed's noise. So `best`:

1. takes the sweep's top `select.top_k` distinct configurations (`sweeps.selection.candidates`), each cut at its
   last reported iteration;
2. races them on fresh seeds under the leak-free `select.protocol`, on the search part of the corpus only
   (`sweeps.selection.race` over `dsl.results.racing`): every survivor gets the same seeds round by round, a paired
   test over the seeds they share drops the clearly worse, and the race ends with one candidate, or with a verdict
   of "no significant difference" and the cheapest survivor, or when `select.budget` chains are spent;
3. with a `holdout:` in the sweep file, sits the final exam (`sweeps.selection.exam`): the winner and a reference
   (the rule baseline at iteration 0 of the base, or `select.reference`) train on the search part and are scored
   once on the holdout under the same protocol, over `select.exam_seeds` seeds, paired.

Every chain is a Ray task spread over the cluster's resources (with `--address`, on it) sharing the sweep's step
cache (`sweeps.selection.chains`), and an MLflow child run of a `selection` run under the sweep's parent
(`tracking.selection_run`). Each finished chain's result is on disk at once, so an interrupted `best` resumes:
rerun the same command. `best.yaml` is the winner's trial config (`dsl-sweep run best.yaml` reruns the trial)
plus an `evaluation:` block with the verdict and the holdout figures; `<out>_selection/selection.json` holds the
race and the exam (`dsl-sweep report` renders it); the registered model and the parent run carry the same figures.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dsl.config import ChainConfig, ConfigError, FeatureSpec, from_dict
from dsl.data.bundle import CorpusData
from dsl.pipeline.checks import check_data
from dsl.protocols.holdout import HoldoutAssignment, describe_split, load_holdout, split
from dsl.protocols.plans import is_leak_free, make_plan
from dsl.results.naming import describe
from dsl.results.racing import Candidate, RaceSettings
from dsl.results.selection_report import SELECTION_FORMAT, markdown
from dsl.results.stats import mean_interval
from dsl.results.study import write_json
from dsl.runtime.paths import WriteTarget, require_writable
from dsl.studies.run import load_checked
from sweeps.search.spec import SelectSpec, parse_select
from sweeps.selection.candidates import BestPick, distinct_top, fresh_seeds, objective_key, select_best, sweep_name
from sweeps.selection.chains import ChainStore, RayChains
from sweeps.selection.exam import exam_config, exam_requests, exam_summary, reference_config, run_exam
from sweeps.selection.race import (
    ChainLog,
    RaceEntry,
    describe_settings,
    make_race,
    race_rows,
    run_race,
    score_in_percent,
)
from tracking.client import check_access, redact_uri, resolve_tracking_uri
from tracking.schema import BASE_ARTIFACT, HOLDOUT_ARTIFACT, SPEC_ARTIFACT
from tracking.selection_run import SelectionTracker, outcome_figures
from tracking.sweep_runs import SweepRun
from tracking.sweep_settings import SweepSettings
from trainables.context import ResourceSpec


@dataclass(frozen=True)
class BestOptions:
    """What `dsl-sweep best` was asked; None: the sweep file's `select:` setting."""

    sweep: str
    out: str = "best.yaml"
    tracking_uri: str | None = None
    top_k: int | None = None
    seeds: int | None = None
    budget: int | None = None
    alpha: float | None = None
    exam_seeds: int | None = None
    protocol: str | None = None
    address: str | None = None
    no_reeval: bool = False
    register: bool = False
    model_name: str | None = None
    step_cache: bool = True
    command: str = ""

    def outputs(self) -> list[WriteTarget]:
        """best.yaml, the selection's folder beside it (chains, selection.json), the final model's folder when
        trained here."""
        out = Path(self.out)
        targets = [WriteTarget.file(out, "--out")]
        if not self.no_reeval:
            targets.append(WriteTarget.dir(out.with_name(out.stem + "_selection"), "the selection folder"))
        if self.register and not self.address:
            targets.append(WriteTarget.dir(out.with_name(out.stem + "_model"), "the final model's folder"))
        return targets


@dataclass
class SweepRecord:
    """What `best` reads of a sweep from MLflow: its parent run, files and settings."""

    name: str
    sweep: SweepRun
    settings: SweepSettings
    raw: dict[str, Any]  # the sweep file as the sweep ran it
    base: ChainConfig | None  # the resolved base config (sweeps before the final exam did not keep it)
    holdout_text: str | None  # the holdout assignment (JSON text), if the sweep had one

    @property
    def experiment_id(self) -> str:
        return self.sweep.experiment_id

    @property
    def parent_run_id(self) -> str:
        return self.sweep.run_id

    @property
    def objective(self) -> str:
        return self.settings.objective

    @property
    def objective_seeds(self) -> int:
        return int(self.raw.get("objective_seeds") or self.settings.objective_seeds or 1)


def read_sweep(name: str, uri: str) -> SweepRecord:
    sweep = SweepRun.find(uri, name)
    if sweep is None:
        raise ConfigError(f"no MLflow experiment {name!r} at {redact_uri(uri)} (give --tracking-uri?)")
    raw = yaml.safe_load(sweep.run_file(SPEC_ARTIFACT) or "") or {}
    base_text = sweep.run_file(BASE_ARTIFACT)
    return SweepRecord(name, sweep, sweep.settings(), raw,
                       from_dict(yaml.safe_load(base_text)) if base_text else None, sweep.run_file(HOLDOUT_ARTIFACT))


def select_settings(record: SweepRecord, opts: BestOptions) -> SelectSpec:
    """The sweep file's `select:` (or, for an older sweep, its parent's params) with the command line's overrides."""
    problems: list[str] = []
    raw = record.raw.get("select")
    if raw is None:  # a sweep file without `select:`: what its parent run keeps
        st = record.settings
        raw = {"protocol": st.select_protocol, "top_k": st.select_top_k, "seeds": st.select_seeds,
               "alpha": st.select_alpha, "exam_seeds": st.select_exam_seeds}
        if st.select_budget is not None:
            raw["budget"] = st.select_budget
    sel = parse_select(raw, problems)
    given = {"protocol": opts.protocol, "top_k": opts.top_k, "seeds": opts.seeds, "budget": opts.budget,
             "alpha": opts.alpha, "exam_seeds": opts.exam_seeds}
    sel = dataclasses.replace(sel, **{k: v for k, v in given.items() if v is not None})
    problems += [p for p in sel.problems() if p not in problems]
    if problems:
        raise ConfigError("dsl-sweep best: invalid selection settings:\n  " + "\n  ".join(problems))
    return sel


def fold_trainings(cfg: ChainConfig, data: CorpusData) -> int:
    """Fold trainings per iteration of `cfg`'s protocol on `data` (the race's cost tie-break)."""
    plan = make_plan(data.labels, data.speakers, cfg.protocol, cfg.seed)
    return sum(len(s.folds) for s in plan.scopes)


def write_best(cfg: ChainConfig, out: str | Path, evaluation: dict | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = cfg.to_yaml()
    if evaluation:
        text += "# How it was selected (metadata: `dsl-sweep run` ignores this block)\n"
        text += yaml.safe_dump({"evaluation": evaluation}, sort_keys=False)
    out.write_text(text)
    return out


def _features_key(features: FeatureSpec) -> str:
    return json.dumps(dataclasses.asdict(features), sort_keys=True)


@dataclass
class SelectionData:
    """The corpus as the selection uses it: per front end, the search part (the race) and the whole (the exam)."""

    search: dict[str, CorpusData]
    full: dict[str, CorpusData]
    names: dict[str, str]  # features key -> dataset suffix
    assignment: HoldoutAssignment | None

    def datasets(self) -> dict[str, CorpusData]:
        out = {f"search{n}": self.search[k] for k, n in self.names.items()}
        if self.assignment is not None:
            out.update({f"full{n}": self.full[k] for k, n in self.names.items()})
        return out

    def name(self, part: str, cfg: ChainConfig) -> str:
        return f"{part}{self.names[_features_key(cfg.features)]}"


def load_selection_data(configs: list[ChainConfig], holdout_path: Path | None, show_progress: bool) -> SelectionData:
    """Load each front end's corpus once; with a holdout, split it (the race sees the search part only)."""
    assignment = load_holdout(holdout_path) if holdout_path else None
    search, full, names = {}, {}, {}
    for cfg in configs:
        key = _features_key(cfg.features)
        if key in names:
            continue
        names[key] = "" if not names else str(len(names))
        data = load_checked(cfg, show_progress)
        full[key] = data
        search[key] = split(data, assignment)[0] if assignment is not None else data
        check_data(cfg, search[key].labels, search[key].speakers, search[key].label_names)
    return SelectionData(search, full, names, assignment)


def _interval(values: list[float]) -> dict[str, Any] | None:
    """Mean and 95 % interval; None without values (a lone candidate wins without a race: it runs no chain)."""
    if not values:
        return None
    iv = mean_interval(values)
    return {"mean": round(iv.mean, 6), "low": iv.low, "high": iv.high, "n": iv.n}


def evaluation_block(sel: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """What best.yaml, the registered model and the parent run carry: the verdict and the holdout figures."""
    race, winner = sel["race"], sel["winner"]
    row = next(r for r in race["rows"] if r["key"] == winner["key"])
    out: dict[str, Any] = {
        "selection": "race", "protocol": sel["protocol"]["name"], "leak_free": True, "objective": sel["objective"],
        "verdict": race["verdict"]["text"], "significant": race["verdict"]["significant"],
        "trial_id": winner["trial_id"], "config": winner["name"], "sweep_score": round(winner["sweep_score"], 6),
        "sweep_protocol": sel["sweep_protocol"]["name"], "sweep_leak_free": sel["sweep_protocol"]["leak_free"],
        "race": {"seeds": row["seeds"], "ua": _interval([v / 100.0 for v in row["scores"].values()]),
                 "chains": race["chains"],
                 "survivors": [r["name"] for r in race["rows"] if not r["status"].startswith("dropped")]},
        "holdout": None, "file": str(path), "reproduce": f"dsl-sweep report {path}"}
    ex = sel.get("exam")
    if ex:
        def iv(d: Mapping[str, Any]) -> dict[str, Any]:
            return {"mean": round(d["mean"], 6), "low": d["low"], "high": d["high"]}

        out["holdout"] = {"how": sel["data"]["holdout"]["how"], "utterances": ex["n_holdout"], "seeds": ex["seeds"],
                          "protocol": ex["protocol"], "ua": iv(ex["winner"]["ua"]), "wa": iv(ex["winner"]["wa"]),
                          "reference": ex["reference"]["name"], "reference_ua": iv(ex["reference"]["ua"]),
                          "gain_ua": iv(ex["gain_ua"]), "optimism": None if ex["optimism"] is None else round(ex["optimism"], 6)}
    return out


def choose_best(opts: BestOptions, runner_factory=None, tracker_factory=None) -> Path:
    """Decide (see the module docstring); returns best.yaml's path. `runner_factory(datasets, resources, step_cache,
    holdout_text, address)` and `tracker_factory(uri, experiment_id, parent_run_id, params)` replace the Ray tasks
    and the MLflow runs (tests)."""
    require_writable(opts.outputs())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    show = os.environ.get("DSL_PROGRESS", "1") != "0"
    uri = resolve_tracking_uri(opts.tracking_uri)
    name = sweep_name(opts.sweep)
    check_access(uri)
    record = read_sweep(name, uri)
    sel = select_settings(record, opts)
    per_run = select_best(record.sweep, record.objective)
    top = distinct_top(record.sweep, per_run, sel.top_k)
    sweep_pr = top[0][1].protocol.name
    base_seed = (record.base or top[0][1]).seed
    print(f"sweep {name}: {len(per_run)} trials; the top {len(top)} distinct configurations by the sweep objective "
          f"({record.objective} UA under {sweep_pr}, leak_free: {str(is_leak_free(sweep_pr)).lower()}, seed(s) "
          f"{', '.join(map(str, range(base_seed, base_seed + record.objective_seeds)))}; self-graded):", flush=True)
    for p, cfg in top:
        print(f"  {describe(cfg)} (trial {p.short_id}): {100 * p.objective:.2f} % at iteration {p.iteration}", flush=True)
    out = Path(opts.out)
    if opts.no_reeval:
        pick, cfg = top[0]
        print("--no-reeval: best.yaml is the sweep's own pick, whose score graded itself", flush=True)
        path = write_best(cfg, out)
        record.sweep.mark_best(pick.run_id, pick.iteration, [p.run_id for p in per_run])
        _register(opts, cfg, uri, record, pick, None, name)
        return path

    sel_dir = out.with_name(out.stem + "_selection")
    sel_dir.mkdir(parents=True, exist_ok=True)
    holdout_path = None
    if record.holdout_text:
        holdout_path = (sel_dir / "holdout.json").resolve()
        holdout_path.write_text(record.holdout_text)
    race_cfgs = {p.short_id: cfg.replace(**{"protocol.name": sel.protocol, "seeds": []}) for p, cfg in top}
    data = load_selection_data(list(race_cfgs.values()), holdout_path, show)
    if data.assignment is not None:
        print(describe_split(data.assignment) + f" | the race sees the other "
              f"{next(iter(data.search.values())).n_utterances}; the final exam alone reads the holdout", flush=True)
    else:
        print("no holdout in the sweep file: no final exam (the race's means are on the data the search ranked on)",
              flush=True)
    entries = race_entries(top, race_cfgs, data)
    seeds = fresh_seeds(base_seed, sel.seeds, record.objective_seeds)
    settings = RaceSettings(sel.seeds_per_round, sel.min_seeds, sel.alpha, sel.budget, sel.correction, sel.tie_break)
    race = make_race(entries, seeds, settings)
    resources = _resources(record)
    steps = _step_cache(record, sel_dir) if opts.step_cache else ""
    address = opts.address or os.environ.get("RAY_ADDRESS")
    print(f"chains: Ray tasks of {resources.cpu:g} CPU{f', {resources.gpu:g} GPU' if resources.gpu else ''} each "
          f"{'on the cluster at ' + address if address else 'on this machine'} | step cache "
          f"{steps or 'off'} | results {sel_dir}", flush=True)
    score = score_in_percent(record.objective)
    params = {"select": dataclasses.asdict(sel), "seeds": seeds, "holdout": data.assignment.spec.how
              if data.assignment else "none", "sweep_protocol": sweep_pr}
    tracker = (tracker_factory or SelectionTracker)(uri, record.experiment_id, record.parent_run_id, params)
    runner = (runner_factory or RayChains)(data.datasets(), resources, steps, record.holdout_text, opts.address)
    store = ChainStore(sel_dir)
    chains, exam_chains = ChainLog(), ChainLog()
    start = time.time()
    status = "FAILED"
    try:
        verdict = run_race(race, entries, store, runner, tracker, score,
                           on_round=lambda r: write_json(r.to_dict(), sel_dir / "race.json"), chains=chains)
        write_json(race.to_dict(), sel_dir / "race.json")
        pick, win_cfg = next((p, cfg) for p, cfg in top if p.short_id == verdict.winner)
        print(f"verdict: {verdict.text}", flush=True)
        exam = None
        if data.assignment is not None and holdout_path is not None:
            exam = _final_exam(record, sel, data, race, entries[verdict.winner], win_cfg, holdout_path, store, runner,
                               tracker, score, record.objective, exam_chains)
        chains.environments.update(exam_chains.environments)
        selection = _selection_dict(record, sel, data, race, verdict, entries, exam, pick, win_cfg, sweep_pr,
                                    base_seed, chains, opts, sel_dir, time.time() - start)
        if exam is not None:
            exam.update({"chains_run": exam_chains.run, "chains_read_back": exam_chains.read_back})
        sel_path = write_json(selection, sel_dir / "selection.json")
        print("\n" + markdown(selection) + "\n", flush=True)
        evaluation = evaluation_block(selection, sel_path)
        path = write_best(win_cfg, out, evaluation)
        metrics, tags = outcome_figures(selection)
        tracker.outcome(metrics, tags, [sel_path, path])
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"interrupted: the finished chains are kept under {sel_dir}; rerun the same command to resume",
              flush=True)
        raise
    finally:
        getattr(runner, "close", lambda: None)()
        tracker.close(status)
    record.sweep.mark_best(pick.run_id, pick.iteration, [p.run_id for p in per_run])
    print(f"wrote {path} (rerun the trial with: dsl-sweep run {path}) and {sel_path} (render it with: dsl-sweep "
          f"report {sel_path})", flush=True)
    _register(opts, win_cfg, uri, record, pick, evaluation, name)
    return path


def race_entries(top: list[tuple[BestPick, ChainConfig]], race_cfgs: Mapping[str, ChainConfig],
                 data: SelectionData) -> dict[str, RaceEntry]:
    """The race's candidates: each keyed by its trial, its cost (iterations, then fold trainings per chain under
    the race's protocol) for the tie-break, and the search data its chains read."""
    entries = {}
    for p, cfg in top:
        rc = race_cfgs[p.short_id]
        jobs = fold_trainings(rc, data.search[_features_key(rc.features)])
        entries[p.short_id] = RaceEntry(Candidate(p.short_id, describe(cfg), cfg.iterations, (cfg.iterations + 1) * jobs),
                                        rc, p.objective, p.trial_id, p.run_id, data.name("search", rc))
    return entries


def _resources(record: SweepRecord) -> ResourceSpec:
    """The sweep's per-trial resources (its file's `resources:`), one chain's share; fold tasks run in the chain."""
    raw = record.raw.get("resources") or {}
    return ResourceSpec(cpu=float(raw.get("cpu", 1.0)), gpu=float(raw.get("gpu", 0.0)))


def _step_cache(record: SweepRecord, sel_dir: Path) -> str:
    """The sweep's step cache (its parent run names it), else one beside the selection's results."""
    return record.settings.step_cache or str(sel_dir / "step_cache")


def _final_exam(record: SweepRecord, sel: SelectSpec, data: SelectionData, race: Any, winner: RaceEntry,
                win_cfg: ChainConfig, holdout_path: Path, store: ChainStore, runner: Any, tracker: Any, score,
                objective: str, chains: ChainLog) -> dict[str, Any]:
    """The winner and the reference on the holdout (see `sweeps.selection.exam`); its summary for selection.json."""
    base = record.base or win_cfg
    ref = reference_config(base, sel.reference_overrides())
    w_exam = exam_config(win_cfg, sel.protocol, str(holdout_path))
    r_exam = exam_config(ref, sel.protocol, str(holdout_path))
    seeds = fresh_seeds(base.seed, sel.exam_seeds, record.objective_seeds)
    reqs = [dataclasses.replace(r, data=data.name("full", r.config))
            for r in exam_requests(winner.candidate.key, w_exam, r_exam, seeds)]
    print(f"final exam: {describe(win_cfg)} against the reference {describe(ref)} under {sel.protocol}, seeds "
          f"{', '.join(map(str, seeds))}: trained on the search part, scored on the holdout only", flush=True)
    results = run_exam(reqs, store, runner, tracker, score, chains=chains)
    ranking = [race.scores[winner.candidate.key][s] for s in sorted(race.scores[winner.candidate.key])]
    return exam_summary(results, winner.candidate.key, seeds, objective, ranking, describe(win_cfg), describe(ref),
                        sel.reference, sel.protocol)


def _holdout_classes(data: SelectionData) -> str:
    """Held-out utterances per class (the exam's data, read after the race)."""
    assert data.assignment is not None
    full = next(iter(data.full.values()))
    held = data.assignment.mask(full.paths)
    counts = np.bincount(full.labels[held], minlength=full.n_classes)
    return ", ".join(f"{c} {n}" for n, c in zip(full.label_names, counts))


def _selection_dict(record: SweepRecord, sel: SelectSpec, data: SelectionData, race: Any, verdict: Any,
                    entries: Mapping[str, RaceEntry], exam: dict | None, pick: BestPick, win_cfg: ChainConfig,
                    sweep_pr: str, base_seed: int, chains: ChainLog, opts: BestOptions, sel_dir: Path,
                    seconds: float) -> dict[str, Any]:
    """Everything `dsl-sweep report` needs to render the race, the verdict and the final exam."""
    search = next(iter(data.search.values()))
    holdout = None
    if data.assignment is not None:
        a = data.assignment
        holdout = {"how": a.spec.how, "speakers": list(a.speakers), "utterances": len(a.files),
                   "classes": _holdout_classes(data), "assignment": "holdout.json"}
    pr = win_cfg.protocol
    return {
        "format": SELECTION_FORMAT, "kind": "selection", "sweep": record.name, "command": opts.command,
        "objective": f"{record.objective} UA at the last iteration", "objective_key": objective_key(record.objective),
        "sweep_protocol": {"name": sweep_pr, "leak_free": is_leak_free(sweep_pr)}, "sweep_seed": base_seed,
        "sweep_objective_seeds": record.objective_seeds,
        "protocol": {"name": sel.protocol, "leak_free": True, "folds": pr.folds, "inner_folds": pr.inner_folds,
                     "select_folds": pr.select_folds},
        "select": dataclasses.asdict(sel),
        "data": {"corpus": f"{win_cfg.corpus} ({Path(win_cfg.data).name})", "search_utterances": search.n_utterances,
                 "holdout": holdout},
        "race": {"settings": dataclasses.asdict(race.settings), "settings_text": describe_settings(race),
                 "seeds": list(race.seeds), "state": race.to_dict(), "verdict": verdict.to_dict(),
                 "rows": race_rows(race, entries, verdict), "chains": race.chains, "chains_run": chains.run,
                 "chains_read_back": chains.read_back, "finished": race.finished},
        "exam": exam,
        "winner": {"key": verdict.winner, "name": describe(win_cfg), "trial_id": pick.trial_id, "run_id": pick.run_id,
                   "iteration": pick.iteration, "sweep_score": pick.objective},
        "environments": list(chains.environments.values()), "seconds": round(seconds, 1),
        "files": {"chains": str(sel_dir), "race_state": "race.json"},
    }


def _register(opts: BestOptions, cfg: ChainConfig, uri: str, record: SweepRecord, pick: BestPick,
              evaluation: dict | None, name: str) -> None:
    if not opts.register:
        return
    from sweeps.selection.final_model import train_and_register

    task_args = (cfg, uri, record.experiment_id, record.parent_run_id, pick.run_id, opts.model_name or name)
    if opts.address:  # on the cluster: its data path, its GPUs; the model reaches us through MLflow
        from sweeps.cluster.cluster_task import run_on_cluster

        model_uri = run_on_cluster(opts.address, train_and_register, (*task_args, None, evaluation),
                                   gpu=cfg.train.device != "cpu")
        print(f"trained on the cluster at {opts.address}; registered {model_uri}", flush=True)
    else:
        train_and_register(*task_args, Path(opts.out).with_name(Path(opts.out).stem + "_model"), evaluation)
