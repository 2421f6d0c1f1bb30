"""`dsl-sweep` (`python -m sweeps.cli`) as a subprocess driver, and polling with a deadline."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.data import REPO


class Driver:
    """`python -m sweeps.cli ARGS` as its own process; a thread collects its output lines."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
        self.lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self, tail: int = 80) -> str:
        return "".join(list(self.lines)[-tail:])

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise AssertionError(f"the sweep did not finish in {timeout} s:\n{self.output()}") from None
        self._pump.join(timeout=30)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, driver: Driver | None = None) -> Any:
    """Poll `pred` until it returns something truthy; fail if the driver exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except Exception as exc:  # e.g. SQLite busy while trials write: just poll again
            if "locked" not in str(exc).lower() and "no such table" not in str(exc).lower():
                raise
            value = None
        if value:
            return value
        if driver is not None and driver.proc.poll() is not None:
            raise AssertionError(f"the sweep exited (rc {driver.proc.returncode}) before {what}:\n{driver.output()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{driver.output() if driver else ''}")


def driver_env(uri: str) -> dict[str, str]:
    env = {**os.environ, "DSL_PROGRESS": "0", "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("DSL_SWEEP_VERBOSE", None)
    return env


def started(driver: Driver) -> bool:
    """A trial has started, so the driver has created the MLflow store and the sweep's parent run."""
    return any(" start " in ln for ln in list(driver.lines))
