"""Fold workers that die say so at once: a script without a main guard fails in seconds instead of hanging,
a SIGKILLed worker (what the OOM killer sends) is a FoldWorkerError naming the fold, and `dsl-sweep run`
reports it in one line. An ordinary error in a healthy worker's training still propagates unchanged."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

from dsl import ChainConfig
from dsl.execution.fold_job import derive_seed
from dsl.execution.fold_runners import FoldWorkerError
from dsl.studies.run import run
from sweeps.cli import main
from tests.support.data import write_tone

REPO = Path(__file__).resolve().parents[1]
SMALL = {"segments.hop": 4, "train.epochs": 3, "train.batch_size": 16, "train.lr": 3e-3, "protocol.folds": 2,
         "protocol.eval_folds": 2, "iterations": 0, "train.num_threads": 1, "train.workers": 2, "seed": 0}

DOOMED = '''
import os
import signal
import time

import torch
from torch import nn

from dsl.training.backbones import register_backbone

DOOMED_SEED = {seed}


class Doomed(nn.Module):
    """A linear model on the mean frame energy; the network of the doomed fold fails on its 2nd batch."""

    def __init__(self, n_classes):
        super().__init__()
        self.doomed = torch.initial_seed() == DOOMED_SEED  # `fit` seeds torch with the job's seed
        self.calls = 0
        self.out = nn.Linear(1, n_classes)

    def forward(self, x):
        self.calls += 1
        if self.doomed and self.calls == 2:
            with open({stamp!r}, "w") as f:
                f.write(repr(time.time()))
            {action}
        return self.out(x.mean(dim=(1, 2, 3))[:, None])


@register_backbone("{name}")
def doomed(n_classes):
    return Doomed(n_classes)
'''
KILL = "os.kill(os.getpid(), signal.SIGKILL)"


@pytest.fixture(scope="module")
def tiny_tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve tone 'utterances': three pitch classes, two speakers, as a CSV manifest."""
    root = tmp_path_factory.mktemp("tiny-tones")
    rows = ["path,label,speaker"]
    rng = np.random.default_rng(0)
    for c, base in enumerate((200.0, 800.0, 2400.0)):
        for i in range(4):
            write_tone(root / f"c{c}_{i}.wav", seconds=0.6 + 0.05 * i, freq=base * (1 + 0.1 * rng.random()))
            rows.append(f"c{c}_{i}.wav,class{c},spk{i % 2}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.fixture
def doomed_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make a plugin module whose backbone runs `action` in the worker training iteration 0, fold 1, and
    return (module, backbone name, file the worker stamps with the time just before the action)."""
    made: list[str] = []

    def make(action: str) -> tuple[str, str, Path]:
        module = f"dsl_doomed_{uuid.uuid4().hex[:8]}"
        stamp = tmp_path / f"{module}.stamp"
        (tmp_path / f"{module}.py").write_text(DOOMED.format(
            seed=derive_seed(SMALL["seed"], 0, 0, 1), stamp=str(stamp), action=action, name=f"{module}_net"))
        made.append(module)
        return module, f"{module}_net", stamp

    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit the parent's sys.path
    yield make
    for module in made:
        sys.modules.pop(module, None)


def _cfg(manifest: Path, cache: Path, **extra) -> ChainConfig:
    return ChainConfig(corpus="csv", data=str(manifest), cache_dir=str(cache)).replace(**{**SMALL, **extra})


def _assert_no_zombie_children() -> None:
    """Every worker process of the finished chain is reaped (and none is left running)."""
    assert multiprocessing.active_children() == []
    tasks = Path(f"/proc/{os.getpid()}/task")
    if not tasks.is_dir():
        return
    children: set[int] = set()
    for t in tasks.iterdir():
        try:
            children |= {int(p) for p in (t / "children").read_text().split()}
        except FileNotFoundError:  # that thread ended while we looked
            continue
    states = {}
    for pid in children:
        try:
            states[pid] = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass
    assert "Z" not in states.values(), states


SCRIPT = '''
from dsl import ChainConfig
from dsl.studies.run import run

cfg = ChainConfig(corpus="csv", data={data!r}, cache_dir={cache!r}).replace(**{overrides!r})
result = run(cfg, show_progress=False)
print("UA", result.iterations[0].ua)
'''


def _run_script(path: Path, text: str) -> tuple[subprocess.CompletedProcess, float]:
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "DSL_PROGRESS": "0"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path)], check=False, cwd=path.parent, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.perf_counter() - start


def test_script_without_main_guard_fails_fast_and_says_why(tiny_tones, feature_cache, tmp_path) -> None:
    body = SCRIPT.format(data=str(tiny_tones), cache=str(feature_cache), overrides=SMALL)
    proc, seconds = _run_script(tmp_path / "demo.py", body)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert seconds < 30, seconds
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dsl.execution.fold_runners.FoldWorkerError: iteration 0,") and "at start-up" in last, proc.stderr
    assert 'if __name__ == "__main__":' in last and "re-imported" in last
    print(f"unguarded script failed after {seconds:.1f} s")

    head, tail = body.split("cfg = ")
    guarded = head + 'if __name__ == "__main__":\n' + textwrap.indent("cfg = " + tail, "    ")
    proc, seconds = _run_script(tmp_path / "demo_guarded.py", guarded)
    assert proc.returncode == 0, proc.stderr
    assert "UA" in proc.stdout
    print(f"guarded script finished after {seconds:.1f} s")


def test_sigkilled_worker_is_a_fold_worker_error_naming_the_fold(tiny_tones, feature_cache, doomed_backbone) -> None:
    module, net, stamp = doomed_backbone(KILL)
    cfg = _cfg(tiny_tones, feature_cache, plugins=[module], backbone=net)
    with pytest.raises(FoldWorkerError) as info:
        run(cfg, show_progress=False)
    seconds = time.time() - float(stamp.read_text())
    assert seconds < 10, seconds
    msg = str(info.value)
    assert "iteration 0, scope 0, fold 1" in msg and "was killed by SIGKILL while training" in msg, msg
    assert "likely out of memory (the kernel's OOM killer) or killed by hand" in msg
    assert info.value.exitcode == -9 and info.value.job is not None and info.value.job.iteration == 0
    assert isinstance(info.value.__cause__, BrokenProcessPool)
    _assert_no_zombie_children()
    print(f"FoldWorkerError {seconds:.2f} s after the kill: {msg}")


def test_cli_reports_a_killed_worker_in_one_line(tiny_tones, feature_cache, doomed_backbone, tmp_path, capsys) -> None:
    module, net, stamp = doomed_backbone(KILL)
    code = main(["run", "--corpus", "csv", "--data", str(tiny_tones), "--cache-dir", str(feature_cache),
                 "--backbone", net, "--set", f"plugins=[{module}]", "--set", "train.workers=2", "--seed", "0",
                 "--iterations", "0", "--folds", "2", "--eval-folds", "2", "--epochs", "3", "--segment-hop", "4",
                 "--batch-size", "16", "--threads", "1", "--out", str(tmp_path / "run.json"), "--quiet"])
    seconds = time.time() - float(stamp.read_text())
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("error: iteration 0, scope 0, fold ") and err.count("\n") == 1, err
    assert "SIGKILL" in err and "Traceback" not in err
    assert not (tmp_path / "run.json").exists()
    _assert_no_zombie_children()
    print(f"dsl-sweep run exited {seconds:.2f} s after the kill")


def test_error_in_a_healthy_workers_training_propagates_unchanged(tiny_tones, feature_cache, doomed_backbone) -> None:
    module, net, _ = doomed_backbone('raise ValueError("the doomed fold fails")')
    cfg = _cfg(tiny_tones, feature_cache, plugins=[module], backbone=net)
    with pytest.raises(ValueError, match="the doomed fold fails") as info:
        run(cfg, show_progress=False)
    assert not isinstance(info.value, FoldWorkerError)
    _assert_no_zombie_children()


def test_wrapped_future_keeps_the_future_interface() -> None:
    """Results, the fold's own errors, cancellation and `wait` go through the wrapper as through the
    pool's future; only a broken pool becomes a FoldWorkerError."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    from dsl.execution.fold_job import FoldJob
    from dsl.execution.fold_runners import _Board, _FoldFuture, _Payload, _PoolWatch

    job = FoldJob(2, 0, 3, np.arange(3), np.arange(2), np.zeros((5, 2), np.float32), 7)
    watch = _PoolWatch(None, _Board(multiprocessing.get_context("spawn"), 1), _Payload())
    inner: Future = Future()
    outer = _FoldFuture(inner, job, watch)
    assert not outer.done() and outer.cancel() and outer.cancelled() and inner.cancelled()
    assert wait([outer], timeout=1, return_when=FIRST_COMPLETED).done == {outer}

    inner = Future()
    outer = _FoldFuture(inner, job, watch)
    inner.set_running_or_notify_cancel()
    assert outer.running() and not outer.cancel()
    inner.set_result("output")
    assert outer.done() and outer.result() == "output"

    inner = Future()
    outer = _FoldFuture(inner, job, watch)
    inner.set_exception(ValueError("bad targets"))
    with pytest.raises(ValueError, match="bad targets"):
        outer.result()

    inner = Future()
    outer = _FoldFuture(inner, job, watch)
    inner.set_exception(BrokenProcessPool("terminated abruptly"))
    with pytest.raises(FoldWorkerError, match="iteration 2, scope 0, fold 3 cannot finish") as info:
        outer.result()
    assert isinstance(info.value.__cause__, BrokenProcessPool)
