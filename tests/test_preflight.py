"""Preflight refusals before a cluster sweep: tracking URIs other nodes cannot reach, trials that never fit."""
from __future__ import annotations

import logging

import pytest

from sweeps.preflight import is_machine_local, resource_problem, tracking_problem
from sweeps.session import _resource_warnings_only


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
