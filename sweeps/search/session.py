"""Where a sweep keeps its state, and the Ray session it runs in."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from dsl.config import ConfigError
from dsl.runtime.paths import CACHE_ENV, default_cache_dir, is_uri
from sweeps.search.spec import SweepSpec

log = logging.getLogger(__name__)


def storage_root(path: str) -> str:
    """Local paths become absolute (trials run in other directories); URIs (s3://...) pass through."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def journal_path(spec: SweepSpec, root: str) -> Path:
    """The Optuna journal lives next to the Tune experiment (a local cache dir for remote storage)."""
    if is_uri(root):
        return default_cache_dir() / "optuna" / f"{spec.name}.journal"
    return Path(root) / spec.name / "optuna.journal"


def check_resumable(exp_path: str, journal: Path, resume: bool) -> None:
    from ray import tune

    can = tune.Tuner.can_restore(exp_path)
    if resume and not can:
        raise ConfigError(f"--resume: no sweep to resume at {exp_path}")
    if not resume and can:
        raise ConfigError(f"a sweep already exists at {exp_path}: continue it with --resume, or remove it "
                          "(or set another storage_path/name) to start over")
    if not resume and journal.exists():  # left by a sweep that stopped before Tune saved anything
        stale = journal.with_name(f"{journal.name}.stale-{int(time.time())}")
        journal.rename(stale)
        log.warning("moved a stale Optuna journal aside: %s", stale)


def _resource_warnings_only(record: logging.LogRecord) -> bool:
    """Of Tune's log, keep warnings about resources (a trial that cannot be scheduled), errors being ours."""
    return record.levelno >= logging.WARNING and "resource" in record.getMessage().lower()


def quiet_ray() -> bool:
    """Keep the console to our progress lines unless DSL_SWEEP_VERBOSE=1; returns True when verbose."""
    verbose = os.environ.get("DSL_SWEEP_VERBOSE", "0") == "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy engine honours verbose=0
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # trial errors are printed by ProgressPrinter
        # ...but a trial that cannot be scheduled must not sit silent: Tune's resource warnings get through.
        tune_log = logging.getLogger("ray.tune")
        tune_log.setLevel(logging.WARNING)
        tune_log.addFilter(_resource_warnings_only)
    return verbose


def init_ray(address: str | None, verbose: bool = False) -> bool:
    """Connect to `address`/$RAY_ADDRESS, else start a local Ray on all cores. Returns True if started here."""
    import ray

    env = {"DSL_PROGRESS": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if os.environ.get(CACHE_ENV):  # the nodes' feature cache where the driver's is
        env[CACHE_ENV] = os.environ[CACHE_ENV]
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose)
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=verbose, logging_level=logging.WARNING)
    return True


