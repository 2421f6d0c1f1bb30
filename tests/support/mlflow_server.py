"""A throw-away `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), optionally with basic auth."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

CRED_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts, for tests.

    With `auth_password` it runs `--app-name basic-auth` with its own auth DB, whose admin user
    `auth_user` (created at the first start) has that password; the server's environment then
    carries no MLflow credentials. /health needs no login either way.
    """

    def __init__(self, root: str | Path, port: int | None = None, auth_password: str | None = None,
                 auth_user: str = "sweeper"):
        self.root, self.port = Path(root).resolve(), port or free_port()
        self.auth_user, self.auth_password = auth_user, auth_password
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = self.root / "artifacts"
        self.proc: subprocess.Popen | None = None

    @property
    def health_timeout(self) -> float:
        """Seconds to wait for /health: the auth app starts more slowly (it creates its DB and admin)."""
        return 180 if self.auth_password is not None else 120

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server"]
        if self.auth_password is None:
            env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        else:
            ini = self.root / "basic_auth.ini"  # keys as in mlflow/server/auth/basic_auth.ini
            ini.write_text("[mlflow]\n"
                           "default_permission = READ\n"
                           f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
                           f"admin_username = {self.auth_user}\n"
                           f"admin_password = {self.auth_password}\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            env = {k: v for k, v in os.environ.items() if k not in CRED_VARS}
            env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_AUTH_CONFIG_PATH=str(ini),
                       MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
            cmd += ["--app-name", "basic-auth"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.artifacts), "--workers", "1"]
        self.log = open(self.root / "server.log", "w")  # closed in __exit__
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        timeout = self.health_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        what = "mlflow server (basic auth)" if self.auth_password is not None else "mlflow server"
        raise RuntimeError(f"{what} did not become healthy in {timeout:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group only
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
