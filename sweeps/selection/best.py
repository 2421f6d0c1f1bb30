"""`dsl-sweep best SWEEP`: re-evaluate the sweep's top configurations on fresh seeds, leak-free, and pick one.

The sweep's own ranking graded itself: the search chose its top trial on the same folds and seed whose
score it reports (and, under the paper's transductive protocol, with test labels in the loop). So `best`
takes the top `k` distinct configurations by the sweep objective at each trial's last iteration, runs
each again on `n` fresh seeds under a leak-free protocol (a replicate study per candidate, written to disk
seed by seed, so an interrupted `best` resumes), ranks them by the re-evaluated mean, and reports the
*optimism*: the sweep's score of the winner minus its re-evaluated mean. `best.yaml` is the winner's
trial config cut at its last iteration (`dsl-sweep run best.yaml` reruns the trial), plus an
`evaluation:` block with the re-evaluated figures (metadata that `load_config` ignores); the registered
model carries the same figures.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from dsl.config import ChainConfig, ConfigError, from_dict
from dsl.method.schedules import schedule_alpha
from dsl.pipeline.keys import key_applies
from dsl.protocols.plans import is_leak_free
from dsl.protocols.selection import rank_key
from dsl.results.naming import describe
from dsl.results.stats import Interval
from dsl.runtime.paths import WriteTarget, require_writable
from dsl.studies.replicates import run_replicates
from dsl.studies.run import load_checked
from tracking import sweep_runs
from tracking.client import call, check_access, client, redact_uri, resolve_tracking_uri
from tracking.schema import ROLE_TAG, condition_metric
from trainables.metrics import parse_objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BestPick:
    """A trial at its last reported iteration, with the sweep's own (self-graded) scores there."""

    run_id: str
    run_name: str
    trial_id: str
    iteration: int
    objective: float
    wa: float
    ua: float
    started: int = 0  # run start time (ms): among exact ties the earliest trial wins

    def key(self) -> tuple[float, float, int, int]:
        return (*rank_key(self.objective, self.wa, self.iteration), -self.started)


@dataclass(frozen=True)
class Reevaluated:
    pick: BestPick
    config: ChainConfig
    study: dict
    score: Interval  # the objective's re-evaluated mean and interval at the final iteration
    wa: Interval

    @property
    def optimism(self) -> float:
        return self.pick.objective - self.score.mean


def _alphas(cfg: ChainConfig, upto: int) -> list[float]:
    return [schedule_alpha(cfg.labels, k, cfg.iterations) for k in range(1, upto + 1)]


def at_iteration(cfg: ChainConfig, t: int) -> tuple[ChainConfig, bool]:
    """`cfg` stopped after iteration `t`, and whether its alphas 1..t equal the original ones exactly.

    Constant and step schedules do not depend on the total; the others (linear, cosine, exponential)
    keep the original total as `labels.horizon`, so iterations 1..t get the same alphas.
    """
    if t == cfg.iterations or not key_applies("labels.alpha", cfg) or t <= 1:
        return cfg.replace(iterations=t), True
    want = _alphas(cfg, t)
    plain = cfg.replace(iterations=t)
    if max(abs(a - b) for a, b in zip(_alphas(plain, t), want)) < 1e-9:
        return plain, True
    cut = cfg.replace(**{"iterations": t, "labels.horizon": cfg.labels.horizon or cfg.iterations})
    return cut, max(abs(a - b) for a, b in zip(_alphas(cut, t), want)) < 1e-9


def objective_key(objective: str) -> str:
    """The MLflow metric that holds the sweep objective per iteration (`ua/white_10dB` etc. under a test condition)."""
    rule, condition = parse_objective(objective)
    key = "selected_ua" if rule == "selected" else "ua"
    return condition_metric(key, condition) if condition else key


def study_score(row: dict, objective: str) -> dict:
    """The objective's interval in a study's iteration row (`dsl.results.study.aggregate`)."""
    rule, condition = parse_objective(objective)
    key = "selected_ua" if rule == "selected" else "ua"
    return row["conditions"][condition][key] if condition else row[key]


