"""Runners execute fold jobs: in this process, or in a pool of spawned worker processes.

A runner is called with a batch of jobs and returns their outputs in order. A runner that also has
`submit(job) -> concurrent.futures.Future` lets the chain start a job of the next iteration as soon as
the folds it trains on are done, instead of waiting for the whole iteration (see `dsl.pipeline.chain`).

A fold worker can die: the kernel's OOM killer sends SIGKILL, or a script without an
`if __name__ == "__main__":` guard is re-imported by every spawned worker, which then fails at start-up.
`concurrent.futures` only reports "a process terminated abruptly", and before the corpus left the
start-up pipe the second case hung the parent for ever (it blocked writing the corpus to a worker that
had died without reading it). So the corpus reaches the workers through an anonymous in-memory file,
the workers note in shared memory which fold each one trains, and a dead worker becomes a
`FoldWorkerError` that names the fold, the signal or exit code and the likely cause.
"""
from __future__ import annotations

import mmap
import os
import pickle
import signal
import sys
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from dsl.config import ChainConfig
from dsl.data.bundle import CorpusData
from dsl.data.segments import build_segments
from dsl.execution.fold_job import FoldJob, FoldOutput, run_fold_job


class Runner(Protocol):
    def __call__(self, jobs: Sequence[FoldJob]) -> list[FoldOutput]: ...


class SubmittingRunner(ABC):
    """A runner that starts one job at a time; calling it runs a batch and waits for all of it."""

    # Whether `submit` returns while the job runs elsewhere (worker processes, Ray tasks). A runner that
    # trains in the caller's process returns a finished future instead: starting the next iteration's
    # folds early then only delays the report of this one (and a scheduler's decision to stop the trial).
    concurrent: bool = True

    @abstractmethod
    def submit(self, job: FoldJob) -> Future: ...

    def __call__(self, jobs: Sequence[FoldJob]) -> list[FoldOutput]:
        return [f.result() for f in [self.submit(job) for job in jobs]]

    def close(self) -> None:  # noqa: B027 - optional hook: runners without workers have nothing to release
        """Release workers; a job still running may be stopped."""


def submitter(runner: Runner) -> Callable[[FoldJob], Future] | None:
    """The runner's `submit`, if it has one."""
    return getattr(runner, "submit", None)


class FoldWorkerError(RuntimeError):
    """A fold worker process died (killed, crashed or failed at start-up), so a fold cannot finish.

    `job` is the fold whose result was asked for; `pid` and `exitcode` are those of the dead worker
    (a negative exit code is the number of the signal that killed it), None where unknown.
    """

    def __init__(self, message: str, job: FoldJob | None = None, pid: int | None = None,
                 exitcode: int | None = None):
        super().__init__(message)
        self.job, self.pid, self.exitcode = job, pid, exitcode


_OOM_HINT = "likely out of memory (the kernel's OOM killer) or killed by hand"
_MAIN_GUARD_HINT = ("likely cause: the main module was re-imported by the spawned worker: guard the script's "
                    'top-level code with `if __name__ == "__main__":` (Python\'s multiprocessing spawn start '
                    "method requires it)")
_OTHER_HINT = "see the worker's output above for why"

_STARTING, _IDLE, _RUNNING = 1, 2, 3  # worker states on the board; 0: no worker in the slot
_FIELDS = 5  # per worker: pid, state, iteration, scope, fold


class _Board:
    """Which fold each worker trains, in shared memory the parent reads once a worker has died.

    Plain shared cells without a lock: a worker killed while holding a lock would block the parent.
    A worker writes its fold before its state, so a fold read as running is never half-written.
    """

    def __init__(self, ctx: Any, workers: int):
        self._cells = ctx.RawArray("q", _FIELDS * workers)
        self._claimed = ctx.RawValue("i", 0)
        self._claim_lock = ctx.Lock()  # only workers take it, once each, at start-up
        self._slot: int | None = None  # this worker's slot (set in the worker)

    def claim(self) -> None:
        with self._claim_lock:
            slot, self._claimed.value = self._claimed.value, self._claimed.value + 1
        if slot < len(self._cells) // _FIELDS:
            self._slot = slot
            self._cells[slot * _FIELDS] = os.getpid()
            self._cells[slot * _FIELDS + 1] = _STARTING

    def mark(self, state: int, job: FoldJob | None = None) -> None:
        if self._slot is None:
            return
        base = self._slot * _FIELDS
        if job is not None:
            self._cells[base + 2:base + 5] = [job.iteration, job.scope, job.fold]
        self._cells[base + 1] = state

    def state_of(self, pid: int) -> tuple[int, tuple[int, int, int]] | None:
        """The worker's state and its last fold (iteration, scope, fold); None if it never started."""
        cells = list(self._cells)
        for base in range(0, len(cells), _FIELDS):
            if cells[base] == pid:
                return cells[base + 1], (cells[base + 2], cells[base + 3], cells[base + 4])
        return None


