"""The MLflow client, bounded: an unreachable tracking server holds a caller up for `DSL_MLFLOW_TIMEOUT`
seconds at most (default 60, plus one HTTP request timeout). `call` does all the retrying, under that
deadline; MLflow's own HTTP retries are off unless set explicitly (its defaults, 7 retries with backoff
factor 2 and a 120 s request timeout, could hold one request for minutes). Then `TrackingUnavailable`.

Also: which tracking URI a command uses, and a fail-fast check that a server lets us in. Credentials
come from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment and are never logged or printed.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRANSIENT = ("database is locked", "locked", "connection", "temporarily", "timed out", "max retries", " 50")
TIMEOUT_ENV = "DSL_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT = 60.0


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer within `DSL_MLFLOW_TIMEOUT` seconds."""


def mlflow_timeout() -> float:
    """`$DSL_MLFLOW_TIMEOUT` (seconds), the longest an unreachable tracking server may hold a caller up."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    return max(0.0, value)


def bound_http_retries() -> None:
    """MLflow's public HTTP settings, unless set explicitly: no retries of its own (`call` retries under one
    deadline) and a request timeout no longer than that deadline (at most 30 s)."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    if not MLFLOW_HTTP_REQUEST_MAX_RETRIES.defined:
        os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
    if not MLFLOW_HTTP_REQUEST_TIMEOUT.defined:
        os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(max(5, min(30, int(mlflow_timeout()))))


def transient(exc: BaseException) -> bool:
    return isinstance(exc, TrackingUnavailable) or any(s in str(exc).lower() for s in _TRANSIENT)


def redact_uri(uri: str | None) -> str:
    """A tracking URI safe to print: `user:password@` removed."""
    return re.sub(r"//[^/@]*@", "//***@", uri or "")


def call(fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying transient failures (SQLite locks, connection errors, 5xx)
    for `timeout` seconds (default `$DSL_MLFLOW_TIMEOUT`) after the first one; then `TrackingUnavailable`."""
    limit = mlflow_timeout() if timeout is None else timeout
    first, i = None, 0
    while True:
        try:
            return fn(*args, **kwargs)
        except TrackingUnavailable:
            raise
        except Exception as exc:  # MlflowException, sqlalchemy OperationalError, requests errors
            if not transient(exc):
                raise
            now = time.monotonic()
            first = now if first is None else first
            left = first + limit - now
            if left <= 0:
                raise TrackingUnavailable(
                    f"the MLflow tracking server did not answer for {limit:.0f} s ({TIMEOUT_ENV}): "
                    f"{type(exc).__name__}: {redact_uri(str(exc))[:400]}") from exc
            time.sleep(min(0.25 * 2**i, 5.0, left))
            i += 1


def client(tracking_uri: str):
    from mlflow import MlflowClient

    bound_http_retries()
    return MlflowClient(tracking_uri=tracking_uri)


DEFAULT_STORE = "mlflow.db"  # the SQLite file in the current directory a command tracks to by default
DEFAULT_URI_TEXT = f"$MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_STORE} in the current directory"  # for help texts


def resolve_tracking_uri(arg: str | None = None) -> str:
    """`--tracking-uri`, else $MLFLOW_TRACKING_URI, else an absolute SQLite file in the current directory."""
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative: pin to the cwd now
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def sqlite_file(uri: str) -> str | None:
    """The file an SQLite tracking URI writes (`sqlite:///PATH`), or None for a server or other store."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def check_access(uri: str) -> None:
    """Fail fast with one clear line when a tracking server refuses us (before loading data or starting Ray).

    Only for http(s) servers. Credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment;
    neither they nor a `user:password@` in the URI are ever printed.
    """
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException

    from dsl.config import ConfigError

    try:
        call(client(uri).search_experiments, max_results=1)
    except MlflowException as exc:
        code = str(getattr(exc, "error_code", "") or "")
        if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED") and not any(f" {n} " in str(exc) for n in (401, 403)):
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if not user:
            why = "it needs credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment"
        else:
            why = (f"it rejected user {user!r}: check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                   "in the environment")
        raise ConfigError(f"MLflow tracking server {redact_uri(uri)} refused access ({code or 'HTTP 401/403'}): {why} "
                          "(of the driver and of every Ray node; never in the sweep file or the URI)") from None
