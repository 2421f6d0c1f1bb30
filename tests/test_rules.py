"""Property tests of the label rules and alpha schedules."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsl.method.rules import RULES, get_rule, one_hot
from dsl.method.schedules import SCHEDULES, alpha_at


@st.composite
def posteriors(draw):
    k = draw(st.integers(2, 8))
    n_utt = draw(st.integers(1, 6))
    per = draw(st.lists(st.integers(1, 5), min_size=n_utt, max_size=n_utt))
    utt = np.repeat(np.arange(n_utt), per)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(k), size=len(utt)).astype(np.float32)
    labels = rng.integers(0, k, n_utt)
    return q, one_hot(labels[utt], k), utt


@settings(max_examples=60, deadline=None)
@given(posteriors(), st.floats(0, 1))
def test_every_rule_gives_rows_summing_to_one(data, alpha) -> None:
    q, y, utt = data
    for rule in RULES.values():
        g = rule(q, y, utt, alpha=alpha, epsilon=alpha)
        assert g.shape == q.shape
        np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-5)
        assert np.all(g >= 0)


@settings(max_examples=40, deadline=None)
@given(posteriors())
def test_wdsl_limits(data) -> None:
    q, y, utt = data
    wdsl = get_rule("wdsl")
    np.testing.assert_allclose(wdsl(q, y, utt, alpha=1.0), y, atol=1e-6)
    np.testing.assert_allclose(wdsl(q, y, utt, alpha=0.0), get_rule("bdsl")(q, y, utt), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(posteriors())
def test_gsl_constant_within_utterance_and_hdl_one_hot(data) -> None:
    q, y, utt = data
    g = get_rule("gsl")(q, y, utt)
    for u in np.unique(utt):
        rows = g[utt == u]
        np.testing.assert_allclose(rows, np.broadcast_to(q[utt == u].mean(axis=0), rows.shape), atol=1e-5)
    h = get_rule("hdl")(q, y, utt)
    assert set(np.unique(h)) <= {0.0, 1.0} and np.all(h.sum(axis=1) == 1)
    assert np.array_equal(np.argmax(h, axis=1), np.argmax(q, axis=1))


def test_baseline_and_label_smoothing_are_static() -> None:
    q = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    y = one_hot(np.array([1, 1]), 2)
    assert np.array_equal(get_rule("baseline")(q, y, np.array([0, 0])), y)
    ls = get_rule("label_smoothing")(q, y, np.array([0, 0]), epsilon=0.2)
    np.testing.assert_allclose(ls, [[0.1, 0.9], [0.1, 0.9]], atol=1e-6)
    assert get_rule("wdsl").uses_alpha and not get_rule("gsl").uses_alpha


def test_paper_step_annealing() -> None:
    alphas = [alpha_at("step", t, 6, 0.9, 0.1, 0.2) for t in range(1, 7)]
    np.testing.assert_allclose(alphas, [0.9, 0.7, 0.5, 0.3, 0.1, 0.1], atol=1e-9)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_start_and_end(name) -> None:
    first, last = alpha_at(name, 1, 5, 0.9, 0.1), alpha_at(name, 5, 5, 0.9, 0.1)
    assert first == pytest.approx(0.9)
    if name == "constant":
        assert last == pytest.approx(0.9)
    else:
        assert last == pytest.approx(0.1, abs=1e-6)
        seq = [alpha_at(name, t, 5, 0.9, 0.1) for t in range(1, 6)]
        assert all(a >= b - 1e-12 for a, b in zip(seq, seq[1:]))  # monotone annealing


def test_schedule_rejects_iteration_zero_and_unknown_names() -> None:
    with pytest.raises(ValueError):
        alpha_at("constant", 0, 3, 0.2)
    with pytest.raises(KeyError, match="known"):
        alpha_at("nope", 1, 3, 0.2)
