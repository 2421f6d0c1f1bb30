"""Sweep definitions: the YAML schema, parsed into typed, validated dataclasses.

A sweep file has `name`, `base` (a ChainConfig mapping, optionally `preset: cpu|paper` plus
overrides; its `protocol` is the one the search runs under), `search` (parameters to sample),
`objective` (`final` or `selected`: the score at a rule fixed in advance; `selected:white_10dB` or
`final:noise_mean`: the same under a test condition of `base.eval`, `dsl.robustness.conditions`), `objective_seeds`
(chains per trial, on the same seeds for every trial, the objective their mean), `holdout` (utterances no trial
sees: `dsl.protocols.holdout`), `select` (how `dsl-sweep best` decides: a race of the top configurations on fresh
seeds under a leak-free protocol, then the final exam on the holdout), `sampler`, `scheduler`, `num_samples`,
`max_concurrent`, `resources`, `max_failures`, `storage_path` and `plots`. Every problem is reported at once in one `ConfigError`. `seed` is not searchable: a
sweep that picks its seed picks noise.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from dsl.config import (
    SHORT_NAMES,
    ChainConfig,
    ConfigError,
    flatten,
    from_dict,
    load_config,
)
from dsl.pipeline.checks import check_config, config_problems
from dsl.pipeline.keys import key_default, selector_registry
from dsl.plugins import load_plugins
from dsl.protocols.holdout import HoldoutSpec, parse_holdout
from dsl.protocols.plans import is_leak_free, leak_free_protocols
from dsl.robustness.conditions import condition_names, summary_names
from dsl.runtime.paths import is_uri

# ParamSpec stays importable from here too: the tuner.pkl of a sweep started before it moved names it so.
from sweeps.search.space import ParamSpec, SearchSpace, sample_configs
from tracking.sweep_settings import SweepSettings
from trainables.context import ResourceSpec
from trainables.metrics import OBJECTIVES, parse_objective

# Short names of the search parameters -> dotted ChainConfig keys (any dotted key works too).
ALIASES: dict[str, str] = {name: SHORT_NAMES[name] for name in (
    "backbone", "rule", "alpha", "schedule", "alpha_end", "alpha_step", "epsilon", "iterations", "lr", "segment_hop",
    "epochs", "batch_size", "stage", "protocol")}
# Front-end keys a sweep may search (as lists of choices): the driver extracts each distinct front end once
# and every trial reads the frames of its own (`sweeps.search.space.feature_variants`).
SEARCHABLE_FEATURES = ("features.kind", "features.ssl_model", "features.ssl_layer", "features.ssl_layer_sum")
UNSEARCHABLE = ("seed", "seeds")  # replicates are for re-evaluation, not for the search to pick
TOP_KEYS = ("name", "base", "search", "objective", "select", "sampler", "scheduler", "num_samples", "max_concurrent",
            "resources", "max_failures", "storage_path", "plots", "step_cache", "holdout", "objective_seeds")
SAMPLERS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "none")
METRIC = "objective"  # what the searcher and the scheduler maximise (trainables.metrics.objective_value)
MODE = "max"


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the Optuna sampler


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA over chain iterations (`time_attr = iteration`)."""

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class SelectSpec:
    """How `dsl-sweep best` decides (`sweeps.selection.best`): a race of the sweep's `top_k` distinct configurations
    on fresh seeds under the leak-free `protocol` (`dsl.results.racing`: `seeds_per_round` seeds per round, tests from
    `min_seeds` shared seeds on, family-wise error `alpha` under `correction`, at most `seeds` seeds per candidate
    and `budget` chains in all), then, with a holdout, the final exam: the winner and the `reference` (overrides of
    the sweep's base; default the rule baseline at iteration 0) on `exam_seeds` seeds, scored on the holdout. The
    defaults are the logged settings' (what `best` reads for a sweep that did not log one)."""

    protocol: str = SweepSettings.select_protocol
    top_k: int = SweepSettings.select_top_k
    seeds: int = SweepSettings.select_seeds
    seeds_per_round: int = 1
    min_seeds: int = 3
    alpha: float = SweepSettings.select_alpha
    budget: int | None = SweepSettings.select_budget
    correction: str = "race"
    tie_break: str = "cheapest"  # several survivors: the cheapest, or "mean" (bench/selection.py measures both)
    exam_seeds: int = SweepSettings.select_exam_seeds
    reference: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_REFERENCE))

    def problems(self) -> list[str]:
        from dsl.results.racing import CORRECTIONS, TIE_BREAKS

        out = []
        if not is_leak_free(self.protocol):
            out.append(f"select.protocol {self.protocol!r} is not a leak-free protocol; allowed: "
                       f"{', '.join(leak_free_protocols())}")
        ints = {"top_k": 1, "seeds": 2, "seeds_per_round": 1, "min_seeds": 2, "exam_seeds": 2}
        for k, least in ints.items():
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                out.append(f"select.{k}: {k} >= {least} (an integer) required; got {v!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha < 1.0:
            out.append(f"select.alpha: a number in (0, 1) required; got {self.alpha!r}")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            out.append(f"select.budget: chains, an integer >= 1 (or leave it out); got {self.budget!r}")
        if self.correction not in CORRECTIONS:
            out.append(f"select.correction {self.correction!r} is unknown; allowed: {', '.join(CORRECTIONS)}")
        if self.tie_break not in TIE_BREAKS:
            out.append(f"select.tie_break {self.tie_break!r} is unknown; allowed: {', '.join(TIE_BREAKS)}")
        if not isinstance(self.reference, Mapping):
            out.append(f"select.reference: a mapping of config overrides of the base (e.g. {{rule: baseline, "
                       f"iterations: 0}}); got {self.reference!r}")
        return out

    def reference_overrides(self) -> dict[str, Any]:
        """The reference's overrides of the base as dotted config keys (short names such as `rule` allowed)."""
        return {ALIASES.get(str(k), str(k)): v for k, v in self.reference.items()}


DEFAULT_REFERENCE = {"rule": "baseline", "iterations": 0}


def parse_select(raw: Any, problems: list[str]) -> SelectSpec:
    """The `select:` mapping; problems are appended (with the key), a default spec returned on error."""
    sel = _sub(SelectSpec, raw, "select", problems)
    problems.extend(sel.problems())
    return sel


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: ChainConfig
    search: tuple[ParamSpec, ...]
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec | None = None
    num_samples: int = 8
    num_samples_given: bool = False  # by the file or --trials (a grid then runs at most that many, else all of it)
    max_concurrent: int = 2
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    max_failures: int = 1
    storage_path: str = "ray_results"
    contour_utterance: int | str = 0  # utterance index or a substring of its path
    objective: str = SweepSettings.objective
    select: SelectSpec = field(default_factory=SelectSpec)
    holdout: HoldoutSpec | None = None  # utterances no trial sees: the final exam of `dsl-sweep best`
    objective_seeds: int = SweepSettings.objective_seeds  # chains per trial on the same seeds; the objective: their mean
    step_cache: bool = True  # trials share fold trainings and scores through `<storage>/step_cache` (dsl.execution.step_cache)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def space(self) -> SearchSpace:
        """The conditional search space over `base` (built once per spec)."""
        return SearchSpace(self.search, self.base)

    @cached_property
    def samples(self) -> tuple[ChainConfig, ...]:
        """Distinct random trial configs of the space (sampled once per spec), to check before the sweep starts."""
        return tuple(sample_configs(self.space, n=64))

    def param(self, key: str) -> ParamSpec | None:
        return next((p for p in self.search if p.key == key), None)

    def max_iterations(self) -> int:
        p = self.param("iterations")
        if p is None:
            return self.base.iterations
        if p.kind == "categorical":
            return int(max(p.choices))
        return int(p.value if p.kind == "const" else p.high)


def _check_names(name: str, key: str, values: list[Any], problems: list[str]) -> None:
    known = selector_registry(key)
    bad = [v for v in values if known is not None and v not in known]
    if bad:
        problems.append(f"search.{name}: unknown {', '.join(map(str, bad))}; allowed: {', '.join(known.names())}")


def parse_param(name: str, raw: Any, problems: list[str]) -> ParamSpec | None:
    key = ALIASES.get(name, name)
    if key in UNSEARCHABLE:
        problems.append(f"search.{name}: the seed is not searchable (a sweep that picks its seed picks noise); "
                        "set base.seed, and `dsl-sweep best` re-evaluates the top configurations on fresh seeds")
        return None
    try:
        default = key_default(key)
    except KeyError:
        problems.append(f"search.{name}: unknown parameter; use one of {', '.join(ALIASES)}, a dotted "
                        f"config key such as train.batch_size, or labels.params.<name> of a registered rule")
        return None
    _check_names(name, key, raw if isinstance(raw, list) else [] if isinstance(raw, Mapping) else [raw], problems)
    if isinstance(raw, list):
        if not raw:
            problems.append(f"search.{name}: empty list of choices")
            return None
        if len(raw) == 1:
            return ParamSpec(key, "const", value=raw[0])
        return ParamSpec(key, "categorical", choices=tuple(raw))
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"low", "high", "step", "log"}
        if unknown or "low" not in raw or "high" not in raw:
            problems.append(f"search.{name}: a range needs low and high (optional step, log); got {dict(raw)}")
            return None
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            problems.append(f"search.{name}: a range needs a numeric parameter; {key} is {type(default).__name__}")
            return None
        kind = "int" if isinstance(default, int) else "float"
        low, high = raw["low"], raw["high"]
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or low > high:
            problems.append(f"search.{name}: need numbers low <= high; got low={low!r}, high={high!r}")
            return None
        if raw.get("log") and raw.get("step"):
            problems.append(f"search.{name}: log and step cannot be combined")
        if raw.get("log") and low <= 0:
            problems.append(f"search.{name}: a log range needs low > 0")
        return ParamSpec(key, kind, low=low, high=high, step=raw.get("step"), log=bool(raw.get("log", False)))
    return ParamSpec(key, "const", value=raw)


