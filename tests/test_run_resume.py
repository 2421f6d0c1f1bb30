"""`dsl-sweep run` keeps every finished iteration on disk (chain state + partial JSON) and `--resume`
continues an interrupted chain to the very result an uninterrupted run writes."""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

import dsl.studies.run as runner
from dsl.execution.fold_job import derive_seed
from dsl.execution.fold_runners import FoldWorkerError
from dsl.pipeline.chain import ChainState
from sweeps.cli import main
from tests.support.data import TINY


def _args(manifest: Path, cache: Path, out: Path, *extra: str, workers: int = 1) -> list[str]:
    settings = [x for k, v in {**TINY, "train.workers": workers}.items() for x in ("--set", f"{k}={v}")]
    return ["run", "--corpus", "csv", "--data", str(manifest), "--cache-dir", str(cache), "--out", str(out),
            "--quiet", *settings, *extra]


def _same_numbers(a: dict, b: dict) -> None:
    assert [r["iteration"] for r in a["iterations"]] == [r["iteration"] for r in b["iterations"]]
    for ra, rb in zip(a["iterations"], b["iterations"]):
        assert (ra["ua"], ra["wa"]) == (rb["ua"], rb["wa"]), ra["iteration"]
        assert ra["utterances"] == rb["utterances"], ra["iteration"]
        assert ra["confusion"] == rb["confusion"]
    assert a["reported"] == b["reported"] and a["config"] == b["config"]


