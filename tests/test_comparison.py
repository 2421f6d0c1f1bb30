"""The parent run's trial comparison: table (CSV, sortable HTML), UA-per-iteration figure, importances."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna

from sweeps.importance import param_importances
from tracking.comparison import TrialSummary, table_rows, write_comparison


def _trials() -> list[TrialSummary]:
    return [TrialSummary("r1", "wdsl a=0.2", "t_00000", "FINISHED", False, {"labels.rule": "wdsl", "iterations": "2"},
                         {0: 0.5, 1: 0.6, 2: 0.55}, {0: 0.52, 1: 0.61, 2: 0.57}),
            TrialSummary("r2", "bdsl", "t_00001", "FINISHED", True, {"labels.rule": "bdsl", "iterations": "3"},
                         {0: 0.5}, {0: 0.52}),
            TrialSummary("r3", "hdl", "t_00002", "FAILED", False, {"labels.rule": "hdl", "iterations": "2"}, {}, {})]


def test_table_has_the_varying_parameters_and_final_scores() -> None:
    cols, rows = table_rows(_trials())
    assert cols[:5] == ["trial", "run", "status", "labels.rule", "iterations"]
    assert rows[0][-4:] == [3, 55.0, 57.0, 60.0]  # last iteration's UA/WA; the max is shown beside it
    assert rows[1][2] == "stopped early" and rows[2][-4:] == [0, None, None, None]


def test_files_are_written(tmp_path: Path) -> None:
    files = write_comparison(_trials(), tmp_path, "demo", {"labels.rule": 0.7, "iterations": 0.3}, "fANOVA")
    names = {f.name for f in files}
    assert names == {"trials.csv", "trials.html", "ua_per_iteration.png", "param_importances.json",
                     "param_importances.png"}
    rows = list(csv.reader(open(tmp_path / "trials.csv")))
    assert len(rows) == 4 and rows[3][-1] == ""
    page = (tmp_path / "trials.html").read_text()
    assert page.count("<tr>") == 4 and "addEventListener('click'" in page
    assert (tmp_path / "ua_per_iteration.png").stat().st_size > 5000
    assert json.loads((tmp_path / "param_importances.json").read_text())["importances"]["labels.rule"] == 0.7


def test_importances_from_optuna() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_int("its", 1, 3), n_trials=12)
    imp, note = param_importances(study)
    assert set(imp) == {"lr", "its"} and imp["lr"] > imp["its"] and "12 complete" in note
    empty = optuna.create_study()
    assert param_importances(empty) == ({}, "0 complete trial(s): importances need at least 2")