def _base_config(raw: Any, data: str | None, problems: list[str]) -> ChainConfig | None:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append("base: expected a mapping (a ChainConfig, optionally with `preset: cpu|paper`)")
        return None
    raw = dict(raw)
    preset = raw.pop("preset", None)
    flat = flatten(raw)
    if data:
        flat["data"] = data
    try:
        cfg = load_config(preset_name=preset, overrides=flat)
    except ConfigError as exc:
        problems.append(f"base: {exc}")
        return None
    try:
        load_plugins(cfg.plugins)  # before the search's backbone/rule names are checked against the registries
    except ConfigError as exc:
        problems.append(f"base: {exc}")
        return None
    if cfg.data and not is_uri(cfg.data):
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))
    for key, value in (("protocol.test_data", cfg.protocol.test_data), ("train.aux_data", cfg.train.aux_data),
                       ("eval.noise.babble_data", cfg.eval.noise.babble_data)):
        if value and not is_uri(value):  # trials run in other directories
            cfg = cfg.replace(**{key: str(Path(value).expanduser().resolve())})
    return cfg


def _sub(cls: type, raw: Any, where: str, problems: list[str], rename: Mapping[str, str] | None = None) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping")
        return cls()
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs, extra = {}, {}
    for k, v in raw.items():
        k = (rename or {}).get(k, k)
        (kwargs if k in names else extra)[k] = v
    if extra and "options" in names:
        kwargs["options"] = {**kwargs.get("options", {}), **extra}
    elif extra:
        problems.append(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(names))}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        problems.append(f"{where}: {exc}")
        return cls()


