"""Two processes extracting the same corpus into the same empty feature cache at the same moment both
finish with the same, whole cache: every entry is written under a temporary name and renamed into
place, and an entry the other process renamed first is read back, not overwritten half-way."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dsl.data.feature_cache as cache
from dsl.config import FeatureSpec
from tests.support.data import write_tone

REPO = Path(__file__).resolve().parents[1]
N_FILES = 40

WORKER = '''
import sys, time
from pathlib import Path

import numpy as np

import dsl.data.feature_cache as cache
from dsl.config import ChainConfig
from dsl.data.bundle import prepare_data

manifest, cache_dir, out, ready, go = sys.argv[1:6]
reads = []
real = cache.load_audio
cache.load_audio = lambda *a, **k: reads.append(a[0]) or real(*a, **k)
cfg = ChainConfig(corpus="csv", data=manifest, cache_dir=cache_dir)
Path(ready).touch()
while not Path(go).exists():  # both processes start extracting at the same moment
    time.sleep(0.001)
data = prepare_data(cfg, show_progress=False)
np.savez(out, frames=np.asarray(data.frames), offsets=data.frame_offsets, paths=np.asarray(data.paths))
print("audio files read:", len(reads))
'''


@pytest.fixture(scope="module")
def forty_tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forty-tones")
    rows = ["path,label,speaker"]
    for i in range(N_FILES):
        c = i % 2
        write_tone(root / f"t{i}.wav", seconds=0.3 + 0.01 * i, freq=(300.0, 1500.0)[c] + 7 * i)
        rows.append(f"t{i}.wav,class{c},spk{i % 4}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _start(script: Path, manifest: Path, cache_dir: Path, out: Path, ready: Path, go: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "DSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(manifest), str(cache_dir), str(out), str(ready), str(go)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _extract_in_processes(n: int, tmp: Path, manifest: Path, cache_dir: Path) -> list[dict]:
    script = tmp / "extract.py"
    script.write_text(WORKER)
    go = tmp / f"go-{cache_dir.name}"
    procs = [_start(script, manifest, cache_dir, tmp / f"{cache_dir.name}-{i}.npz", tmp / f"{cache_dir.name}-{i}.ready",
                    go) for i in range(n)]
    deadline = time.time() + 120
    while not all((tmp / f"{cache_dir.name}-{i}.ready").exists() for i in range(n)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    results = []
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr
        with np.load(tmp / f"{cache_dir.name}-{i}.npz") as z:
            results.append({"frames": z["frames"], "offsets": z["offsets"], "paths": list(z["paths"]),
                            "read": int(stdout.split("audio files read:")[1])})
    return results


def _temporaries(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*") if p.name.startswith(".tmp") or ".tmp" in p.name]


def test_two_processes_fill_one_cache_at_once(forty_tones, tmp_path) -> None:
    (single,) = _extract_in_processes(1, tmp_path, forty_tones, tmp_path / "single")
    assert single["read"] == N_FILES
    for round_ in range(2):
        shared = tmp_path / f"shared{round_}"
        both = _extract_in_processes(2, tmp_path, forty_tones, shared)
        print(f"round {round_}: audio files read by each process: {[r['read'] for r in both]}")
        for r in both:
            assert r["paths"] == single["paths"]
            np.testing.assert_array_equal(r["offsets"], single["offsets"])
            assert r["frames"].dtype == np.float32 and r["frames"].tobytes() == single["frames"].tobytes()
        assert _temporaries(shared) == []
        entries = list((shared / "corpora").iterdir())
        assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"frames.npy", "index.json"}
        json.loads((entries[0] / "index.json").read_text())
        per_file = sorted((shared / "files").rglob("*.npy"))
        assert len(per_file) == N_FILES
        # Every per-file entry is whole: it loads, and it is the utterance's rows of the reference frames.
        single_files = {p.name: np.load(p) for p in (tmp_path / "single" / "files").rglob("*.npy")}
        assert {p.name for p in per_file} == set(single_files)
        for p in per_file:
            assert np.load(p).tobytes() == single_files[p.name].tobytes()


SPEC = FeatureSpec()


def test_entry_the_other_process_renamed_first_is_read_back(tmp_path, monkeypatch) -> None:
    """The race made deterministic: the corpus entry and per-file entries appear between our look-up
    and our writes (another process finished first); we end with theirs and leave no temporaries."""
    files = [write_tone(tmp_path / "wav" / f"t{i}.wav", seconds=0.3 + 0.1 * i, freq=300 + 50 * i) for i in range(3)]
    theirs = cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)
    real_load, real_exists = cache.load_cached, Path.exists
    looked = []

    def not_yet(key, cache_dir):  # our first look-up ran before the other process renamed its entry
        looked.append(key)
        return None if len(looked) == 1 else real_load(key, cache_dir)

    monkeypatch.setattr(cache, "load_cached", not_yet)
    monkeypatch.setattr(Path, "exists", lambda self: False if self.suffix == ".npy" else real_exists(self))
    ours = cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)  # writes over theirs
    monkeypatch.undo()
    assert len(looked) == 2
    np.testing.assert_array_equal(np.asarray(ours.frames), np.asarray(theirs.frames))
    assert _temporaries(tmp_path / "cache") == []


def test_failed_rename_that_is_not_a_race_is_raised(tmp_path, monkeypatch) -> None:
    """Only "the entry is already there" is a lost race; any other rename failure is an error, not an
    AssertionError later."""
    files = [write_tone(tmp_path / "wav" / "t.wav", seconds=0.4)]

    def no_rename(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(cache.os, "rename", no_rename)
    with pytest.raises(PermissionError):
        cache.extract_corpus(files, SPEC, tmp_path / "cache", show_progress=False)
    monkeypatch.undo()
    assert _temporaries(tmp_path / "cache") == []
