"""Which config keys mean something under which choices: the one definition behind the conditional search
space, trial configs, config checks and trial names.

Some ChainConfig keys exist only for some choices: the alpha keys for rules that use alpha, `labels.alpha_end`
for annealing schedules, a rule's own `labels.params.<name>`, the MTL-AUG keys for `train.aux: mtl_aug`, the
SSL keys for `features.kind: ssl`, the ACP keys for `stage.name: acp`, the cross-corpus keys for
`protocol.name: cross_corpus`. No list of them is kept here: each registry entry declares the keys it owns
(`keys`), and a *selector* key (`labels.rule`, `labels.schedule`, ...) picks the entry. A key applies when,
for every selector whose entries may own it, the chosen entry does. So a plugin rule with a parameter, or a
protocol with keys of its own, needs nothing here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dsl.config import ChainConfig, field_default
from dsl.data.feature_kinds import FEATURE_KINDS
from dsl.method.rules import PARAMS_PREFIX, RULES
from dsl.method.schedules import SCHEDULES
from dsl.method.stages import STAGES
from dsl.protocols.plans import PROTOCOLS
from dsl.registry import Registry
from dsl.training.aux_tasks import AUX_TASKS


@dataclass(frozen=True)
class Selector:
    """A config key whose value decides which other keys apply. `owned(value)`: the keys that value owns;
    `possible()`: every key some value may own (now: plugins may have registered more); `prefix`: keys under
    it are owned too (a rule's `labels.params.*`); `registry`: where the values are registered, if anywhere."""

    key: str
    owned: Callable[[Any], tuple[str, ...]]
    possible: Callable[[], tuple[str, ...]]
    prefix: str = ""
    registry: Registry | None = None

    def may_own(self, key: str) -> bool:
        return bool(self.prefix and key.startswith(self.prefix)) or key in self.possible()


def _by_registry(key: str, registry: Registry, prefix: str = "") -> Selector:
    def owned(value: Any) -> tuple[str, ...]:
        return registry[value].keys if value in registry else ()

    def possible() -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for entry in registry.values() for k in entry.keys))

    return Selector(key, owned, possible, prefix, registry)


# Ordered so that a selector comes after the selectors that own it (the search space suggests in this order).
SELECTORS: tuple[Selector, ...] = (
    _by_registry("features.kind", FEATURE_KINDS),
    Selector("features.ssl_layer_sum", lambda on: () if on else ("features.ssl_layer",),
             lambda: ("features.ssl_layer",)),  # one layer, or the learned sum of all of them
    _by_registry("labels.rule", RULES, PARAMS_PREFIX),
    _by_registry("labels.schedule", SCHEDULES),
    _by_registry("train.aux", AUX_TASKS),
    _by_registry("stage.name", STAGES),
    _by_registry("protocol.name", PROTOCOLS),
)
SELECTOR_KEYS = tuple(s.key for s in SELECTORS)


def value_at(cfg: ChainConfig, key: str) -> Any:
    """The value of dotted key `key` in `cfg` (a rule parameter: its given value, else None)."""
    if key.startswith(PARAMS_PREFIX):
        return cfg.labels.params.get(key[len(PARAMS_PREFIX):])
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def choices_of(cfg: ChainConfig) -> dict[str, Any]:
    """The selectors' values in `cfg`."""
    return {key: value_at(cfg, key) for key in SELECTOR_KEYS}


def key_applies(key: str, chosen: ChainConfig | Mapping[str, Any]) -> bool:
    """Whether dotted ChainConfig key `key` means anything under `chosen`: a config, or the values of some
    selectors (`{"labels.rule": "wdsl", "labels.schedule": "step"}`; a selector left out does not decide).
    Every key that no entry declares applies."""
    if isinstance(chosen, ChainConfig):
        chosen = choices_of(chosen)
    return all(key in s.owned(chosen[s.key]) for s in SELECTORS if s.key in chosen and s.may_own(key))


def owned_by(selector_key: str) -> tuple[str, ...]:
    """Every key the entries picked by `selector_key` may own (e.g. all MTL-AUG keys for `train.aux`)."""
    return next(s for s in SELECTORS if s.key == selector_key).possible()


def conditional_keys() -> tuple[str, ...]:
    """Every typed key some entry owns (rule parameters, which live in `labels.params`, aside)."""
    return tuple(dict.fromkeys(k for s in SELECTORS for k in s.possible() if not k.startswith(PARAMS_PREFIX)))


def selector_registry(key: str) -> Registry | None:
    """The registry whose names `key` takes (`backbone` too), for checking a sweep's choices; else None."""
    if key == "backbone":
        from dsl.training.backbones import BACKBONES

        return BACKBONES
    return next((s.registry for s in SELECTORS if s.key == key), None)


def key_default(key: str) -> Any:
    """The default of dotted key `key`: the config field's, or for `labels.params.<p>` the declared default of
    a registered rule with that parameter. KeyError when neither knows it."""
    if key.startswith(PARAMS_PREFIX):
        name = key[len(PARAMS_PREFIX):]
        for rule in RULES.values():
            if name in rule.params:
                return rule.params[name].default
        raise KeyError(key)
    return field_default(key)