def _interrupt_after_first_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain dies (as when a fold worker is killed) once its first iteration has been yielded."""
    real = runner.iterate_chain

    def dying(*args, **kwargs):
        chain = real(*args, **kwargs)
        try:
            yield next(chain)
            raise FoldWorkerError("iteration 1, scope 0, fold 0 cannot finish: the test killed it")
        finally:
            chain.close()

    monkeypatch.setattr(runner, "iterate_chain", dying)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tone_corpus, feature_cache, tmp_path, monkeypatch,
                                                             capsys) -> None:
    ref_out, out = tmp_path / "ref.json", tmp_path / "run.json"
    state = tmp_path / "run.state.npz"
    # --resume without a state file runs from the start.
    assert main(_args(tone_corpus, feature_cache, ref_out, "--resume")) == 0
    assert "no chain state at" in capsys.readouterr().out
    reference = json.loads(ref_out.read_text())
    assert reference["finished"] is True and not (tmp_path / "ref.state.npz").exists()

    with monkeypatch.context() as m:
        _interrupt_after_first_iteration(m)
        assert main(_args(tone_corpus, feature_cache, out)) == 3
    captured = capsys.readouterr()
    assert "the test killed it" in captured.err
    (line,) = captured.err.splitlines()  # one line: the error, what was kept and how to go on
    assert "1 finished iteration(s) kept in" in line and "--resume" in line
    partial = json.loads(out.read_text())
    assert partial["finished"] is False and [r["iteration"] for r in partial["iterations"]] == [0]
    saved = ChainState.load(state)
    assert saved.next_iteration == 1 and len(saved.history) == 1 and saved.config["iterations"] == 2
    assert saved.history[0]["ua"] == partial["iterations"][0]["ua"] == reference["iterations"][0]["ua"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files

    assert main(_args(tone_corpus, feature_cache, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "1 finished iteration(s) read back" in printed
    resumed = json.loads(out.read_text())
    assert resumed["finished"] is True and not state.exists()
    _same_numbers(resumed, reference)
    assert (tmp_path / "run_accuracy.png").exists()
    print(f"reference {reference['seconds']:.1f} s, interrupted + resumed {resumed['seconds']:.1f} s")


def test_resume_refuses_another_config_and_a_plain_run_starts_over(tone_corpus, feature_cache, tmp_path,
                                                                   monkeypatch, capsys) -> None:
    out, state = tmp_path / "run.json", tmp_path / "run.state.npz"
    with monkeypatch.context() as m:
        _interrupt_after_first_iteration(m)
        assert main(_args(tone_corpus, feature_cache, out)) == 3
    assert state.exists()
    capsys.readouterr()

    code = main(_args(tone_corpus, feature_cache, out, "--resume", "--set", "iterations=0", "--set", "train.epochs=4"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(state) in err and "another config" in err and "iterations, train.epochs" in err, err
    assert state.exists() and json.loads(out.read_text())["finished"] is False  # nothing was touched

    # Without --resume the old state is ignored (one line) and replaced; the run finishes and removes it.
    assert main(_args(tone_corpus, feature_cache, out, "--set", "iterations=0")) == 0
    printed = capsys.readouterr().out
    assert sum("ignoring the chain state" in line for line in printed.splitlines()) == 1
    result = json.loads(out.read_text())
    assert result["finished"] is True and [r["iteration"] for r in result["iterations"]] == [0]
    assert not state.exists()


def test_resume_with_seeds_is_accepted_and_ignored(tone_corpus, feature_cache, tmp_path, capsys) -> None:
    out = tmp_path / "study.json"
    assert main(_args(tone_corpus, feature_cache, out, "--resume", "--seeds", "0", "--set", "iterations=0")) == 0
    printed = capsys.readouterr().out
    assert "--resume: ignored with --seeds" in printed
    assert json.loads(out.read_text())["kind"] == "study"


KILLER = '''
import os
import signal
import time

import torch
from torch import nn

from dsl.training.backbones import register_backbone


class Mortal(nn.Module):
    """A linear model on the mean frame; the network of one fold SIGKILLs its worker, once ever."""

    def __init__(self, n_classes):
        super().__init__()
        self.doomed = torch.initial_seed() == {seed} and not os.path.exists({stamp!r})
        self.out = nn.Linear(1, n_classes)

    def forward(self, x):
        if self.doomed:
            # Iteration 1's fold 0 may start before iteration 0 is written (it needs only fold 1 of iteration 0):
            # die only once iteration 0 is on disk, so the test does not depend on which worker is faster.
            deadline = time.time() + 120
            while not os.path.exists({written!r}) and time.time() < deadline:
                time.sleep(0.05)
            open({stamp!r}, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.out(x.mean(dim=(1, 2, 3))[:, None])


@register_backbone("{name}")
def mortal(n_classes):
    return Mortal(n_classes)
'''


def test_killed_fold_worker_then_resume(tone_corpus, feature_cache, tmp_path, monkeypatch, capsys) -> None:
    """A real death: the worker training iteration 1, fold 0 is SIGKILLed (train.workers 2)."""
    module = f"dsl_mortal_{uuid.uuid4().hex[:8]}"
    stamp = tmp_path / f"{module}.stamp"
    (tmp_path / f"{module}.py").write_text(KILLER.format(seed=derive_seed(0, 1, 0, 0), stamp=str(stamp),
                                                         name=f"{module}_net", written=str(tmp_path / "run.json")))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit the parent's sys.path
    plugin = ["--backbone", f"{module}_net", "--set", f"plugins=[{module}]", "--seed", "0"]
    out, ref_out, state = tmp_path / "run.json", tmp_path / "ref.json", tmp_path / "run.state.npz"
    try:
        code = main(_args(tone_corpus, feature_cache, out, *plugin, workers=2))
        captured = capsys.readouterr()
        assert code == 3 and stamp.exists(), captured.err
        assert "iteration 1, scope 0, fold 0" in captured.err and "SIGKILL" in captured.err
        assert [r["iteration"] for r in json.loads(out.read_text())["iterations"]] == [0]
        assert ChainState.load(state).next_iteration == 1

        assert main(_args(tone_corpus, feature_cache, out, *plugin, "--resume", workers=2)) == 0
        assert main(_args(tone_corpus, feature_cache, ref_out, *plugin, workers=2)) == 0  # the stamp spares it
    finally:
        sys.modules.pop(module, None)
    _same_numbers(json.loads(out.read_text()), json.loads(ref_out.read_text()))
    assert not state.exists()


def test_chain_state_carries_its_format(tmp_path: Path) -> None:
    """A saved state names its format: a newer one is refused, one saved before formats loads with a warning."""
    import numpy as np

    from dsl.pipeline.chain import STATE_FORMAT

    state = ChainState(2, [np.eye(3, dtype=np.float32)], [{"iteration": 0, "ua": 0.5}], {"iterations": 3})
    state.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert int(z["format"]) == STATE_FORMAT
        old = {k: z[k] for k in z.files if k != "format"}  # the layout before the format entry
    back = ChainState.load(tmp_path / "s.npz")
    assert (back.next_iteration, back.history, back.config) == (2, state.history, state.config)
    np.savez(tmp_path / "old.npz", **old)
    with pytest.warns(UserWarning, match="old.npz: chain state format 1 .* no format entry"):
        assert ChainState.load(tmp_path / "old.npz").history == state.history
    np.savez(tmp_path / "new.npz", **old, format=STATE_FORMAT + 1)
    with pytest.raises(ValueError, match="new.npz: chain state format .* is newer"):
        ChainState.load(tmp_path / "new.npz")
