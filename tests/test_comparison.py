"""The parent run's trial comparison: table (CSV, sortable HTML), UA-per-iteration figure, importances."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna

from sweeps.search.importance import param_importances
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


def _fake_sweep(uri: str, tmp: Path) -> None:
    """A parent run with six trial runs (3 rules, WDSL at two α), UA/WA per iteration, one result.json."""
    from mlflow import MlflowClient

    from tracking.sweep_runs import ensure_experiment

    c = MlflowClient(uri)
    exp = ensure_experiment(c, "paper")
    parent = c.create_run(exp, run_name="paper", tags={"dsl.role": "parent"}).info.run_id
    specs = [("baseline", "0.2", 0.50), ("bdsl", "0.2", 0.52), ("wdsl", "0.2", 0.58), ("wdsl", "0.2", 0.60),
             ("wdsl", "0.5", 0.55), ("hdl", "0.2", 0.49)]
    (tmp / "result.json").write_text(json.dumps({"environment": {"fingerprint": "abc", "cpu": "Test CPU"}}))
    for i, (rule, alpha, last) in enumerate(specs):
        r = c.create_run(exp, run_name=f"t{i}", tags={"dsl.role": "trial", "mlflow.parentRunId": parent,
                                                      "ray_trial_id": f"t_{i:05d}"}).info.run_id
        for k, v in {"labels.rule": rule, "labels.alpha": alpha, "backbone": "small_cnn", "seed": "0",
                     "protocol.name": "stratified", "protocol.folds": "10", "corpus": "emodb", "data": "/d"}.items():
            c.log_param(r, k, v)
        for it, ua in enumerate((0.5, last)):
            c.log_metric(r, "ua", ua, step=it)
            c.log_metric(r, "wa", ua + 0.02, step=it)
        if i == 0:
            c.log_artifact(r, str(tmp / "result.json"))
        c.set_terminated(r)


def test_report_renders_the_paper_tables_of_a_sweep(tmp_path: Path, capsys) -> None:
    from sweeps.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _fake_sweep(uri, tmp_path)
    saved, fig = tmp_path / "paper.sweep.json", tmp_path / "paper.png"
    assert main(["report", "paper", "--tracking-uri", uri, "--save-sweep", str(saved), "--figure", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "Sweep `paper`: 6 trials | protocol stratified, leak_free: false | folds 10 | seed(s) 0" in out
    assert "**Table II: accuracy per iteration by label rule**" in out
    assert "| wdsl | 3 | 50.0 ± 0.0 (52.0 ± 0.0) | 57.7 ± 6.3 (59.7 ± 6.3) |" in out  # mean of 58, 60, 55 ± t-interval
    assert "**Table IV: accuracy per iteration of WDSL by α**" in out and "| 0.5 | 1 | 50.0 (52.0) | 55.0 (57.0) |" in out
    assert "Table III" not in out  # one backbone: nothing to compare
    assert "Machines: `abc`" in out and fig.stat().st_size > 5000
    export = json.loads(saved.read_text())
    assert export["kind"] == "sweep" and len(export["trials"]) == 6
    assert main(["report", str(saved)]) == 0  # the committed export renders the same tables
    again = capsys.readouterr().out

    def tables(text: str) -> str:
        return text[text.index("Sweep `paper`"):text.index("Files:")]

    assert tables(again) == tables(out)


def test_report_names_an_unknown_sweep(tmp_path: Path) -> None:
    import pytest

    from dsl.config import ConfigError
    from sweeps.sweep_report import resolve_results

    with pytest.raises(ConfigError, match="nope: neither a result file nor a sweep"):
        resolve_results(["nope"], f"sqlite:///{tmp_path / 'm.db'}", None, str(tmp_path))


def test_report_fills_a_named_block_and_leaves_the_others(tmp_path: Path) -> None:
    from dsl.results.report import splice

    doc = tmp_path / "README.md"
    doc.write_text("a\n<!-- dsl-sweep report: begin -->\nold\n<!-- dsl-sweep report: end -->\nb\n"
                   "<!-- dsl-sweep report: begin x -->\nold x\n<!-- dsl-sweep report: end x -->\nc\n")
    splice(doc, "new x", "cmd", block="x")
    text = doc.read_text()
    assert "old\n" in text and "old x" not in text and "new x" in text and "<!-- generated by: cmd -->" in text
    import pytest

    from dsl.config import ConfigError

    with pytest.raises(ConfigError, match="begin y"):
        splice(doc, "z", "cmd", block="y")


def test_report_links_a_figure_relative_to_the_page_it_fills() -> None:
    from dsl.results.report import figure_link

    assert figure_link("docs/results/a.png", "docs/results.md") == "results/a.png"  # MkDocs resolves it there
    assert figure_link("docs/results/a.png", "README.md") == "docs/results/a.png"
    assert figure_link("docs/results/a.png", None) == "docs/results/a.png"  # printed: as given