class _Payload:
    """An object pickled once into an anonymous file whose descriptor the spawned workers inherit.

    Pickled into the spawn pipe instead (as initializer arguments), a corpus larger than the pipe buffer
    blocks `Process.start()` until the child has read it. A child that dies first, like a re-imported
    script without a main guard, never reads it, and the parent hangs for ever in `submit()`.
    """

    def __init__(self, fd: int = -1, obj: Any = None):
        self.fd, self._obj = fd, obj

    @classmethod
    def write(cls, obj: Any) -> _Payload:
        if sys.platform == "win32":  # no descriptor passing to spawned processes: in the spawn pipe
            return cls(obj=obj)
        if hasattr(os, "memfd_create"):  # memory only, gone with its last descriptor
            fd = os.memfd_create("dsl-fold-workers", os.MFD_CLOEXEC)
        else:
            with tempfile.TemporaryFile() as f:  # already unlinked: nothing is left behind
                fd = os.dup(f.fileno())
        with open(fd, "wb", closefd=False) as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(fd)

    def __reduce__(self) -> tuple:
        if self.fd < 0:
            return _Payload, (-1, self._obj)
        # Only while spawning: the child inherits the file.
        from multiprocessing.reduction import DupFd

        return _inherit_payload, (DupFd(self.fd),)

    def load(self) -> Any:
        if self.fd < 0:
            return self._obj
        try:
            with mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ) as view:
                return pickle.loads(view)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _inherit_payload(dup: Any) -> _Payload:
    return _Payload(dup.detach())


_WORKER: dict = {}


def _init_worker(payload: _Payload, board: _Board) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the chain and its workers (`LocalRunner.close`),
    # so a worker ignores it instead of printing a KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    board.claim()
    data, cfg = payload.load()
    _WORKER.update(data=data, cfg=cfg, board=board, seg=build_segments(data.frame_offsets, cfg.segments, warn=False))
    board.mark(_IDLE)


def _run_in_worker(job: FoldJob) -> FoldOutput:
    board: _Board = _WORKER["board"]
    board.mark(_RUNNING, job)
    try:
        return run_fold_job(job, _WORKER["data"], _WORKER["cfg"], _WORKER["seg"])
    finally:
        board.mark(_IDLE)


def _worker_processes(pool: Any) -> list:
    """The pool's worker processes. `ProcessPoolExecutor` has no public way to reach them, and only they
    tell which worker died and how (`exitcode`); `shutdown()` forgets them, so take them before."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _job_name(key: tuple[int, int, int]) -> str:
    return f"iteration {key[0]}, scope {key[1]}, fold {key[2]}"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "died (exit status unknown)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _PoolWatch:
    """What explains a broken pool: which workers died, how, and which fold each one was training."""

    def __init__(self, pool: Any, board: _Board, payload: _Payload):
        self.pool, self.board, self.payload = pool, board, payload
        self.closing = False  # close() kills the workers on purpose: nothing to explain
        self._deaths: list[tuple[int, int | None]] | None = None
        self._lock = threading.Lock()

    def deaths(self) -> list[tuple[int, int | None]]:
        """(pid, exit code) of the dead workers, found once: after the first failed future the pool
        terminates the other workers itself."""
        with self._lock:
            if self._deaths is None:
                from multiprocessing.connection import wait

                procs = _worker_processes(self.pool)
                try:
                    ready = set(wait([p.sentinel for p in procs], timeout=0))
                except (OSError, ValueError):  # a process object already closed
                    ready = set()
                self._deaths = []
                for p in procs:
                    if p.sentinel in ready:
                        p.join(timeout=2)  # its pipe closes just before it can be reaped
                        self._deaths.append((p.pid, p.exitcode))
            return self._deaths

    def explain(self, job: FoldJob, exc: BaseException) -> BaseException:
        """The error `job`'s future raises when the pool broke: a FoldWorkerError naming the dead worker."""
        if self.closing:
            return exc
        key = (job.iteration, job.scope, job.fold)
        deaths = self.deaths()
        if not deaths:
            err = FoldWorkerError(f"{_job_name(key)} cannot finish: the fold worker pool broke ({exc})", job)
        else:
            states = [self.board.state_of(pid) for pid, _ in deaths]
            own = [i for i, s in enumerate(states) if s is not None and s[0] == _RUNNING and s[1] == key]
            # The dead worker that ran this job, else one that was not SIGTERMed: after a worker died
            # unnoticed (no job pending), the pool has terminated the others before anyone asks.
            i = own[0] if own else min(range(len(deaths)), key=lambda j: deaths[j][1] == -signal.SIGTERM)
            (pid, code), state = deaths[i], states[i]
            if code == -signal.SIGKILL:
                hint = _OOM_HINT
            elif state is None:
                hint = _MAIN_GUARD_HINT
            else:
                hint = _OTHER_HINT
            others = f" ({len(deaths) - 1} more worker(s) died too)" if len(deaths) > 1 else ""
            if own:
                msg = f"{_job_name(key)}: its fold worker (pid {pid}) {_exit_text(code)} while training{others}; {hint}"
            else:
                if state is None:
                    where, verb = "at start-up, before running any fold", "cannot run"
                elif state[0] == _STARTING:
                    where, verb = "at start-up, while loading the corpus", "cannot run"
                elif state[0] == _RUNNING:
                    where, verb = f"while training {_job_name(state[1])}", "cannot finish"
                else:
                    where, verb = "between folds", "cannot finish"
                msg = (f"{_job_name(key)} {verb}: fold worker pid {pid} {_exit_text(code)} {where}, which stops "
                       f"the whole worker pool{others}; {hint}")
            err = FoldWorkerError(msg, job, pid, code)
        err.__cause__ = exc
        return err


