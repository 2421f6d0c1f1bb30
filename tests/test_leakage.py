"""Leak tests that can fail: change the labels of one outer test fold (or one held-out speaker), rerun,
and check that none of those utterances' predictions or probabilities move at any iteration.

The fold plan is fixed first (a stored assignment, or leave-one-speaker-out), so it cannot depend on the
labels that change. The same test on the paper's transductive `stratified` protocol must see a change,
which shows the test bites.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsl import ChainConfig, prepare_data, run_chain
from tests.support.data import write_tone

TINY = {"segments.hop": 4, "train.epochs": 3, "train.batch_size": 16, "train.lr": 3e-3, "protocol.folds": 2,
        "protocol.eval_folds": 2, "protocol.inner_folds": 2, "protocol.select_folds": 2, "iterations": 2,
        "train.num_threads": 1, "train.workers": 1}
N_CLASSES = 3


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """24 tone utterances, 3 'emotions' (pitch ranges) that overlap a little, 4 speakers."""
    root = tmp_path_factory.mktemp("leak-tones")
    rng = np.random.default_rng(1)
    rows = []
    for c, base in enumerate((300.0, 500.0, 800.0)):
        for i in range(8):
            name = f"c{c}_{i}.wav"
            write_tone(root / name, seconds=0.5 + 0.05 * i, freq=base * (1 + 0.5 * rng.random()))
            rows.append((name, c, f"spk{i % 4}"))
    return root, rows


def _manifest(root, rows, name: str, relabel: set[str] = frozenset()) -> str:
    """A manifest whose utterances in `relabel` get the next class (the files and speakers stay)."""
    lines = ["path,label,speaker"]
    for file, c, spk in rows:
        lines.append(f"{file},class{(c + 1) % N_CLASSES if file in relabel else c},{spk}")
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(manifest: str, cache, **extra) -> dict:
    cfg = ChainConfig(corpus="csv", data=manifest, cache_dir=str(cache)).replace(**{**TINY, **extra})
    return run_chain(cfg, prepare_data(cfg, show_progress=False), show_progress=False).to_dict()


def _moved(a: dict, b: dict, files: set[str]) -> list[str]:
    """Which (iteration, file) predictions or probabilities differ between two results (also under any test
    condition of `eval.*`)."""
    out = []
    for ia, ib in zip(a["iterations"], b["iterations"]):
        for j, (ua, ub) in enumerate(zip(ia["utterances"], ib["utterances"])):
            assert ua["file"] == ub["file"]
            if ua["file"] in files and (ua["predicted"] != ub["predicted"] or ua["proba"] != ub["proba"]):
                out.append(f"iteration {ia['iteration']}: {ua['file']}")
            for name, ca in ia.get("conditions", {}).items():
                if ua["file"] in files and "predicted" in ca and ca["predicted"][j] != ib["conditions"][name]["predicted"][j]:
                    out.append(f"iteration {ia['iteration']}, {name}: {ua['file']}")
    return out


def _changed_fold_run(tones, cache, tmp_path, protocol: str, **extra) -> tuple[dict, dict, set[str], int]:
    root, rows = tones
    original = _manifest(root, rows, "original.csv")
    first = _run(original, cache, **{"protocol.name": protocol, **extra})
    assignment = tmp_path / "folds.json"  # fix the outer folds: the plan must not follow the changed labels
    assignment.write_text(json.dumps({u["file"]: u["fold"] for u in first["iterations"][0]["utterances"]}))
    fixed = {"protocol.name": protocol, "protocol.assignment": str(assignment), **extra}
    before = _run(original, cache, **fixed)
    fold = 0
    changed = {u["file"] for u in before["iterations"][0]["utterances"] if u["fold"] == fold}
    after = _run(_manifest(root, rows, f"changed-{protocol}.csv", changed), cache, **fixed)
    return before, after, changed, fold


ACP_STAGE = {"stage.name": "acp", "stage.epochs": 10}  # attentive correlation pooling on the segment embeddings
# noisy and attacked test utterances (dsl.robustness): their predictions must not move either
CONDITIONS = {"eval.noise.types": "white", "eval.noise.snr": "5", "eval.adversarial.attacks": "fgsm",
              "eval.adversarial.eps": "0.3"}


@pytest.mark.parametrize("protocol, stage", [("nested", {}), ("refinery", {}), ("refinery", ACP_STAGE),
                                             ("refinery", CONDITIONS)],
                         ids=["nested", "refinery", "refinery-acp", "refinery-conditions"])
def test_leak_free_protocol_ignores_the_labels_of_its_test_fold(tones, feature_cache, tmp_path, protocol,
                                                                stage) -> None:
    before, after, changed, fold = _changed_fold_run(tones, feature_cache, tmp_path, protocol, **stage)
    assert before["config"]["stage"]["name"] == stage.get("stage.name", "forest")
    assert before["protocol"]["leak_free"] is True
    assert 0 < len(changed) < 24
    assert _moved(before, after, changed) == []
    for ib, ia in zip(before["iterations"], after["iterations"]):  # nor does the iteration picked for that fold
        assert ib["selected_iterations"][fold] == ia["selected_iterations"][fold]
    if "eval.noise.types" in stage:
        assert set(before["iterations"][-1]["conditions"]) == {"white_5dB", "fgsm_eps0.3", "noise_mean", "attack_mean"}
    # The change did reach the other scopes' targets (so the run really differed): some other prediction moved.
    assert _moved(before, after, {u["file"] for u in before["iterations"][0]["utterances"]} - changed)


def test_stratified_is_transductive_and_the_leak_test_sees_it(tones, feature_cache, tmp_path) -> None:
    before, after, changed, _ = _changed_fold_run(tones, feature_cache, tmp_path, "stratified")
    assert before["protocol"]["leak_free"] is False
    assert _moved(before, after, changed)  # the test fold's own predictions move: its labels reached them


def test_speaker_protocol_ignores_the_labels_of_a_held_out_speaker(tones, feature_cache) -> None:
    root, rows = tones
    loso = {"protocol.name": "speaker", "protocol.folds": 4, "protocol.inner_folds": 2}  # LOSO: no label in the plan
    before = _run(_manifest(root, rows, "spk-original.csv"), feature_cache, **loso)
    held_out = {file for file, _, spk in rows if spk == "spk0"}
    after = _run(_manifest(root, rows, "spk-changed.csv", held_out), feature_cache, **loso)
    assert before["protocol"]["leak_free"] is True
    assert {u["fold"] for u in before["iterations"][0]["utterances"] if u["file"] in held_out} == {0}
    assert _moved(before, after, held_out) == []
    transductive = {**loso, "protocol.name": "speaker_transductive"}
    t_before = _run(_manifest(root, rows, "spk-original.csv"), feature_cache, **transductive)
    t_after = _run(_manifest(root, rows, "spk-changed.csv", held_out), feature_cache, **transductive)
    assert _moved(t_before, t_after, held_out)  # the old `speaker` protocol leaks the held-out speaker's labels
