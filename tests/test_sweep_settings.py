"""The sweep's settings as the parent run keeps them (params `sweep.*`) read back as one typed object, with one
set of defaults (the sweep file's `select:` block and an old parent run without a setting agree)."""
from __future__ import annotations

from sweeps.search.spec import SelectSpec, parse_sweep
from tracking.sweep_settings import SweepSettings


def _spec(**top):
    return parse_sweep({"name": "s", "base": {"preset": "cpu", "data": "/x", "protocol": {"name": "nested"}},
                        "search": {"rule": ["bdsl", "wdsl"], "alpha": {"low": 0.0, "high": 1.0}}, **top})


def test_settings_round_trip_through_params() -> None:
    from sweeps.search.launcher import sweep_settings

    spec = _spec(objective="selected", select={"protocol": "speaker", "top_k": 2, "seeds": 4},
                 sampler={"type": "random", "seed": None})
    logged = sweep_settings(spec, 6)
    params = logged.to_params()
    assert params["sweep.select_top_k"] == "2" and params["sweep.leak_free"] == "True"
    assert params["sweep.sampler_seed"] == "None"
    back = SweepSettings.from_params({**params, "base.seed": "0", "other": "x"})  # other params are ignored
    assert back == logged
    assert (back.objective, back.select_protocol, back.select_top_k, back.select_seeds) == ("selected", "speaker", 2, 4)
    assert back.leak_free is True and back.sampler_seed is None and back.num_samples == 6


def test_missing_settings_read_as_the_sweep_files_defaults() -> None:
    old = SweepSettings.from_params({"sweep.name": "s", "sweep.num_samples": "4"})  # before `select` was logged
    default = _spec().select
    assert default == SelectSpec()
    assert (old.select_protocol, old.select_top_k, old.select_seeds) == (default.protocol, default.top_k, default.seeds)
    assert old.objective == _spec().objective and old.num_samples == 4
