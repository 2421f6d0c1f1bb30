"""Fuzz corpus with one file of every kind of bad input: all are named at once, nothing good is lost."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import dsl.data.feature_cache as cache
from sweeps.cli import main
from tests.support.data import write_tone

EMOTIONS = "WLEAFTN"


@pytest.fixture
def fuzz_corpus(tmp_path):
    """EmoDB-named tones (good), plus one file of each bad kind; returns (folder, bad -> expected words)."""
    root = tmp_path / "corpus"
    for c, letter in enumerate(EMOTIONS):
        for s, spk in enumerate(("03", "08", "09")):
            write_tone(root / f"{spk}b0{c}{letter}a.wav", seconds=0.5, freq=150 * (c + 1) + 10 * s)
    write_tone(root / "10b01Wa.wav", seconds=0.5, channels=2)  # stereo: usable, noted
    write_tone(root / "10b02Wa.wav", seconds=0.5, rate=44100)  # other rate: usable, resampled
    bad = {}
    (root / "03a02Wa.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    bad["03a02Wa.wav"] = "unreadable"
    full = (root / "full.wav")
    write_tone(full, seconds=0.5)
    blob = full.read_bytes()
    full.unlink()
    (root / "03a03Wa.wav").write_bytes(blob[: len(blob) // 2])
    bad["03a03Wa.wav"] = "truncated"
    (root / "03a04Wa.wav").write_bytes(b"")
    bad["03a04Wa.wav"] = "unreadable"
    sf.write(str(root / "03a08Wa.wav"), np.zeros(0, dtype=np.float32), 16000)
    bad["03a08Wa.wav"] = "empty"
    sf.write(str(root / "03a05Wa.wav"), np.zeros(8000, dtype=np.float32), 16000)
    bad["03a05Wa.wav"] = "silence"
    write_tone(root / "03a06Wa.wav", seconds=0.01)
    bad["03a06Wa.wav"] = "too short"
    x = np.full(8000, 0.1, dtype=np.float32)
    x[100] = np.nan
    sf.write(str(root / "03a07Wa.wav"), x, 16000, subtype="FLOAT")
    bad["03a07Wa.wav"] = "NaN"
    write_tone(root / "03a01Xa.wav", seconds=0.5)
    bad["03a01Xa.wav"] = "unknown emotion code 'X'"
    return root, bad


def test_validate_names_every_bad_file(fuzz_corpus, tmp_path, capsys) -> None:
    root, bad = fuzz_corpus
    code = main(["validate", str(root), "--corpus", "emodb", "--folds", "4", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    named = {k.rsplit("/", 1)[-1]: v for k, v in report["problems"].items()}
    for name, words in bad.items():
        assert name in named and words in named[name], (name, named.get(name))
        assert name in out
    assert any("fewer usable utterances than the 4 folds" in p for p in report["corpus_problems"])
    notes = " ".join(report["notes"].values())
    assert "2 channels" in notes and "mixed sample rates" in notes
    assert report["usable"] == 23


def test_run_fails_listing_all_then_skips_without_recomputing(fuzz_corpus, tmp_path, monkeypatch, capsys) -> None:
    root, bad = fuzz_corpus
    cache_dir = tmp_path / "cache"
    common = ["run", "--corpus", "emodb", "--data", str(root), "--cache-dir", str(cache_dir), "--folds", "2",
              "--eval-folds", "2", "--epochs", "1", "--segment-hop", "8", "--iterations", "0", "--quiet",
              "--out", str(tmp_path / "run.json")]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "03a01Xa.wav" in err  # labels are checked first, all unknown codes at once
    assert "--bad-files skip" in err

    # Skip policy: label problems skipped, then every bad audio file named, good features cached once.
    reads: list[str] = []
    real = cache.load_audio
    monkeypatch.setattr(cache, "load_audio", lambda p, *a, **k: reads.append(str(p)) or real(p, *a, **k))
    assert main([*common, "--bad-files", "skip"]) == 0
    result = json.loads((tmp_path / "run.json").read_text())
    skipped = {k.rsplit("/", 1)[-1] for k in result["skipped_files"]}
    assert skipped == set(bad)
    assert result["n_utterances"] == 23
    first_reads = len(reads)
    assert first_reads == 23 + len(bad) - 1  # every audio file decoded once (the unlabelled one is never read)

    # Fail policy again: the error names every bad audio file, and the good files are not recomputed.
    reads.clear()
    (root / "03a01Xa.wav").unlink()
    assert main(common) == 2
    err = capsys.readouterr().err
    for name in set(bad) - {"03a01Xa.wav"}:
        assert name in err
    assert "--bad-files skip (bad_files: skip) leaves them out" in err.splitlines()[0]  # how to go on
    assert {r.rsplit("/", 1)[-1] for r in reads} <= set(bad)  # only the bad files were touched again
    assert len(list((cache_dir / "files").rglob("*.npy"))) == 23


def test_manifest_duplicates_and_missing_files_reported(tmp_path, capsys) -> None:
    write_tone(tmp_path / "a.wav")
    write_tone(tmp_path / "b.wav")
    (tmp_path / "m.csv").write_text("path,label,speaker\na.wav,x,s1\nb.wav,y,s2\na.wav,y,s1\ngone.wav,x,s2\n")
    assert main(["validate", str(tmp_path / "m.csv"), "--corpus", "csv"]) == 1
    out = capsys.readouterr().out
    assert "duplicate path" in out and "gone.wav" in out and "file not found" in out


def test_validate_groups_notes_by_kind_with_a_count() -> None:
    """588 stereo files make one line with a count and examples, not 588 lines (the full list is in --report)."""
    from dsl.data.validate import ValidationReport

    report = ValidationReport("emovo", "emovo", files=589, usable=588, problems={"bad.wav": "truncated"},
                              notes={f"f{i:03d}.wav": "2 channels (averaged to mono)" for i in range(588)})
    lines = report.format().splitlines()
    assert len(lines) == 4
    assert "  note  2 channels (averaged to mono): 588 files, e.g. f000.wav, f001.wav, f002.wav, ... (585 more)" in lines
    assert "  ERROR bad.wav: truncated" in lines and "--report" in lines[-1]
