"""The define-by-run (conditional) search space and the trial config it stands for.

`SearchSpace(params, base)(trial)` suggests through an Optuna trial only what applies to the branch
taken: alpha and its schedule only for rules that use alpha (WDSL), the annealing end only for a
non-constant schedule, the step only for the `step` schedule, epsilon only for label smoothing, a rule's
own `labels.params.*` only for that rule, the MTL-AUG weights only for `train.aux: mtl_aug`, the ACP keys
(`stage.*`) only for `stage.name: acp`, the SSL feature keys only for `features.kind: ssl`, a protocol's own
keys only for it: whatever the registry entries declare (`dsl.pipeline.keys.key_applies`).
Parameter names are dotted ChainConfig keys, so a trial's Tune config is a set of overrides of the
base config (`trial_config`). Constants that apply to the branch are returned as a dict (OptunaSearch
merges them into the trial's config without making them Optuna parameters).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsl.config import ChainConfig, FeatureSpec, from_dict
from dsl.pipeline.keys import choices_of, key_applies
from dsl.pipeline.trial_config import trial_config

# Suggestion order: a key after the selectors that decide whether it applies (dsl.pipeline.keys.SELECTORS);
# other keys after these, by name.
ORDER = ("features.kind", "features.ssl_model", "features.ssl_layer_sum", "features.ssl_layer", "backbone",
         "labels.rule", "labels.schedule", "labels.alpha", "labels.alpha_end", "labels.alpha_step",
         "labels.epsilon", "train.aux", "train.aux_cls_weight", "train.aux_rec_weight", "stage.name", "protocol.name",
         "iterations")


@dataclass(frozen=True)
class ParamSpec:
    """One search parameter: categorical choices, an int/float range, or a constant."""

    key: str  # dotted ChainConfig key
    kind: str  # categorical | int | float | const
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    value: Any = None  # const only


class SearchSpace:
    """Picklable define-by-run function for `OptunaSearch(space=...)`."""

    def __init__(self, params: Sequence[ParamSpec], base: ChainConfig | Mapping[str, Any]):
        rank = {k: i for i, k in enumerate(ORDER)}
        self.params = sorted(params, key=lambda p: (rank.get(p.key, len(ORDER)), p.key))
        self.base = base if isinstance(base, ChainConfig) else from_dict(base)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        chosen: dict[str, Any] = choices_of(self.base)
        constants: dict[str, Any] = {}
        for p in self.params:
            if not key_applies(p.key, chosen):
                continue
            if p.kind == "const":
                value = constants[p.key] = p.value
            else:
                value = suggest(trial, p, chosen)
            chosen[p.key] = value
        return constants or None


def suggest(trial: Any, p: ParamSpec, chosen: Mapping[str, Any]) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.key, list(p.choices))
    low, high = p.low, p.high
    if p.key == "labels.alpha_end" and "labels.alpha" in chosen:  # anneal downwards: end <= start
        high = min(high, chosen["labels.alpha"])
        low = min(low, high)
    if p.kind == "int":
        return trial.suggest_int(p.key, int(low), int(high), step=int(p.step or 1), log=p.log)
    if p.step:
        high = low + np.floor((high - low) / p.step + 1e-9) * p.step
        return trial.suggest_float(p.key, float(low), float(high), step=float(p.step))
    return trial.suggest_float(p.key, float(low), float(high), log=p.log)


def feature_variants(space: SearchSpace) -> list[FeatureSpec]:
    """Every front end the space's trials can ask for (the base's first): the branches of its `features.*`
    choices, each as `trial_config` canonicalises it (keys that do not apply reset to their defaults)."""
    params = [p for p in space.params if p.key.startswith("features.")]
    out = [trial_config(space.base, {}).features]
    if params:
        for branch in enumerate_grid(SearchSpace(params, space.base)):
            const = {p.key: p.value for p in params if p.kind == "const"}
            f = trial_config(space.base, {**const, **branch}).features
            if f not in out:
                out.append(f)
    return out


def sample_configs(space: SearchSpace, n: int = 64, seed: int = 0) -> list[ChainConfig]:
    """Up to `n` distinct random trial configs, for validating a space before a sweep starts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(n):
        trial = study.ask()
        params = {**(space(trial) or {}), **trial.params}
        study.tell(trial, 0.0)
        seen.setdefault(repr(sorted(params.items())), params)
    return [trial_config(space.base, p) for p in seen.values()]


class _EnumTrial:
    """Follows a fixed path of choice indices and records how many options each decision had."""

    def __init__(self, path: Sequence[int]):
        self.path, self.sizes, self.params = list(path), [], {}

    def _pick(self, name: str, options: Sequence[Any]) -> Any:
        i = len(self.sizes)
        self.sizes.append(len(options))
        value = options[self.path[i] if i < len(self.path) else 0]
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._pick(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._pick(name, list(range(low, high + 1, step)))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        if not step:
            raise ValueError(f"grid search needs a finite space: give {name} a step or a list of choices")
        n = int(np.floor((high - low) / step + 1e-9)) + 1
        return self._pick(name, [float(round(low + i * step, 12)) for i in range(n)])


def enumerate_grid(space: SearchSpace) -> list[dict[str, Any]]:
    """Every distinct branch of a finite conditional space (depth-first), as Optuna parameter dicts."""
    out: list[dict[str, Any]] = []
    path: list[int] = []
    while True:
        t = _EnumTrial(path)
        space(t)
        out.append(dict(t.params))
        path = (list(path) + [0] * len(t.sizes))[:len(t.sizes)]
        # advance the deepest decision that has options left (odometer over a variable-depth tree)
        for i in reversed(range(len(path))):
            if path[i] + 1 < t.sizes[i]:
                path = path[:i] + [path[i] + 1]
                break
        else:
            return out


def grid_size(space: SearchSpace) -> int:
    return len(enumerate_grid(space))


__all__ = ["ParamSpec", "SearchSpace", "enumerate_grid", "feature_variants", "grid_size", "sample_configs", "trial_config"]
