"""Claims on missing chain steps: two trials that need the same fold training at once compute it once.

The step cache (`dsl.execution.step_cache`) makes a step computed once cheap for everyone after. Trials of a sweep
start together, though, and all need iteration 0 at the same moment. So a fold job that misses the cache
runs under a *claim*: a small file next to the cache's entries, made with `O_CREAT | O_EXCL`, which only
one process can create. The claimant trains the fold, stores the entry and then drops the claim. A job
that finds the step claimed (or already stored) does not train; it returns `StepElsewhere`, and its chain
goes on with its other folds and picks the entry up when it appears (`ChainIterator.poll_waiting`). Two
trials on two cores thus share iteration 0's folds between them instead of each training all of them.

Claims only save work; results never depend on them (an entry is the same whoever computes it, and the
first stored entry wins). A claim whose owner died is taken over: its file names the host and process, and
a live owner touches it every `HEARTBEAT_S` seconds, so a dead one is seen at once on the same host and
after `STALE_AFTER_S` seconds from any other node sharing the storage. A job that was deferred once is
resubmitted without a claim if the entry does not appear, so no job can be deferred forever (for instance
on a node whose cache directory is not the one its chain reads).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dsl.execution.step_cache import StepCache

HEARTBEAT_S = 10.0  # a claimant touches its claim this often
STALE_AFTER_S = 90.0  # a claim untouched this long is taken over (its owner is gone or cut off)


@dataclass(frozen=True)
class StepClaim:
    """What a fold job carries to be run under a claim: the step cache's directory and the step's key."""

    root: str
    key: str

    @property
    def path(self) -> Path:
        return Path(self.root) / "claims" / self.key[:2] / f"{self.key}.claim"


def claim_of(cache: StepCache, key: str) -> StepClaim:
    return StepClaim(str(cache.root), key)


@dataclass(frozen=True)
class StepElsewhere:
    """A fold job's answer instead of an output: the step is stored, or being computed by another process."""

    key: str


def _owner_alive(info: dict) -> bool:
    """False when the claim's owner is a process of this host that no longer exists."""
    if info.get("host") != socket.gethostname():
        return True  # another node: only the heartbeat can tell
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def is_live(path: Path) -> bool:
    """Whether a claim file exists and its owner is alive and touched it within `STALE_AFTER_S`."""
    try:
        if time.time() - path.stat().st_mtime >= STALE_AFTER_S:
            return False  # untouched too long, whatever it says (also a damaged claim file)
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # being written right now (or damaged: stale once it is old enough)
        return True
    return _owner_alive(info)


def try_claim(claim: StepClaim) -> bool:
    """Create the claim file; True if this process now holds it. A stale claim is taken over."""
    path = claim.path
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if is_live(path):
                return False
            dead = path.with_name(f".dead-{os.getpid()}-{path.name}")
            try:  # move the dead claim aside (atomic), so two processes taking it over do not both remove a new one
                os.replace(path, dead)
                dead.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, fh)
        return True
    return False


class _Heartbeat:
    """Touches the claim file every `HEARTBEAT_S` seconds while the step is computed; drops it at the end."""

    def __init__(self, path: Path):
        self.path, self.stop = path, threading.Event()
        self.thread = threading.Thread(target=self._beat, name="step-claim-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def run_claimed(claim: StepClaim, compute: Callable[[], object]) -> object:
    """Compute a fold training under its claim and store it, or answer `StepElsewhere` when it is stored
    already or another live process holds the claim. The entry is stored before the claim is dropped, so
    a process that sees no claim and no entry knows it must compute."""
    cache = StepCache(claim.root)
    if cache.has_fold(claim.key) or not try_claim(claim):
        return StepElsewhere(claim.key)
    with _Heartbeat(claim.path):
        if cache.has_fold(claim.key):  # stored between the check and the claim
            return StepElsewhere(claim.key)
        return cache.put_fold(claim.key, compute())
