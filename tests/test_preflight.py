"""Preflight refusals before a cluster sweep: tracking URIs other nodes cannot reach, trials that never fit."""
from __future__ import annotations

import logging

import pytest

from sweeps.cluster.preflight import is_machine_local, resource_problem, tracking_problem
from sweeps.search.session import _resource_warnings_only


@pytest.mark.parametrize("uri,local", [
    ("sqlite:///mlflow.db", True), ("mlflow.db", True), ("file:///tmp/mlruns", True),
    ("http://localhost:5000", True), ("http://127.0.0.1:5000", True), ("postgresql://u@localhost/db", True),
    ("http://mlflow:5000", False), ("https://mlflow.example.com", False), ("postgresql://u@db.internal/x", False),
])
def test_machine_local_uris(uri: str, local: bool) -> None:
    assert is_machine_local(uri) is local


def test_unreachable_tracking_uri_is_refused_only_with_other_hosts() -> None:
    msg = tracking_problem("sqlite:///mlflow.db", ["10.0.0.1", "10.0.0.2"], "10.0.0.1")
    assert msg and "can only be reached from this machine" in msg and "--tracking-uri http://" in msg
    assert tracking_problem("sqlite:///mlflow.db", ["10.0.0.1", "10.0.0.1"], "10.0.0.1") is None  # one machine
    assert tracking_problem("http://mlflow:5000", ["10.0.0.1", "10.0.0.2"], "10.0.0.1") is None


def test_impossible_resources_are_refused() -> None:
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert resource_problem([{"CPU": 4.0, "GPU": 0.5}], nodes) is None
    msg = resource_problem([{"CPU": 4.0, "GPU": 2.0}], nodes)
    assert msg and "largest node has" in msg and "gpu: 0.5" in msg
    assert "whole cluster has" in resource_problem([{"CPU": 1.0}] + [{"CPU": 4.0, "GPU": 0.5}] * 3, nodes)
    assert resource_problem([{"CPU": 1.0}], []) == "the Ray cluster has no alive node"


def test_tune_resource_warnings_get_through_the_quiet_console() -> None:
    def rec(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("ray.tune", level, __file__, 1, msg, None, None)

    assert _resource_warnings_only(rec("No trial is running and no new trial has been started... insufficient "
                                       "resources: Ignore this message if the cluster is autoscaling"))
    assert not _resource_warnings_only(rec("Trial train_chain_1 completed."))
    assert not _resource_warnings_only(rec("resources", logging.INFO))


def test_node_check_names_an_unwritable_storage_path_and_a_dead_tracking_server(tmp_path, monkeypatch) -> None:
    from sweeps.cluster.node_probe import check_storage, check_this_node, check_tracking

    assert check_storage(str(tmp_path / "ok")) is None and not list((tmp_path / "ok").iterdir())
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert "storage path" in check_storage(str(blocked / "sub"))
    monkeypatch.setenv("DSL_MLFLOW_TIMEOUT", "1")
    dead = check_tracking("http://127.0.0.1:9", None)  # nothing listens on the discard port
    assert dead and dead.startswith("MLflow at http://127.0.0.1:9:")
    assert check_tracking(f"sqlite:///{tmp_path / 'm.db'}", None) is None
    host, problems = check_this_node("http://127.0.0.1:9", None, str(blocked / "sub"))
    assert host and len(problems) == 2


def test_node_check_logs_and_deletes_a_probe_artifact(tmp_path) -> None:
    from mlflow import MlflowClient

    from sweeps.cluster.node_probe import check_tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("x", artifact_location=str(tmp_path / "art"))
    assert check_tracking(uri, exp) is None
    assert c.search_runs([exp]) == []  # the probe run is deleted
    assert list((tmp_path / "art").rglob("preflight.txt"))  # its artifact was uploaded