class _FoldFuture(Future):
    """The pool's future for one fold, with a dead worker's BrokenProcessPool turned into a
    FoldWorkerError. Errors raised by the fold's own code pass through unchanged."""

    def __init__(self, inner: Future, job: FoldJob, watch: _PoolWatch):
        super().__init__()
        self._inner, self._job, self._watch = inner, job, watch
        inner.add_done_callback(self._settle)

    def _settle(self, inner: Future) -> None:
        if inner.cancelled():
            super().cancel()
            self.set_running_or_notify_cancel()  # tells `concurrent.futures.wait` callers
            return
        exc = inner.exception()
        if exc is None:
            self.set_result(inner.result())
            return
        if isinstance(exc, BrokenProcessPool):
            try:
                exc = self._watch.explain(self._job, exc)
            except Exception as bug:
                exc = FoldWorkerError(f"{_job_name((self._job.iteration, self._job.scope, self._job.fold))} "
                                      f"cannot finish: a fold worker died ({bug!r} while finding out more)", self._job)
        self.set_exception(exc)

    def cancel(self) -> bool:
        return self._inner.cancel()  # on success its callback cancels this future

    def running(self) -> bool:
        return self._inner.running()


class LocalRunner(SubmittingRunner):
    """Fold jobs in this process (`workers` = 1) or in `workers` spawned processes, one job each at a time.

    On a 2-core CPU two single-threaded folds side by side train ~1.6x faster than one fold on two
    threads. Results do not depend on the number of workers: every job carries its own seed. The pool
    is started on the first job and kept for the whole chain, so workers import torch once. A worker
    that dies makes the futures of the pool's unfinished jobs raise `FoldWorkerError`.
    """

    def __init__(self, data: CorpusData, cfg: ChainConfig):
        self.data, self.cfg = data, cfg
        self.workers = max(1, cfg.train.workers)
        self.concurrent = self.workers > 1
        self._seg = None
        self._pool = None
        self._watch: _PoolWatch | None = None
        self._futures: list[Future] = []  # the pool's own futures of jobs not known to be done

    def submit(self, job: FoldJob) -> Future:
        if self.workers == 1:
            fut: Future = Future()
            try:
                if self._seg is None:
                    self._seg = build_segments(self.data.frame_offsets, self.cfg.segments, warn=False)
                fut.set_result(run_fold_job(job, self.data, self.cfg, self._seg))
            except BaseException as exc:
                fut.set_exception(exc)
            return fut
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")
            board, payload = _Board(ctx, self.workers), _Payload.write((self.data, self.cfg))
            self._pool = ProcessPoolExecutor(self.workers, ctx, _init_worker, (payload, board))
            self._watch = _PoolWatch(self._pool, board, payload)
        watch = self._watch
        assert watch is not None
        try:
            inner = self._pool.submit(_run_in_worker, job)
        except BrokenProcessPool as exc:  # a worker died since the last job was submitted
            fut = Future()
            fut.set_exception(watch.explain(job, exc))
            return fut
        if len(_worker_processes(self._pool)) >= self.workers:
            watch.payload.close()  # every worker is started (the pool starts them one job at a time)
        self._futures = [f for f in self._futures if not f.done()] + [inner]
        return _FoldFuture(inner, job, watch)

    def close(self) -> None:
        """Stop the workers. A job still running (the chain was stopped early, e.g. by a scheduler) is
        killed rather than waited for; queued jobs are cancelled."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        watch, self._watch = self._watch, None
        busy = [f for f in self._futures if not f.done()]
        procs = _worker_processes(pool)
        manager = getattr(pool, "_executor_manager_thread", None)
        if watch is not None:
            watch.closing = True  # folds killed below are not worker faults: their futures say BrokenProcessPool
        pool.shutdown(wait=not busy, cancel_futures=True)
        if busy:  # SIGKILL: nothing to save in a fold that is cut short
            for proc in procs:
                proc.kill()
            if manager is not None:  # it notices the dead workers, fails their futures and reaps every worker
                manager.join(timeout=30)
            for proc in procs:
                proc.join(timeout=10)
        if watch is not None:
            watch.payload.close()
        self._futures.clear()


def local_runner(data: CorpusData, cfg: ChainConfig) -> LocalRunner:
    return LocalRunner(data, cfg)
