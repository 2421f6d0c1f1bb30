"""Every failure of `dsl-sweep` is one clear line with its exit code, and nothing finished is lost (issue 23).

Read-only folders are tmpfs or bind mounts mounted `ro` (root ignores permission bits); where `mount` is
not allowed the tests that need one skip, saying why. Each test asserts the line, the exit code and that
the work already done is still there.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import dsl.studies.run as runner
from dsl.pipeline.chain import ChainState
from dsl.runtime.paths import NotWritableError, WriteTarget, check_writable, require_writable
from sweeps.cli import COMMANDS, main
from sweeps.cli.errors import EXIT_FILES, EXIT_INPUT, EXIT_PROBLEMS
from tests.support.data import TINY, write_tone
from tests.support.mounts import read_only_view, remount_read_only, tmpfs


def _run_args(manifest: Path, cache: Path, out: Path, *extra: str, iterations: int = 0) -> list[str]:
    settings = [x for k, v in {**TINY, "iterations": iterations}.items() for x in ("--set", f"{k}={v}")]
    return ["run", "--corpus", "csv", "--data", str(manifest), "--cache-dir", str(cache), "--out", str(out),
            "--quiet", *settings, *extra]


QUICK = ("--set", "train.epochs=1", "--set", "segments.hop=8")  # the numbers do not matter here, the files do


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- paths checked before any work

def test_check_writable_names_each_problem(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    problems = check_writable([WriteTarget.file(tmp_path / "folder", "--out"),
                               WriteTarget.dir(tmp_path / "file", "--step-cache"),
                               WriteTarget.file(tmp_path / "file" / "r.json", "--report"),
                               WriteTarget.file(tmp_path / "new" / "deeper" / "r.json", "--out")])
    assert len(problems) == 3
    assert "--out" in problems[0] and "is a folder" in problems[0]
    assert "--step-cache" in problems[1] and "is a file" in problems[1]
    assert "--report" in problems[2] and "is a file, so no folder can be made there" in problems[2]
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(NotWritableError, match="--out"):
        require_writable([WriteTarget.file(tmp_path / "folder", "--out")])


def test_read_only_out_is_refused_before_any_work(tone_corpus, tmp_path, capsys) -> None:
    """Issue 23.1: the iteration used to run first, then a traceback lost it; now nothing starts."""
    with tmpfs(tmp_path / "ro") as ro:
        code = main(_run_args(tone_corpus, tmp_path / "cache", ro / "r.json"))
        assert not any(ro.iterdir())
    line = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_FILES
    assert f"--out {ro / 'r.json'}: cannot write in {ro}: Read-only file system" in line
    assert "nothing was started" in line
    assert not (tmp_path / "cache").exists()  # refused before the corpus was read: no features extracted


def test_read_only_paths_of_other_commands_are_refused_up_front(tone_corpus, tmp_path, capsys) -> None:
    """Each command checks what it writes before its work (for `best` and `sweep`: before MLflow and Ray)."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: ro_sweep\nbase: {{corpus: csv, data: {tone_corpus}}}\nsearch: {{labels.rule: [bdsl]}}\n")
    with tmpfs(tmp_path / "ro") as ro:
        cases = {
            "validate": ["validate", str(tone_corpus), "--corpus", "csv", "--report", str(ro / "v.json")],
            "report": ["report", str(tone_corpus), "--out", str(ro / "t.md")],
            "agreement": ["agreement", str(tone_corpus), "--out", str(ro / "a.md")],
            "best": ["best", "no_such_sweep", "--out", str(ro / "best.yaml")],
            "predict": ["predict", str(tmp_path), str(tmp_path / "x.wav"), "--contour", str(ro / "plots")],
            "sweep": ["sweep", str(sweep), "--storage-path", str(ro / "results"),
                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            "run --seeds": _run_args(tone_corpus, tmp_path / "cache", ro / "study.json", "--seeds", "0,1"),
        }
        for name, argv in cases.items():
            code = main(argv)
            line = _one_error_line(capsys.readouterr().err)
            assert code == EXIT_FILES and "Read-only file system" in line and str(ro) in line, (name, line)
    assert not (tmp_path / "mlflow.db").exists()  # the sweep stopped before MLflow


def test_verbose_adds_the_traceback(tone_corpus, tmp_path, capsys) -> None:
    with tmpfs(tmp_path / "ro") as ro:
        assert main(["-v", *_run_args(tone_corpus, tmp_path / "cache", ro / "r.json")]) == EXIT_FILES
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: --out")


def test_empty_read_only_feature_cache_is_one_line(tone_corpus, tmp_path, capsys) -> None:
    """Issue 23.2: the cache's mkdir used to end in a 35-44 line traceback."""
    with tmpfs(tmp_path / "cache") as cache:
        code = main(_run_args(tone_corpus, cache, tmp_path / "r.json"))
    line = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_FILES
    assert f"feature cache {cache}: cannot write in {cache}: Read-only file system" in line
    assert line.endswith("it lacks the features of 24 of 24 file(s); nothing was started: give --cache-dir DIR (or "
                         "set DSL_CACHE_DIR) on a writable disk")


def test_read_only_cache_that_holds_the_features_is_used(tone_corpus, feature_cache, tmp_path) -> None:
    from dsl.config import load_config
    from dsl.data.bundle import prepare_data

    cfg = load_config(None, None, {"corpus": "csv", "data": str(tone_corpus), "cache_dir": str(feature_cache)})
    writable = prepare_data(cfg, show_progress=False)  # the features are in the cache now
    with read_only_view(feature_cache, tmp_path / "ro-cache") as ro:
        data = prepare_data(cfg.replace(cache_dir=str(ro)), show_progress=False)
        assert (data.frames == writable.frames).all() and data.n_utterances == 24


# --------------------------------------------------------------------------- a write that fails later

def test_disk_going_read_only_mid_run_keeps_the_finished_iteration(tone_corpus, feature_cache, tmp_path,
                                                                   monkeypatch, capsys) -> None:
    """The out folder turns read-only after iteration 0: that iteration is rescued, named, and resumable."""
    monkeypatch.setenv("DSL_CACHE_DIR", str(tmp_path / "home-cache"))  # where the rescue folder goes
    real_row = runner.format_row
    with tmpfs(tmp_path / "disk", read_only=False) as disk:
        def row_then_read_only(r):
            remount_read_only(disk)  # iteration 0 is on disk now; iteration 1's write will fail
            return real_row(r)

        monkeypatch.setattr(runner, "format_row", row_then_read_only)
        code = main(_run_args(tone_corpus, feature_cache, disk / "r.json", *QUICK, iterations=1))
        assert (disk / "r.state.npz").is_file()  # iteration 0's state, written before the disk went read-only
    line = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_FILES and "Read-only file system" in line
    assert "the 2 finished iteration(s) are kept in" in line and "--resume" in line
    rescued = [p for p in (tmp_path / "home-cache" / "rescue").iterdir()]
    assert len(rescued) == 1 and str(rescued[0]) in line
    state = ChainState.load(rescued[0] / "r.state.npz")
    partial = json.loads((rescued[0] / "r.json").read_text())
    assert state.next_iteration == 2 and [r["iteration"] for r in partial["iterations"]] == [0, 1]

    # As the line says: copy them beside --out and resume; nothing is trained again.
    monkeypatch.setattr(runner, "format_row", real_row)
    out = tmp_path / "again" / "r.json"
    out.parent.mkdir()
    for f in rescued[0].iterdir():
        shutil.copy(f, out.parent / f.name)
    assert main(_run_args(tone_corpus, feature_cache, out, *QUICK, "--resume", iterations=1)) == 0
    assert "2 finished iteration(s) read back" in capsys.readouterr().out
    assert json.loads(out.read_text())["finished"] is True


# --------------------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_is_one_line_and_keeps_the_finished_iteration(tone_corpus, feature_cache, tmp_path) -> None:
    """Issue 23.4: SIGINT to the whole process group, as a terminal's Ctrl-C sends it, with 2 fold workers:
    exit 130, one line on stderr (no KeyboardInterrupt traceback from the driver or a worker), state kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "r.json"
    argv = [*_run_args(tone_corpus, feature_cache, out, "--set", "train.workers=2", iterations=2)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.time() + 300
    for line in proc.stdout:  # the table's first row: iteration 0 is finished and on disk
        if line.split()[:1] == ["0"] or time.time() > deadline:
            break
    time.sleep(1.0)  # into iteration 1's fold trainings
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines == [f"interrupted (Ctrl-C) (1 finished iteration(s) kept in {tmp_path / 'r.state.npz'} (and {out}): "
                     "rerun the same command with --resume to continue)"], err
    assert ChainState.load(tmp_path / "r.state.npz").next_iteration == 1
    assert json.loads(out.read_text())["finished"] is False


# --------------------------------------------------------------------------- inputs recognised

@pytest.fixture
def wav(tmp_path) -> Path:
    return write_tone(tmp_path / "corpus" / "03a01Wa.wav")


def test_wav_given_as_manifest(wav, tmp_path, capsys) -> None:
    """Issue 23.3: a 33-line UnicodeDecodeError traceback before."""
    code = main(["run", "--corpus", "csv", "--data", str(wav), "--out", str(tmp_path / "r.json")])
    line = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_INPUT
    assert f"{wav}: is an audio file (WAV), but --corpus csv expects a CSV manifest" in line
    assert main(["validate", "--corpus", "csv", str(wav)]) == EXIT_PROBLEMS
    captured = capsys.readouterr()
    assert "is an audio file (WAV), but --corpus csv expects a CSV manifest" in captured.out
    assert "Traceback" not in captured.err


def test_binary_file_given_as_manifest(tmp_path, capsys) -> None:
    blob = tmp_path / "features.npy"
    blob.write_bytes(b"\x93NUMPY\x01\x00\xff\xfe" * 8)
    assert main(["run", "--corpus", "csv", "--data", str(blob), "--out", str(tmp_path / "r.json")]) == EXIT_INPUT
    assert "is not a UTF-8 text file" in _one_error_line(capsys.readouterr().err)


def test_folder_given_as_manifest_names_its_csv(wav, tmp_path, capsys) -> None:
    folder = wav.parent
    assert main(["run", "--corpus", "csv", "--data", str(folder), "--out", str(tmp_path / "r.json")]) == EXIT_INPUT
    line = _one_error_line(capsys.readouterr().err)
    assert f"{folder}: is a folder, but --corpus csv expects a CSV manifest" in line
    assert "for a corpus folder give --corpus NAME (casia, " in line
    (folder / "manifest.csv").write_text("path,label\n03a01Wa.wav,anger\n")
    assert main(["run", "--corpus", "csv", "--data", str(folder), "--out", str(tmp_path / "r.json")]) == EXIT_INPUT
    assert "give one of its CSV files (manifest.csv)" in _one_error_line(capsys.readouterr().err)


def test_csv_or_wav_given_as_corpus_folder(wav, tmp_path, capsys) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{wav},anger\n")
    assert main(["run", "--corpus", "emodb", "--data", str(manifest), "--out", str(tmp_path / "r.json")]) == EXIT_INPUT
    line = _one_error_line(capsys.readouterr().err)
    assert f"{manifest}: is a CSV manifest, but --corpus emodb expects a corpus folder: use --corpus csv" in line
    assert main(["run", "--corpus", "emodb", "--data", str(wav), "--out", str(tmp_path / "r.json")]) == EXIT_INPUT
    line = _one_error_line(capsys.readouterr().err)
    assert f"{wav}: is an audio file (WAV), but --corpus emodb expects a corpus folder" in line
    assert f"(e.g. {wav.parent})" in line


# --------------------------------------------------------------------------- conversions said once, by file

def test_conversions_are_summarised_once_and_padding_names_the_file(tmp_path, caplog) -> None:
    from dsl.config import load_config
    from dsl.data.bundle import prepare_data

    rows = ["path,label,speaker"]
    for i in range(4):
        write_tone(tmp_path / f"mono16k_{i}.wav", seconds=0.5)
        rows.append(f"mono16k_{i}.wav,a,s{i}")
    write_tone(tmp_path / "narrow.wav", seconds=0.5, rate=8000)
    write_tone(tmp_path / "stereo48k.wav", seconds=0.5, rate=48000, channels=2)
    write_tone(tmp_path / "short.wav", seconds=0.2)  # 21 frames < one 32-frame segment
    rows += ["narrow.wav,b,s0", "stereo48k.wav,b,s1", "short.wav,b,s2"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, None, {"corpus": "csv", "data": str(tmp_path / "m.csv"), "cache_dir": str(tmp_path / "c")})
    with caplog.at_level(logging.INFO, logger="dsl.data.bundle"):
        prepare_data(cfg, show_progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "dsl.data.bundle"]
    assert "audio: 2 file(s) resampled to 16000 Hz (from 8000 Hz: 1, 48000 Hz: 1)" in lines
    assert "audio: 1 file(s) down-mixed to mono (from 2 channels: 1)" in lines
    padded = [ln for ln in lines if "padded" in ln]
    assert padded == ["audio: 1 utterance(s) shorter than one segment (32 frames) padded with silence frames: "
                      "short.wav (0.200 s)"]


# --------------------------------------------------------------------------- the command line itself

def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("dsl-sweep ")


def test_every_command_is_one_listed_module() -> None:
    """Adding a command is a module in sweeps/cli/ plus its name in COMMANDS: each listed module is a command,
    each command module is listed."""
    import importlib

    import sweeps.cli

    infrastructure = {"__init__", "__main__", "app", "errors"}
    modules = {p.stem for p in Path(sweeps.cli.__file__).parent.glob("*.py")} - infrastructure
    assert modules == set(COMMANDS)
    for name in COMMANDS:
        command = importlib.import_module(f"sweeps.cli.{name}")
        assert isinstance(command.HELP, str) and callable(command.add_arguments) and callable(command.handle)
