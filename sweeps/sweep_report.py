"""`dsl-sweep report SWEEP`: a sweep's MLflow runs as the paper's tables (see `dsl.results.paper_tables`).

An argument that is not a file or folder is taken as a sweep name: its experiment's latest parent run is
exported from MLflow to a `kind: sweep` JSON (kept with `--save-sweep`, so the docs' tables come from
a committed file), which `dsl.results.report` renders like any other result.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dsl.config import ConfigError


def export_sweep(name: str, tracking_uri: str | None) -> dict:
    from tracking.client import check_access, redact_uri, resolve_tracking_uri
    from tracking.comparison import sweep_export
    from tracking.sweep_runs import SweepRun

    uri = resolve_tracking_uri(tracking_uri)
    check_access(uri)
    sweep = SweepRun.find(uri, name)
    if sweep is None:
        raise ConfigError(f"{name}: neither a result file nor a sweep in the MLflow store {redact_uri(uri)} "
                          "(give --tracking-uri?)")
    return sweep_export(sweep, name)


def resolve_results(items: Sequence[str], tracking_uri: str | None, save_sweep: str | None,
                    tmp: str) -> list[str]:
    """Paths for `dsl.results.report`: files and folders as given; sweep names exported from MLflow (to
    `save_sweep` when given, else into `tmp`)."""
    paths = []
    names = [i for i in items if not Path(i).exists()]
    if save_sweep and len(names) != 1:
        raise ConfigError("--save-sweep needs exactly one sweep name among the arguments")
    for item in items:
        if Path(item).exists():
            paths.append(item)
            continue
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        export = export_sweep(item, tracking_uri)
        dst = Path(save_sweep) if save_sweep else Path(tmp) / f"{item}.sweep.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(export, indent=1))
        if save_sweep:
            print(f"saved the sweep's trials to {dst} (render again with: dsl-sweep report {dst})", flush=True)
        paths.append(str(dst))
    return paths


def report_sweep_runs(items: Sequence[str], out: str | None = None, figure: str | None = None,
                      into: str | None = None, command: str = "", tracking_uri: str | None = None,
                      save_sweep: str | None = None, block: str = "", paired_with: Sequence[str] = (),
                      same_iteration: bool = False) -> str:
    """`dsl-sweep report`: sweep names among `items` are read from their MLflow runs (exported to JSON, kept in
    `save_sweep` when given), files pass through; all are rendered by `report_result_files`."""
    from dsl.results.report import report_outputs, report_result_files
    from dsl.runtime.paths import WriteTarget, require_writable

    require_writable([*report_outputs(out, figure, into),
                      *([WriteTarget.file(save_sweep, "--save-sweep")] if save_sweep else [])])
    with tempfile.TemporaryDirectory(prefix="dsl-report-") as tmp:
        return report_result_files(resolve_results(items, tracking_uri, save_sweep, tmp), out, figure, into,
                                   command, block, paired_with, same_iteration)
