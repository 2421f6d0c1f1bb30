"""What a held-out scope's stage trains and predicts on (`stage.fit_on`, `stage.test_views`), the selector
agreement, and fold jobs that carry only their training rows' targets. No network is trained here."""
from __future__ import annotations

import numpy as np
import pytest

from dsl.config import ChainConfig, ConfigError, StageSpec
from dsl.data.bundle import CorpusData
from dsl.data.segments import build_segments
from dsl.execution.fold_job import FoldJob, training_rows
from dsl.method.rules import one_hot
from dsl.method.stages import make_stage
from dsl.pipeline.chain import ChainIterator
from dsl.pipeline.checks import config_problems
from dsl.protocols.selection import selector_agreement


def _data(n_utt: int = 30, per: int = 40) -> CorpusData:
    rng = np.random.default_rng(0)
    labels = np.arange(n_utt) % 3
    return CorpusData(frames=rng.normal(size=(n_utt * per + 1, 8)).astype(np.float32),
                      frame_offsets=np.arange(n_utt + 1, dtype=np.int64) * per, labels=labels.astype(np.int64),
                      speakers=np.array([f"s{u % 5}" for u in range(n_utt)]), label_names=("a", "b", "c"),
                      paths=tuple(f"u{u}.wav" for u in range(n_utt)))


CFG = ChainConfig().replace(**{"segments.hop": 8, "protocol.folds": 3, "protocol.inner_folds": 2,
                               "train.workers": 1})


def test_a_fold_job_carries_only_its_training_rows() -> None:
    data = _data()
    seg = build_segments(data.frame_offsets, CFG.segments, warn=False)
    targets = one_hot(data.labels[seg.utt], 3)
    train, test = np.arange(0, 20), np.arange(20, 30)
    job = FoldJob.of(0, 0, 0, train, test, targets, 1, seg)
    assert job.targets.shape == (len(seg.of_utterances(train)), 3)
    assert np.array_equal(job.targets, targets[seg.of_utterances(train)])
    row_of = training_rows(seg, job)
    assert np.all(row_of[seg.of_utterances(test)] == -1)  # a test segment has no row to read
    wrong = FoldJob(0, 0, 0, train, test, targets, 1)  # every segment's targets: refused
    with pytest.raises(ValueError, match="target rows for .* training segments"):
        training_rows(seg, wrong)


def test_cross_fit_adds_two_half_networks_per_in_sample_scope() -> None:
    data = _data()
    chain = ChainIterator(CFG.replace(**{"protocol.name": "refinery", "stage.fit_on": "cross_fit"}), data,
                          show_progress=False)
    plain = ChainIterator(CFG.replace(**{"protocol.name": "refinery"}), data, show_progress=False)
    assert chain.n_jobs == 3 * 3 and plain.n_jobs == 3
    for s, scope in enumerate(chain.plan.scopes):
        halves = chain.stage_folds[s]
        assert len(halves) == 2 and np.array_equal(np.sort(np.concatenate(halves)), scope.train)
        for c, half in enumerate(halves):
            job = chain.job(0, s, 1 + c, chain.state.targets[s])
            assert np.array_equal(job.predict_utterances, half)  # predicts its half only (no test utterance)
            assert np.array_equal(job.train_utterances, np.setdiff1d(scope.train, half))
            assert chain.needs(s, 1 + c) == [0]  # trains on the targets the scope's network sets
        main = chain.job(0, s, 0, chain.state.targets[s])
        assert np.array_equal(main.train_utterances, plain.job(0, s, 0, plain.state.targets[s]).train_utterances)
    with pytest.raises(ConfigError, match="cross_fit applies to in-sample scopes"):
        ChainIterator(CFG.replace(**{"protocol.name": "nested", "stage.fit_on": "cross_fit"}), data,
                      show_progress=False)


def test_stage_input_options_are_checked() -> None:
    bad = ChainConfig().replace(**{"stage.fit_on": "halves", "stage.test_views": "max"})
    problems = "\n".join(config_problems(bad))
    assert "stage.fit_on 'halves' is unknown; allowed: in_sample, cross_fit" in problems
    assert "stage.test_views 'max' is unknown; allowed: mean, each" in problems


def test_the_forest_reads_each_test_view_or_their_mean() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 10)

    def utt(y: int, sharp: float) -> np.ndarray:
        p = rng.dirichlet(np.ones(2) * (1.0 / sharp), size=6) * 0.5 + 0.5 * np.eye(2)[y]
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    train = [utt(y, 1.0) for y in labels]
    views = [[utt(y, 1.0) for y in (0, 1, 0)] for _ in range(3)]
    each = make_stage(StageSpec(test_views="each"), 2).fit_proba(train, labels, views, 0)
    mean = make_stage(StageSpec(), 2).fit_proba(train, labels, views, 0)
    one = make_stage(StageSpec(), 2)
    by_view = [one.fit_proba(train, labels, [v], 0) for v in views]
    np.testing.assert_allclose(each, np.mean(by_view, axis=0), atol=1e-6)  # average of each view's forest output
    assert each.shape == mean.shape == (3, 2)
    assert np.array_equal(make_stage(StageSpec(test_views="each"), 2).fit_proba(train, labels, views[:1], 0),
                          by_view[0])  # one view: the same either way


