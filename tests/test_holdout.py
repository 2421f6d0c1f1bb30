"""The holdout (the final exam's data): chosen without labels and stored, split by file identity, and scored by a
chain that never reads a held-out label (change them: no held-out prediction moves)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data, run_chain
from dsl.config import ConfigError, ProtocolSpec
from dsl.protocols.holdout import choose, load_holdout, make_holdout, parse_holdout, split
from dsl.protocols.plans import holdout_protocols, make_plan
from tests.support.data import write_tone

SPEAKERS = [f"{s:02d}" for s in (3, 8, 9, 10, 11)]
PATHS = [f"/corpus/wav/{spk}a0{i}{c}a.wav" for spk in SPEAKERS for i in range(4) for c in "WLE"]
SPK = [p.split("/")[-1][:2] for p in PATHS]
LABELS = np.array([{"W": 0, "L": 1, "E": 2}[p.split("/")[-1][5]] for p in PATHS])


@pytest.mark.parametrize("rule", [{"speakers": ["03", "09"]}, {"speaker_fraction": 0.4, "seed": 3}])
def test_speaker_rules_read_no_label(rule) -> None:
    spec = parse_holdout(rule)
    a = choose(spec, PATHS, SPK, LABELS)
    b = choose(spec, PATHS, SPK, np.random.default_rng(0).permutation(LABELS))
    c = choose(spec, PATHS, SPK, None)
    assert a.files == b.files == c.files and len(a.speakers) == 2
    assert {f[:2] for f in a.files} == set(a.speakers)  # whole speakers: speaker-disjoint from the search


def test_fraction_is_stratified_and_stored_so_changed_labels_keep_it(tmp_path: Path) -> None:
    spec = parse_holdout({"fraction": 0.25, "seed": 1})
    path = tmp_path / "holdout.json"
    made = make_holdout(spec, PATHS, ["unknown"] * len(PATHS), LABELS, path)
    held = made.mask(PATHS)
    assert np.bincount(LABELS[held]).tolist() == [5, 5, 5]  # stratified: a quarter of each class
    stored = json.loads(path.read_text())
    assert "label" not in json.dumps(stored["files"]) and stored["kind"] == "holdout"
    again = make_holdout(spec, PATHS, ["unknown"] * len(PATHS), (LABELS + 1) % 3, path)  # labels changed
    assert again.files == made.files
    with pytest.raises(ConfigError, match="another rule"):
        make_holdout(parse_holdout({"fraction": 0.3}), PATHS, SPK, LABELS, path)


def test_rules_are_checked_with_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_holdout({"speakers": ["03"], "fraction": 0.2})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_holdout({"speaker": ["03"]})
    with pytest.raises(ConfigError, match=r"speaker\(s\) 99; the corpus has 03, 08"):
        choose(parse_holdout({"speakers": ["99"]}), PATHS, SPK)
    with pytest.raises(ConfigError, match="every speaker"):
        choose(parse_holdout({"speakers": SPEAKERS}), PATHS, SPK)
    with pytest.raises(ConfigError, match="without speakers"):
        choose(parse_holdout({"speakers": ["03"]}), PATHS, ["unknown"] * len(PATHS))
    assert parse_holdout("{speakers: [03, 08]}").speakers == ("3", "08")  # YAML's 03 is 3: still matches "03"
    assert choose(parse_holdout("{speakers: [03]}"), PATHS, SPK).speakers == ("03",)


def test_a_file_that_is_not_an_assignment_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "folds.json"
    bad.write_text(json.dumps({"a.wav": 0}))
    with pytest.raises(ConfigError, match=f"{bad}: not a holdout assignment"):
        load_holdout(bad)


class _Data:
    """Enough of a CorpusData for `split` (paths, and `subset` recording what it keeps)."""

    def __init__(self, paths):
        self.paths = tuple(paths)

    def subset(self, idx):
        return [self.paths[i] for i in idx]


def test_split_is_by_file_identity_not_position_or_label(tmp_path: Path) -> None:
    made = make_holdout(parse_holdout({"speakers": ["08"]}), PATHS, SPK, None, tmp_path / "h.json")
    shuffled = [PATHS[i] for i in np.random.default_rng(2).permutation(len(PATHS))]
    moved = [p.replace("/corpus/wav/", "/elsewhere/emodb/wav/") for p in shuffled]  # another checkout of the corpus
    search, held = split(_Data(moved), load_holdout(tmp_path / "h.json"))
    assert sorted(Path(p).name for p in held) == sorted(Path(f).name for f in made.files)
    assert all(Path(p).name[:2] != "08" for p in search) and len(search) + len(held) == len(PATHS)


@pytest.mark.parametrize("protocol", ["stratified", "speaker_transductive", "nested", "speaker", "refinery"])
def test_holdout_plan_trains_outside_the_holdout_and_scores_it_only(protocol: str) -> None:
    assert protocol in holdout_protocols() and "cross_corpus" not in holdout_protocols()
    test = np.flatnonzero(np.isin(SPK, ["03", "10"]))
    spec = ProtocolSpec(name=protocol, folds=3, inner_folds=2, holdout="h.json")
    plan = make_plan(LABELS, np.asarray(SPK), spec, 0, (test,))
    (scope,) = plan.scopes
    assert plan.leak_free and plan.partial and plan.held_out
    assert np.array_equal(scope.test, test) and not np.intersect1d(scope.train, test).size
    assert len(scope.train) + len(test) == len(PATHS)
    assert np.array_equal(np.sort(np.concatenate(scope.folds)), scope.train) or scope.in_sample
    assert scope.in_sample == (protocol == "refinery") and len(scope.folds) == {"nested": 2, "speaker": 2,
                                                                                  "refinery": 1}.get(protocol, 3)
    assert plan.outer_fold(len(PATHS)).tolist() == [0 if i in test else -1 for i in range(len(PATHS))]


TINY = {"segments.hop": 4, "train.epochs": 2, "train.batch_size": 16, "train.lr": 3e-3, "protocol.folds": 2,
        "protocol.select_folds": 2, "iterations": 1, "train.num_threads": 1, "train.workers": 1,
        "protocol.name": "refinery"}


def test_a_final_exam_never_reads_a_held_out_label(tmp_path: Path, feature_cache: Path) -> None:
    """Train on three speakers, score the fourth: relabel the fourth and its predictions stay, its score moves."""
    rng = np.random.default_rng(1)
    rows = []
    for c, base in enumerate((300.0, 500.0, 800.0)):
        for i in range(8):
            write_tone(tmp_path / f"c{c}_{i}.wav", seconds=0.5 + 0.05 * i, freq=base * (1 + 0.5 * rng.random()))
            rows.append((f"c{c}_{i}.wav", c, f"spk{i % 4}"))
    held = {f for f, _, s in rows if s == "spk3"}

    def manifest(name: str, relabel: set[str]) -> str:
        lines = ["path,label,speaker", *(f"{f},class{(c + 1) % 3 if f in relabel else c},{s}" for f, c, s in rows)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return str(tmp_path / name)

    results = []
    for name, relabel in (("original.csv", set()), ("changed.csv", held)):
        cfg = ChainConfig(corpus="csv", data=manifest(name, relabel), cache_dir=str(feature_cache)).replace(**TINY)
        data = prepare_data(cfg, show_progress=False)
        assignment = make_holdout(parse_holdout({"speakers": ["spk3"]}), data.paths, data.speakers, None,
                                  tmp_path / "holdout.json")
        assert sorted(Path(f).name for f in assignment.files) == sorted(held)
        cfg = cfg.replace(**{"protocol.holdout": str(tmp_path / "holdout.json")})
        results.append(run_chain(cfg, data, show_progress=False).to_dict())
    before, after = results
    assert before["protocol"]["leak_free"] is True
    for ib, ia in zip(before["iterations"], after["iterations"]):
        scored = [(ub["file"], ub["fold"], ub["proba"]) for ub in ib["utterances"] if ub["fold"] >= 0]
        assert sorted(f for f, _, _ in scored) == sorted(held)  # the holdout alone is scored
        assert scored == [(ua["file"], ua["fold"], ua["proba"]) for ua in ia["utterances"] if ua["fold"] >= 0]
        assert ib["selected_iterations"] == ia["selected_iterations"]
    assert before["iterations"][-1]["ua"] != after["iterations"][-1]["ua"]  # the score does read them


def test_subset_packs_the_frames_of_the_utterances_kept() -> None:
    from dsl.data.bundle import CorpusData

    frames = np.arange(11 * 2, dtype=np.float32).reshape(11, 2)  # 3 utterances of 2, 5, 3 frames + padding
    data = CorpusData(frames, np.array([0, 2, 7, 10]), np.array([0, 1, 2]), np.array(["a", "b", "c"]),
                      ("x", "y", "z"), ("a/1.wav", "b/2.wav", "c/3.wav"))
    sub = data.subset(np.array([2, 0]))
    assert sub.frame_offsets.tolist() == [0, 3, 5] and sub.paths == ("c/3.wav", "a/1.wav")
    assert np.array_equal(sub.frames[:3], frames[7:10]) and np.array_equal(sub.frames[3:5], frames[0:2])
    assert np.array_equal(sub.frames[-1], frames[-1]) and sub.labels.tolist() == [2, 0]


def test_run_holdout_takes_a_file_or_a_rule_stored_beside_the_result(tmp_path: Path) -> None:
    from dsl.studies.run import resolve_holdout

    lines = ["path,label,speaker"]
    for i in range(12):
        write_tone(tmp_path / f"t{i}.wav", seconds=0.2)
        lines.append(f"t{i}.wav,class{i % 3},spk{i % 4}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    cfg = ChainConfig(corpus="csv", data=str(tmp_path / "m.csv"))
    out = tmp_path / "results" / "exam.json"
    made = resolve_holdout(cfg, "{speakers: [spk1]}", out)
    stored = tmp_path / "results" / "exam.holdout.json"
    assert made.protocol.holdout == str(stored.resolve())
    assert sorted(load_holdout(stored).files) == ["t1.wav", "t5.wav", "t9.wav"]
    again = resolve_holdout(cfg, str(stored), tmp_path / "other.json")  # a file is used as it is
    assert again.protocol.holdout == str(stored.resolve())
    with pytest.raises(ConfigError, match="--holdout: unknown key"):
        resolve_holdout(cfg, "{speaker: [spk1]}", out)