def parse_sweep(raw: Mapping[str, Any], data: str | None = None, trials: int | None = None,
                storage_path: str | None = None, step_cache: bool | None = None,
                objective_seeds: int | None = None) -> SweepSpec:
    """Validate a sweep mapping; `data`, `trials`, `storage_path`, `step_cache` and `objective_seeds` override the
    file."""
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError("sweep file: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TOP_KEYS)}")
    name = str(raw.get("name") or "")
    if not name or any(c in name for c in "/\\ "):
        problems.append(f"name: a non-empty name without spaces or slashes is required, got {name!r}")
    base = _base_config(raw.get("base"), data, problems)
    search_raw = raw.get("search") or {}
    params = []
    if not isinstance(search_raw, Mapping):
        problems.append("search: expected a mapping of parameter -> choices | range | constant")
    else:
        for pname, prange in search_raw.items():
            p = parse_param(str(pname), prange, problems)
            if p is not None:
                params.append(p)
        keys = [p.key for p in params]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            problems.append(f"search: parameter(s) given twice: {', '.join(dup)}")
        shared = [k for k in keys if (k.startswith("features.") and k not in SEARCHABLE_FEATURES)
                  or k in ("corpus", "data", "cache_dir", "train.aux_data")]
        if shared:
            problems.append(f"search: {', '.join(shared)}: features (but {', '.join(SEARCHABLE_FEATURES)}), corpus, "
                            "data, train.aux_data and cache_dir are shared by all trials (one feature extraction per front end); "
                            "set them in base")
        conditions = [k for k in keys if k.startswith("eval.")]
        if conditions:
            problems.append(f"search: {', '.join(conditions)}: the test conditions (eval.*) are the same for all trials, "
                            "so that their scores compare; set them in base")
        for p in params:
            if p.key in SEARCHABLE_FEATURES and p.kind not in ("categorical", "const"):
                problems.append(f"search.{p.key}: give a list of choices (each front end is extracted once, "
                                "before the trials start)")
    sampler = _sub(SamplerSpec, raw.get("sampler"), "sampler", problems)
    if sampler.type not in SAMPLERS:
        problems.append(f"sampler.type {sampler.type!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    sched_raw = raw.get("scheduler")
    scheduler = None
    if sched_raw not in (None, "none") and not (isinstance(sched_raw, Mapping) and sched_raw.get("type") == "none"):
        scheduler = _sub(SchedulerSpec, sched_raw if isinstance(sched_raw, Mapping) else {"type": sched_raw},
                         "scheduler", problems)
        if scheduler.type not in SCHEDULERS:
            problems.append(f"scheduler.type {scheduler.type!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    resources = _sub(ResourceSpec, raw.get("resources"), "resources", problems)
    if resources.cpu <= 0 or resources.gpu < 0 or resources.fold_workers < 0:
        problems.append(f"resources: cpu > 0, gpu >= 0, fold_workers >= 0 required; got {resources}")
    ints = {k: raw.get(k, d) for k, d in (("num_samples", 8), ("max_concurrent", 2), ("max_failures", 1))}
    for k, v in ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "max_failures" else 1):
            problems.append(f"{k}: expected an integer >= {0 if k == 'max_failures' else 1}, got {v!r}")
    if trials is not None:
        ints["num_samples"] = trials
    objective = str(raw.get("objective", SweepSettings.objective))
    rule, condition = parse_objective(objective)
    if rule not in OBJECTIVES:
        problems.append(f"objective {objective!r} is unknown; allowed: {', '.join(OBJECTIVES)}, optionally with "
                        ":<test condition> (e.g. selected:white_10dB, final:noise_mean)")
    elif condition and base is not None and condition not in (*condition_names(base.eval), *summary_names(base.eval)):
        known = [*condition_names(base.eval), *summary_names(base.eval)]
        problems.append(f"objective {objective!r}: no test condition {condition!r} in base.eval; "
                        + (f"it has: {', '.join(known)}" if known else "set base.eval.noise or base.eval.adversarial"))
    elif rule == "selected" and base is not None:
        searched = next((p for p in params if p.key == "protocol.name"), None)
        names = ([*searched.choices] if searched.kind == "categorical" else [searched.value]) if searched \
            else [base.protocol.name]
        transductive = [str(n) for n in names if not is_leak_free(str(n))]
        if transductive:
            problems.append(f"objective 'selected' needs a leak-free search protocol ({', '.join(leak_free_protocols())}); "
                            f"{'search.protocol' if searched else 'base.protocol.name'} has {', '.join(transductive)}")
    select = parse_select(raw.get("select"), problems)
    holdout = None
    if raw.get("holdout") is not None:
        try:
            holdout = parse_holdout(raw["holdout"])
        except ConfigError as exc:
            problems.append(str(exc))
    objective_seeds = raw.get("objective_seeds", 1) if objective_seeds is None else objective_seeds
    if not isinstance(objective_seeds, int) or isinstance(objective_seeds, bool) or objective_seeds < 1:
        problems.append(f"objective_seeds: an integer >= 1 (chains per trial, the same seeds for every trial) "
                        f"required; got {objective_seeds!r}")
    use_cache = raw.get("step_cache", True) if step_cache is None else step_cache
    if not isinstance(use_cache, bool):
        problems.append(f"step_cache: expected true or false, got {use_cache!r}")
    plots = raw.get("plots") or {}
    contour = plots.get("contour_utterance", 0) if isinstance(plots, Mapping) else 0
    if base is not None and isinstance(select.reference, Mapping):
        # only what the reference's overrides break: the base's own problems (e.g. a data folder absent on this
        # machine) are the base's, reported where the base is checked
        try:
            ref_problems = config_problems(base.replace(**select.reference_overrides()))
        except (ConfigError, KeyError, TypeError) as exc:
            ref_problems = [str(exc)]
        base_problems = set(config_problems(base))
        new = [q for q in ref_problems if q not in base_problems]
        if new:
            problems.append(f"select.reference: the reference config (the base with {dict(select.reference)}) is "
                            "invalid: " + "; ".join(new))
    spec = None
    if not problems and base is not None:
        spec = SweepSpec(name=name, base=base, search=tuple(params), sampler=sampler, scheduler=scheduler,
                         num_samples=ints["num_samples"], max_concurrent=ints["max_concurrent"],
                         num_samples_given="num_samples" in raw or trials is not None,
                         resources=resources, max_failures=ints["max_failures"],
                         storage_path=str(storage_path or raw.get("storage_path") or "ray_results"),
                         contour_utterance=contour, objective=objective, select=select, holdout=holdout,
                         objective_seeds=int(objective_seeds), step_cache=bool(use_cache), raw=dict(raw))
        problems.extend(space_problems(spec))
    if problems:
        raise ConfigError("invalid sweep definition:\n  " + "\n  ".join(problems))
    assert spec is not None
    return spec


def space_problems(spec: SweepSpec) -> list[str]:
    """Check the base and a spread of sampled trial configs with `dsl.pipeline.checks` (all problems, deduplicated)."""
    problems: list[str] = []
    if not spec.base.data:
        problems.append("base.data: no corpus path; give --data DIR or `data:` under base")
    try:
        check_config(spec.base)
    except ConfigError as exc:
        problems.append(f"base: {exc}")
    if problems:
        return problems
    seen: set[str] = set()
    for cfg in spec.samples:
        try:
            check_config(cfg)
        except ConfigError as exc:
            if str(exc) not in seen:
                seen.add(str(exc))
                problems.append(f"search: a sampled trial config is invalid: {exc}")
    return problems


def load_sweep(path: str | Path, data: str | None = None, trials: int | None = None,
               storage_path: str | None = None, step_cache: bool | None = None,
               objective_seeds: int | None = None) -> SweepSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read sweep file: {exc}") from exc
    return parse_sweep(raw or {}, data, trials, storage_path, step_cache, objective_seeds)


__all__ = ["ALIASES", "METRIC", "MODE", "ParamSpec", "ResourceSpec", "SamplerSpec", "SchedulerSpec", "SelectSpec",
           "SweepSpec",
           "flatten", "from_dict", "load_sweep", "parse_sweep"]
