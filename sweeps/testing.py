"""Helpers for tests and demos: a tiny EmoDB subset and a throw-away local MLflow server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path


def tiny_emodb(src: str | Path, dst: str | Path, per_class: int = 5, speakers: int = 5) -> Path:
    """Symlink `per_class` utterances of each emotion, from the first `speakers` speakers, into `dst`."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.rglob("*.wav"))
    keep_spk = sorted({f.name[:2] for f in files})[:speakers]
    by_class: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        if f.name[:2] in keep_spk and len(f.stem) == 7:
            by_class[f.stem[5]].append(f)
    for emo, fs in sorted(by_class.items()):
        # spread over speakers: round-robin by speaker
        by_spk: dict[str, list[Path]] = defaultdict(list)
        for f in fs:
            by_spk[f.name[:2]].append(f)
        picked: list[Path] = []
        while len(picked) < per_class and any(by_spk.values()):
            for spk in sorted(by_spk):
                if by_spk[spk] and len(picked) < per_class:
                    picked.append(by_spk[spk].pop(0))
        for f in picked:
            link = dst / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts, for tests."""

    def __init__(self, root: str | Path, port: int | None = None):
        self.root, self.port = Path(root).resolve(), port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        self.log = open(self.root / "server.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("mlflow server did not become healthy in 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group only
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def tiny_sweep(name: str, data: str | Path, cache_dir: str | Path, storage: str | Path, **top) -> dict:
    """A sweep definition that runs in seconds per trial on a tiny corpus (2 folds, 1 epoch, 160 ms hop)."""
    raw = {
        "name": name,
        "base": {"preset": "cpu", "corpus": "emodb", "data": str(data), "cache_dir": str(cache_dir),
                 "segments": {"hop": 16}, "protocol": {"folds": 2, "eval_folds": 2},
                 "train": {"epochs": 1, "patience": 1, "batch_size": 64}},
        "search": {"rule": ["baseline", "bdsl", "wdsl", "hdl"], "alpha": {"low": 0.0, "high": 1.0, "step": 0.1},
                   "iterations": {"low": 1, "high": 2}},
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 3},
        "num_samples": 4, "max_concurrent": 2, "resources": {"cpu": 1}, "max_failures": 1,
        "storage_path": str(storage),
    }
    raw.update(top)
    return raw
