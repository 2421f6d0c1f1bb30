"""Fault injection for the sweep tests, as a plugin module: name it in the sweep's base config
(`plugins: [tests.support.fault]`) and every trial imports it (`ChainConfig.plugins`), which wraps
`ray.tune.report` in that process. With `DSL_SWEEP_FAIL_ONCE=/abs/marker` in the trials' environment, the
first trial that reports iteration `DSL_SWEEP_FAIL_AFTER` (default 0) raises `InjectedFailure` once, right
after that report returned (its checkpoint is Tune's), and writes its trial id to the marker. Without the
variable the wrapper only reports. Nothing of this is in the installed package."""
from __future__ import annotations

import os

from ray import tune

FAIL_ONCE, FAIL_AFTER = "DSL_SWEEP_FAIL_ONCE", "DSL_SWEEP_FAIL_AFTER"
MODULE = __name__  # what a sweep file names in `plugins`


class InjectedFailure(RuntimeError):
    """Raised once by `maybe_fail` to exercise trial retries."""


def maybe_fail(iteration: int, trial_id: str) -> None:
    """Raise `InjectedFailure` if `iteration` is the configured one and no trial has failed yet."""
    marker = os.environ.get(FAIL_ONCE)
    if not marker or iteration != int(os.environ.get(FAIL_AFTER, "0")):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one trial, only once
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(trial_id)
    raise InjectedFailure(f"injected failure after iteration {iteration} ({FAIL_ONCE}={marker})")


def _install() -> None:
    report = tune.report
    if getattr(report, "dsl_fault", False):  # imported twice under another name: wrap once
        return

    def report_then_maybe_fail(metrics, *args, **kwargs):
        report(metrics, *args, **kwargs)
        if "iteration" in metrics:
            maybe_fail(int(metrics["iteration"]), tune.get_context().get_trial_id() or "local")

    report_then_maybe_fail.dsl_fault = True  # type: ignore[attr-defined]
    tune.report = report_then_maybe_fail


_install()