def test_selector_agreement_counts_folds_whose_pick_was_best_on_test() -> None:
    history = [{"iteration": 0, "val_ua": [0.9, 0.5, 0.6], "fold_ua": [0.70, 0.60, 0.50]},
               {"iteration": 1, "val_ua": [0.8, 0.7, 0.6], "fold_ua": [0.75, 0.65, 0.50]}]
    # picks: fold 0 -> 0 (test preferred 1), fold 1 -> 1 (agrees), fold 2 -> 0 on a tie (test tie: agrees)
    assert selector_agreement(history) == pytest.approx(2 / 3)
    assert selector_agreement(history[:1]) == 1.0


def _study(tmp_path, name: str, protocol: str, stage: dict, seeds: list[int], ua: list[list[float]]):
    """A small synthetic study file: `ua[i][j]` is iteration i's UA of seed j (selected UA 1 point below)."""
    from dsl.results.study import aggregate
    from dsl.results.study import write_json as write

    cfg = CFG.replace(**{"corpus": "emodb", "protocol.name": protocol, "labels.rule": "wdsl",
                         **{f"stage.{k}": v for k, v in stage.items()}})
    runs = [{"iterations": [{"iteration": i, "alpha": 0.2 if i else None, "seconds": 60.0, "wa": u[j], "ua": u[j],
                             "selected_wa": u[j] - 0.01, "selected_ua": u[j] - 0.01,
                             "val_ua": [0.5 + 0.1 * i, 0.6], "fold_ua": [u[j], u[j]]}
                            for i, u in enumerate(ua)]} for j in range(len(seeds))]
    study = {"format": 1, "kind": "study", "command": f"dsl-sweep run ... --out {name}.json",
             "protocol": {"name": protocol, "leak_free": True, "outer": "balanced", "folds": 3},
             "seeds": seeds, "environments": [], "config": {**cfg.to_dict(), "seed": None},
             "seconds_per_seed": {"mean": 120.0, "sd": None, "low": None, "high": None, "n": 1, "values": [120.0]},
             "iterations": aggregate(runs)}
    return str(write(study, tmp_path / f"{name}.json"))


def test_report_pairs_todays_stage_inputs_with_the_matched_ones(tmp_path, capsys) -> None:
    """`dsl-sweep report TODAY MATCHED ... --paired-with TODAY ... --same-iteration`: today's stage inputs
    (in_sample / mean) and the matched ones (cross_fit / each), row under row, each matched row paired by seed
    with today's same iteration in the same protocol; today's rows are the reference."""
    from sweeps.cli import main

    in_sample = _study(tmp_path, "refinery_in_sample", "refinery", {"fit_on": "in_sample"}, [0, 1, 2],
                       [[0.60, 0.62, 0.64], [0.61, 0.63, 0.65]])
    cross_fit = _study(tmp_path, "refinery_cross_fit", "refinery", {"fit_on": "cross_fit"}, [0, 1, 2],
                       [[0.60, 0.62, 0.64], [0.63, 0.66, 0.68]])  # iteration 1: +2, +3, +3 points
    mean = _study(tmp_path, "nested_mean", "nested", {"test_views": "mean"}, [0], [[0.55], [0.56]])
    each = _study(tmp_path, "nested_each", "nested", {"test_views": "each"}, [0], [[0.57], [0.60]])
    out = tmp_path / "pairs.md"
    assert main(["report", in_sample, cross_fit, mean, each, "--paired-with", in_sample, "--paired-with", mean,
                 "--same-iteration", "--out", str(out)]) == 0
    capsys.readouterr()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == 8
    head = next(line for line in out.read_text().splitlines() if line.startswith("| protocol"))
    assert "UA vs reference, same iteration (paired) | selected UA vs reference (paired)" in head
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    today = [c for c in cells if c[2].startswith(("baseline", "WDSL")) and "stage" not in c[2]]
    assert len(today) == 4 and all(c[6] == c[7] == "reference" for c in today)
    fit = [c for c in cells if "stage fit on cross-fit halves" in c[2]]
    assert [c[0] for c in fit] == ["`refinery`"] * 2
    assert fit[0][6] == "0.0 ± 0.0" and fit[1][6].startswith("2.7 ± ")  # paired by seed, iteration by iteration
    assert fit[1][7].startswith("2.7 ± ")  # selected UA, likewise
    views = [c for c in cells if "stage on each test view" in c[2]]
    assert [c[0] for c in views] == ["`nested`"] * 2 and [c[6] for c in views] == ["2.0 (1 seed)", "4.0 (1 seed)"]
    # Without --same-iteration every row is paired with today's iteration 0, today's own rows included.
    from dsl.results.report import markdown

    plain = markdown([in_sample, cross_fit], paired_with=[in_sample])
    assert "reference |" not in plain and "UA vs baseline (paired)" in plain