def select_best(c, experiment_id: str, parent_run_id: str, objective: str = "final") -> list[BestPick]:
    """Every child run at its last reported iteration, best first by the sweep objective there."""
    key = objective_key(objective)
    per_run: list[BestPick] = []
    for run in sweep_runs.child_runs(c, experiment_id, parent_run_id):
        rid = run.info.run_id
        hist = {k: {int(m.step): m.value for m in call(c.get_metric_history, rid, k)} for k in (key, "wa", "ua")}
        if not hist[key]:
            continue
        last = max(hist[key])
        per_run.append(BestPick(rid, run.info.run_name, run.data.tags.get("ray_trial_id", ""), last, hist[key][last],
                                hist["wa"].get(last, 0.0), hist["ua"].get(last, 0.0), int(run.info.start_time or 0)))
    if not per_run:
        raise ConfigError("the sweep has no trial with a finished iteration yet")
    per_run.sort(key=BestPick.key, reverse=True)
    return per_run


def run_config(c, run_id: str) -> ChainConfig:
    """The trial's resolved config from its `config.yaml` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = call(c.download_artifacts, run_id, "config.yaml", tmp)
        return from_dict(yaml.safe_load(Path(path).read_text()))


def sweep_name(arg: str) -> str:
    """A sweep name, or the `name` inside a sweep YAML file."""
    p = Path(arg)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return str((yaml.safe_load(p.read_text()) or {}).get("name") or p.stem)
    return arg


def tag_winner(c, pick: BestPick, others: list[BestPick], parent_run_id: str) -> None:
    for o in others:
        if o.run_id != pick.run_id:
            try:
                call(c.delete_tag, o.run_id, "dsl.best")
            except Exception:  # tag absent
                pass
    call(c.set_tag, pick.run_id, "dsl.best", "true")
    call(c.set_tag, pick.run_id, "dsl.best_iteration", str(pick.iteration))
    call(c.set_tag, parent_run_id, "dsl.best_run_id", pick.run_id)
    call(c.set_tag, parent_run_id, "dsl.best_iteration", str(pick.iteration))


def distinct_top(c, picks: list[BestPick], k: int) -> list[tuple[BestPick, ChainConfig]]:
    """The first `k` picks whose configs (cut at their iteration) differ: a config sampled twice counts once."""
    out: list[tuple[BestPick, ChainConfig]] = []
    seen: set[str] = set()
    for pick in picks:
        cfg, exact = at_iteration(run_config(c, pick.run_id), pick.iteration)
        if not exact:
            log.warning("the %s schedule of %s cannot be cut at iteration %d exactly: intermediate alphas differ",
                        cfg.labels.schedule, pick.run_name, pick.iteration)
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((pick, cfg))
        if len(out) == k:
            break
    return out


def fresh_seeds(base_seed: int, n: int) -> list[int]:
    """`n` seeds the sweep never used (it ran on `base_seed` alone)."""
    return [base_seed + 1 + i for i in range(n)]


def reevaluate(candidates: list[tuple[BestPick, ChainConfig]], protocol: str, seeds: list[int], objective: str,
               out_dir: Path, show_progress: bool = True) -> list[Reevaluated]:
    """One replicate study per candidate under `protocol`, ranked by the re-evaluated mean objective."""
    done: list[Reevaluated] = []
    data = None
    for i, (pick, cfg) in enumerate(candidates):
        rcfg = cfg.replace(**{"protocol.name": protocol, "seeds": seeds})
        if data is None:  # every candidate shares corpus and features
            data = load_checked(rcfg, show_progress)
        print(f"re-evaluating {i + 1}/{len(candidates)}: {describe(cfg)} (trial {pick.trial_id}) on seeds "
              f"{', '.join(map(str, seeds))} under {protocol}", flush=True)
        study = run_replicates(rcfg, data, out_dir / f"candidate{i + 1}.json", show_progress=show_progress,
                               command=f"dsl-sweep run {out_dir / f'candidate{i + 1}.yaml'}")
        (out_dir / f"candidate{i + 1}.yaml").write_text(rcfg.to_yaml())
        last = study["iterations"][-1]
        done.append(Reevaluated(pick, cfg, study, Interval.from_dict(study_score(last, objective)),
                                Interval.from_dict(last["wa"])))
    return sorted(done, key=lambda r: rank_key(r.score.mean, r.wa.mean, r.config.iterations), reverse=True)


def format_reevaluation(ranked: list[Reevaluated], protocol: str, seeds: list[int], objective: str,
                        sweep_protocol: str) -> str:
    lines = [f"re-evaluated on fresh seeds {', '.join(map(str, seeds))} under {protocol} (leak_free: true); "
             f"{objective} UA at the last iteration, mean ± 95 % interval:",
             f"{'rank':<5} {'trial':<10} {'sweep UA %':>10} {'re-evaluated UA %':>18} {'WA %':>12} {'optimism':>9}  config"]
    for n, r in enumerate(ranked, 1):
        lines.append(f"{n:<5} #{r.pick.trial_id.split('_')[-1]:<9} {100 * r.pick.objective:>10.1f} "
                     f"{r.score.format():>18} {r.wa.format():>12} {100 * r.optimism:>+9.1f}  {describe(r.config)}")
    w = ranked[0]
    lines.append(f"winner: {describe(w.config)} (trial {w.pick.trial_id}): UA {w.score.format()} % re-evaluated; "
                 f"the sweep scored it {100 * w.pick.objective:.1f} % under {sweep_protocol} (leak_free: "
                 f"{str(is_leak_free(sweep_protocol)).lower()}), so its optimism is {100 * w.optimism:+.1f} points")
    return "\n".join(lines)


def evaluation_block(ranked: list[Reevaluated], protocol: str, seeds: list[int], objective: str,
                     sweep_protocol: str, out_dir: Path) -> dict:
    """What best.yaml and the registered model carry: the re-evaluated figures, not the sweep's."""
    def one(r: Reevaluated) -> dict:
        return {"trial_id": r.pick.trial_id, "config": describe(r.config), "sweep_score": round(r.pick.objective, 6),
                "ua": {"mean": round(r.score.mean, 6), "low": r.score.low, "high": r.score.high},
                "wa": {"mean": round(r.wa.mean, 6), "low": r.wa.low, "high": r.wa.high},
                "optimism": round(r.optimism, 6)}

    w = ranked[0]
    return {"protocol": protocol, "leak_free": True, "seeds": seeds, "objective": f"{objective} UA",
            "sweep_protocol": sweep_protocol, "sweep_leak_free": is_leak_free(sweep_protocol), **one(w),
            "studies": str(out_dir), "reproduce": f"dsl-sweep run {out_dir / 'candidate'}N.yaml",
            "candidates": [one(r) for r in ranked]}


