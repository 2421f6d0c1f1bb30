"""A sweep with a holdout and `dsl-sweep best` on it, end to end (Ray, MLflow; tone corpus, no EmoDB needed):

- no held-out utterance's label reaches a trial: relabel the holdout, rerun the sweep, every trial metric is
  identical (relabel a search utterance instead and some metric moves: the comparison can fail);
- `best` races, sits the final exam on the holdout only, and an interrupted `best` resumes: no chain runs twice,
  the verdict equals an uninterrupted run's, MLflow shows one chain run per chain under the selection run;
- `objective_seeds: 2`: every trial is judged by the mean of the same two seeds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support.data import write_tone

pytestmark = pytest.mark.slow

HOLDOUT_SPEAKER = "spk3"


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, str]]]:
    """24 tone utterances, 3 'emotions' (pitch ranges), 4 speakers."""
    root = tmp_path_factory.mktemp("holdout-tones")
    rng = np.random.default_rng(1)
    rows = []
    for c, base in enumerate((300.0, 500.0, 800.0)):
        for i in range(8):
            write_tone(root / f"c{c}_{i}.wav", seconds=0.5 + 0.05 * i, freq=base * (1 + 0.5 * rng.random()))
            rows.append((f"c{c}_{i}.wav", c, f"spk{i % 4}"))
    return root, rows


def _manifest(root: Path, rows, name: str, relabel: set[str] = frozenset()) -> Path:
    lines = ["path,label,speaker", *(f"{f},class{(c + 1) % 3 if f in relabel else c},{s}" for f, c, s in rows)]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def _sweep(tmp: Path, name: str, manifest: Path, cache: Path, **top) -> Path:
    raw = {"name": name,
           "base": {"preset": "cpu", "corpus": "csv", "data": str(manifest), "cache_dir": str(cache),
                    "segments": {"hop": 4}, "protocol": {"folds": 2, "eval_folds": 2, "select_folds": 2},
                    "train": {"epochs": 2, "patience": 1, "batch_size": 16, "lr": 0.003}},
           "search": {"rule": ["baseline", "bdsl"], "iterations": 1},
           "sampler": {"type": "grid"}, "scheduler": "none", "num_samples": 2, "max_concurrent": 2,
           "resources": {"cpu": 1}, "storage_path": str(tmp / f"ray_{name}"),
           "holdout": {"speakers": [HOLDOUT_SPEAKER], "assignment": str(tmp / f"{name}.holdout.json")},
           "select": {"protocol": "refinery", "top_k": 2, "seeds": 3, "min_seeds": 2, "exam_seeds": 2}, **top}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DSL_PROGRESS": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    yield
    ray.shutdown()


EXECUTION = ("seconds", "segments_per_second", "cached_folds")  # timing, and which of two trials trained a shared fold


def _metrics(client, name: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """rule -> metric -> [(step, value)] of every trial of sweep `name`: every score (not the execution metrics)."""
    exp = client.get_experiment_by_name(name)
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=100):
        if run.data.tags.get("dsl.role") != "trial":
            continue
        out[run.data.params["labels.rule"]] = {
            k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics if k not in EXECUTION}
    return out


@pytest.fixture(scope="module")
def sweeps(tones, tmp_path_factory, ray_session):
    """The same sweep three times: original labels, the holdout relabelled, one search utterance relabelled."""
    from mlflow import MlflowClient

    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import load_sweep

    root, rows = tones
    tmp = tmp_path_factory.mktemp("holdout-sweeps")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    held = {f for f, _, s in rows if s == HOLDOUT_SPEAKER}
    searched = sorted({f for f, _, _ in rows} - held)
    cache = tmp / "features"
    outcomes = {}
    for name, relabel in (("original", set()), ("holdout_changed", held), ("search_changed", {searched[0]})):
        spec = load_sweep(_sweep(tmp, name, _manifest(root, rows, f"{name}.csv", relabel), cache))
        outcomes[name] = run_sweep(spec, tracking_uri=uri)
    return tmp, uri, MlflowClient(uri), outcomes, held


def test_no_held_out_label_reaches_a_trial(sweeps) -> None:
    tmp, _, client, outcomes, held = sweeps
    assert all(not o.interrupted and o.errors == 0 for o in outcomes.values())
    original = _metrics(client, "original")
    assert sorted(original) == ["baseline", "bdsl"] and all(original[r]["ua"] for r in original)
    assert {"ua", "wa", "fold_ua/0", "segment_accuracy", "changed_label_share"} <= set(original["bdsl"])
    assert _metrics(client, "holdout_changed") == original  # every metric of every trial, every step
    assert _metrics(client, "search_changed") != original  # a label the search sees does move them
    stored = json.loads((tmp / "original.holdout.json").read_text())
    assert sorted(stored["files"]) == sorted(held) and "label" not in json.dumps(stored)
    exp = client.get_experiment_by_name("original")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dsl.role") == "parent")
    assert parent.data.params["sweep.holdout_utterances"] == str(len(held))


class _Runner:
    """Ray chains that record what they ran, and stop (an error) after `stop_after` chains."""

    ran: list[tuple[str, str, int]] = []

    @classmethod
    def factory(cls, stop_after: int | None = None):
        from sweeps.selection.chains import RayChains

        class Recording(RayChains):
            def run(self, requests):
                for req, result in super().run(requests):
                    if stop_after is not None and len(cls.ran) >= stop_after:
                        raise RuntimeError("interrupted (test)")
                    cls.ran.append((req.stage, req.key, req.seed))
                    yield req, result
        return Recording


def test_best_races_sits_the_exam_on_the_holdout_and_resumes(sweeps) -> None:
    from sweeps.selection.best import BestOptions, choose_best

    tmp, uri, client, _, held = sweeps
    opts = BestOptions("original", out=str(tmp / "best.yaml"), tracking_uri=uri)
    _Runner.ran = []
    with pytest.raises(RuntimeError, match="interrupted"):
        choose_best(opts, runner_factory=_Runner.factory(stop_after=2))
    first = list(_Runner.ran)
    assert len(first) == 2
    _Runner.ran = []
    choose_best(opts, runner_factory=_Runner.factory())  # resumes
    second = list(_Runner.ran)
    assert not set(first) & set(second)  # no chain ran twice
    sel = json.loads((tmp / "best_selection" / "selection.json").read_text())
    assert sel["race"]["chains_read_back"] == 2 and sel["race"]["chains_run"] == sel["race"]["chains"] - 2
    # an uninterrupted best (another folder; the step cache serves its folds) reaches the same verdict
    _Runner.ran = []
    choose_best(BestOptions("original", out=str(tmp / "again" / "best.yaml"), tracking_uri=uri),
             runner_factory=_Runner.factory())
    again = json.loads((tmp / "again" / "best_selection" / "selection.json").read_text())
    assert again["race"]["verdict"] == sel["race"]["verdict"] and again["exam"] == sel["exam"]

    # the race never saw a held-out utterance; the exam scored those alone
    for f in (tmp / "best_selection" / "race").glob("*.seeds/seed*.json"):
        files = {u["file"] for it in json.loads(f.read_text())["iterations"] for u in it["utterances"]}
        assert files and not files & held, f
    exam_files = list((tmp / "best_selection" / "exam").glob("*.seeds/seed*.json"))
    assert len(exam_files) == 2 * 2  # winner and reference, two seeds
    for f in exam_files:
        last = json.loads(f.read_text())["iterations"][-1]
        assert {u["file"] for u in last["utterances"] if u["fold"] >= 0} == held
    ex = sel["exam"]
    assert ex["n_holdout"] == len(held) and ex["protocol"] == "refinery" and ex["seeds"] == [1, 2]
    assert ex["optimism"] == pytest.approx(ex["winner"]["ranking_ua"]["mean"] - ex["winner"]["ua"]["mean"])

    best = yaml.safe_load((tmp / "best.yaml").read_text())
    assert best["evaluation"]["verdict"] == sel["race"]["verdict"]["text"]
    assert best["evaluation"]["holdout"]["utterances"] == len(held)
    # MLflow: one selection run under the parent, one finished chain run per chain (none twice after the resume)
    exp = client.get_experiment_by_name("original")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parent = next(r for r in runs if r.data.tags.get("dsl.role") == "parent")
    selection = [r for r in runs if r.data.tags.get("dsl.role") == "selection"]
    assert len(selection) == 1 and selection[0].info.status == "FINISHED"
    assert selection[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    chains = [r for r in runs if r.data.tags.get("dsl.role") == "selection_chain"
              and r.data.tags["mlflow.parentRunId"] == selection[0].info.run_id]
    tags = [r.data.tags["dsl.selection_chain"] for r in chains]
    assert len(tags) == len(set(tags)) == sel["race"]["chains"] + len(exam_files)
    assert {r.info.status for r in chains} == {"FINISHED"}
    assert parent.data.tags["dsl.verdict"] == sel["race"]["verdict"]["text"][:5000]
    assert parent.data.metrics["holdout_ua"] == pytest.approx(ex["winner"]["ua"]["mean"])


def test_objective_seeds_judge_every_trial_by_the_mean_of_the_same_seeds(tones, tmp_path, ray_session) -> None:
    from mlflow import MlflowClient

    from sweeps.search.launcher import run_sweep
    from sweeps.search.spec import load_sweep

    root, rows = tones
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_sweep(_sweep(tmp_path, "two_seeds", _manifest(root, rows, "two.csv"), tmp_path / "features",
                             objective_seeds=2))
    out = run_sweep(spec, tracking_uri=uri)
    assert not out.interrupted and out.errors == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("two_seeds")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dsl.role") == "trial"]
    assert len(trials) == 2
    for r in trials:
        assert r.data.tags["dsl.objective_seeds"] == "0,1"
        for step in (0, 1):
            ua = {k: {m.step: m.value for m in client.get_metric_history(r.info.run_id, k)}[step]
                  for k in ("ua", "seed_ua/0", "seed_ua/1")}
            assert ua["ua"] == pytest.approx((ua["seed_ua/0"] + ua["seed_ua/1"]) / 2)
    # paired across trials: iteration 0 is the same chain pair for both rules (one of them was served it)
    zero = [{k: client.get_metric_history(r.info.run_id, k)[0].value for k in ("seed_ua/0", "seed_ua/1")}
            for r in trials]
    assert zero[0] == zero[1]
    cached = sorted(client.get_metric_history(r.info.run_id, "cached_folds")[0].value for r in trials)
    assert cached[-1] > 0
