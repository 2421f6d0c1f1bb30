"""A sweep's trials share chain steps through `<storage>/step_cache`: a trial whose iteration 0 another trial
computed is served it, MLflow says which iterations came from the cache, and the numbers equal a sweep run
with `--no-step-cache`."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.sweep import children, tiny_data, write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.emodb]


def _metrics(client, name: str) -> dict[tuple[str, int], tuple[float, float]]:
    """(rule, iteration) -> (wa, ua) of every trial of sweep `name`."""
    out = {}
    for run in children(client, name):
        rule = run.data.params["labels.rule"]
        for key in ("wa", "ua"):
            for m in client.get_metric_history(run.info.run_id, key):
                out.setdefault((rule, int(m.step)), {})[key] = m.value
    return {k: (v["wa"], v["ua"]) for k, v in out.items()}


def test_trials_share_iteration_zero_and_match_an_uncached_sweep(tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    from mlflow import MlflowClient

    from sweeps.cli import main

    data, cache = tiny_data(tmp_path_factory)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    top = {"search": {"rule": ["bdsl", "wdsl"]}, "sampler": {"type": "grid"}, "num_samples": 2,
           "max_concurrent": 1, "scheduler": "none"}
    for name, flags in (("cached", []), ("uncached", ["--no-step-cache"])):
        path = write_sweep(tmp_path, name, data, cache, **top)
        assert main(["sweep", str(path), "--tracking-uri", uri, "--trials", "2", *flags]) == 0
    client = MlflowClient(uri)
    cached = sorted(children(client, "cached"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in cached] == ["FINISHED", "FINISHED"]
    # the second trial (another rule) trains the same iteration 0: served; its iteration 1 is its own
    assert [r.data.tags.get("dsl.cached_iterations") for r in cached] == ["", "0"]
    assert all(r.data.tags.get("dsl.cached_iterations") == "" for r in children(client, "uncached"))
    assert _metrics(client, "cached") == _metrics(client, "uncached")
    entries = list((tmp_path / "ray_results" / "step_cache" / "folds").glob("*/*.npz"))
    assert len(entries) == 2 * 3  # 2 folds x (iteration 0 + each rule's iteration 1)