def write_best(cfg: ChainConfig, out: str | Path, evaluation: dict | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = cfg.to_yaml()
    if evaluation:
        text += "# Re-evaluated figures (metadata: `dsl-sweep run` ignores this block)\n"
        text += yaml.safe_dump({"evaluation": evaluation}, sort_keys=False)
    out.write_text(text)
    return out


@dataclass(frozen=True)
class BestOptions:
    """What `dsl-sweep best` is asked: the sweep, where to write best.yaml, and how to re-evaluate (None: the
    sweep's own `select:` settings)."""

    sweep: str  # sweep name (MLflow experiment) or sweep YAML file
    out: str = "best.yaml"
    tracking_uri: str | None = None
    top_k: int | None = None
    fresh_seeds: int | None = None
    protocol: str | None = None
    no_reeval: bool = False
    register: bool = False
    model_name: str | None = None
    address: str | None = None  # with register: train the final model as a Ray task on this cluster

    def outputs(self) -> list[WriteTarget]:
        """best.yaml, the re-evaluation's studies beside it, the final model's folder when trained here."""
        out = Path(self.out)
        targets = [WriteTarget.file(out, "--out")]
        if not self.no_reeval:
            targets.append(WriteTarget.dir(out.with_name(out.stem + "_reeval"), "the re-evaluation folder"))
        if self.register and not self.address:
            targets.append(WriteTarget.dir(out.with_name(out.stem + "_model"), "the final model's folder"))
        return targets


def choose_best(opts: BestOptions) -> Path:
    """`dsl-sweep best`: re-evaluate the sweep's top configurations (unless `no_reeval`), write the winner to
    `opts.out` (returned), and with `register` train and register the final model."""
    require_writable(opts.outputs())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(opts.tracking_uri)
    name = sweep_name(opts.sweep)
    check_access(uri)
    c = client(uri)
    exp = call(c.get_experiment_by_name, name)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {name!r} at {redact_uri(uri)} (give --tracking-uri?)")
    parent = sweep_runs.find_parent(c, exp.experiment_id)
    if parent is None or parent.data.tags.get(ROLE_TAG) != "parent":
        raise ConfigError(f"experiment {name!r} has no sweep parent run")
    params = parent.data.params
    objective = params.get("sweep.objective", "final")
    protocol = opts.protocol or params.get("sweep.select_protocol", "refinery")
    top_k = opts.top_k or int(params.get("sweep.select_top_k", 3))
    n_seeds = opts.fresh_seeds or int(params.get("sweep.select_seeds", 5))
    if not is_leak_free(protocol):
        raise ConfigError(f"--protocol {protocol!r} is not leak-free; re-evaluate under nested, refinery or speaker")
    per_run = select_best(c, exp.experiment_id, parent.info.run_id, objective)
    top = distinct_top(c, per_run, top_k)
    sweep_protocol = top[0][1].protocol.name
    print(f"sweep {name}: {len(per_run)} trials; top {len(top)} distinct configurations by the sweep objective "
          f"({objective} UA under {sweep_protocol}, leak_free: {str(is_leak_free(sweep_protocol)).lower()}):", flush=True)
    for p, cfg in top:
        print(f"  {describe(cfg)} (trial {p.trial_id}): {100 * p.objective:.2f} % at iteration {p.iteration}", flush=True)
    out = Path(opts.out)
    if opts.no_reeval:
        cfg, evaluation = top[0][1], None
        winner = top[0][0]
        print("--no-reeval: best.yaml is the sweep's own pick, whose score graded itself", flush=True)
    else:
        seeds = fresh_seeds(top[0][1].seed, n_seeds)
        out_dir = out.with_name(out.stem + "_reeval")
        ranked = reevaluate(top, protocol, seeds, objective, out_dir,
                            show_progress=os.environ.get("DSL_PROGRESS", "1") != "0")
        print(format_reevaluation(ranked, protocol, seeds, objective, sweep_protocol), flush=True)
        evaluation = evaluation_block(ranked, protocol, seeds, objective, sweep_protocol, out_dir)
        cfg, winner = ranked[0].config, ranked[0].pick
        call(c.log_metric, parent.info.run_id, "reevaluated_ua", ranked[0].score.mean)
        call(c.log_metric, parent.info.run_id, "optimism", ranked[0].optimism)
    path = write_best(cfg, out, evaluation)
    tag_winner(c, winner, per_run, parent.info.run_id)
    print(f"wrote {path} (rerun the trial with: dsl-sweep run {path})", flush=True)
    if opts.register:
        from tracking.registry import register_final

        address = opts.address
        task_args = (cfg, uri, exp.experiment_id, parent.info.run_id, winner.run_id, opts.model_name or name)
        if address:  # on the cluster: its data path, its GPUs; the model reaches us through MLflow
            from sweeps.cluster.cluster_task import run_on_cluster

            model_uri = run_on_cluster(address, register_final, (*task_args, None, evaluation),
                                       gpu=cfg.train.device != "cpu")
            print(f"trained on the cluster at {address}; registered {model_uri}", flush=True)
        else:
            register_final(*task_args, Path(path).with_name(Path(path).stem + "_model"), evaluation)
    return path
