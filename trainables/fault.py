"""Fault injection for tests: `DSL_SWEEP_FAIL_ONCE=/abs/marker` makes the first trial that finishes
iteration `DSL_SWEEP_FAIL_AFTER` (default 0) raise once, after its checkpoint was reported."""
from __future__ import annotations

import os


class InjectedFailure(RuntimeError):
    """Raised once by `maybe_fail` to exercise trial retries."""


def maybe_fail(iteration: int, trial_id: str) -> None:
    marker = os.environ.get("DSL_SWEEP_FAIL_ONCE")
    if not marker or iteration != int(os.environ.get("DSL_SWEEP_FAIL_AFTER", "0")):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one trial, only once
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(trial_id)
    raise InjectedFailure(f"injected failure after iteration {iteration} (DSL_SWEEP_FAIL_ONCE={marker})")
