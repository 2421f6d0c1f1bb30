"""The tiny sweep the integration tests run, and the MLflow / Tune / Optuna lookups they share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.data import emodb_root, tiny_emodb

SKIP_NO_EMODB = "EmoDB not found (../shared/data/emodb or $DSL_EMODB): the cluster tests need it"
METRIC_KEYS = ("mean_fold_ua", "ua", "wa", "fold_ua/0", "fold_ua/1")


def tiny_sweep(name: str, data: str | Path, cache_dir: str | Path, storage: str | Path, **top) -> dict:
    """A sweep definition that runs in seconds per trial on a tiny corpus (2 folds, 1 epoch, 160 ms hop)."""
    raw = {
        "name": name,
        "base": {"preset": "cpu", "corpus": "emodb", "data": str(data), "cache_dir": str(cache_dir),
                 "segments": {"hop": 16}, "protocol": {"folds": 2, "eval_folds": 2},
                 "train": {"epochs": 1, "patience": 1, "batch_size": 64}},
        "search": {"rule": ["baseline", "bdsl", "wdsl", "hdl"], "alpha": {"low": 0.0, "high": 1.0, "step": 0.1},
                   "iterations": {"low": 1, "high": 2}},
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 3},
        "num_samples": 4, "max_concurrent": 2, "resources": {"cpu": 1}, "max_failures": 1,
        "storage_path": str(storage),
    }
    raw.update(top)
    return raw


def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny EmoDB folder, feature cache), shared with the other sweep tests of the session; or skip."""
    root = emodb_root()
    if root is None:
        pytest.skip(SKIP_NO_EMODB)
    base = tmp_path_factory.getbasetemp()
    return tiny_emodb(root, base / "tiny_emodb"), base / "dsl-cache"


def write_sweep(tmp: Path, name: str, data: Path, cache: Path, **top: Any) -> Path:
    """The tiny sweep of `tiny_sweep` with `top` overrides, as `tmp/<name>.yaml`."""
    raw = tiny_sweep(name, data, cache, tmp / "ray_results", **top)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def children(client, name: str) -> list:
    """The trial (child) runs of sweep `name`."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=200)
    return [r for r in runs if r.data.tags.get("dsl.role") == "trial"]


def steps(client, run_id: str, key: str = "mean_fold_ua") -> list[int]:
    """Every logged step of a metric, duplicates included, sorted."""
    return sorted(int(m.step) for m in client.get_metric_history(run_id, key))


def study(tmp: Path, name: str):
    """The Optuna study of sweep `name` whose storage path is `tmp/ray_results`."""
    import optuna

    from sweeps.search.searcher import journal_storage

    return optuna.load_study(study_name=name, storage=journal_storage(tmp / "ray_results" / name / "optuna.journal"))


def snapshot(exp_dir: Path) -> dict[str, dict]:
    """Trial id -> {status, last_result} from the newest Tune experiment snapshot (what --resume restores)."""
    files = sorted(exp_dir.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, ValueError):  # being rewritten
        return {}
    out = {}
    for trial_json, meta_json in data["trial_data"]:
        t, meta = json.loads(trial_json), json.loads(meta_json)
        out[t["trial_id"]] = {"status": t["status"], "last_result": meta.get("last_result") or {}}
    return out
