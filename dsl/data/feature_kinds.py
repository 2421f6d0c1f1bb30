"""Front ends (`features.kind`) and the config keys each one owns.

The extraction itself dispatches in `dsl.data.frontend.compute_features`; this registry holds the facts the
config checks, trial configs, the conditional search space and trial names read: the `ssl` keys mean
nothing under log-Mel features (and `features.ssl_layer` nothing with the learned layer sum, see
`dsl.pipeline.keys`). A new front end is not a plugin yet: it needs its extraction in `dsl.data.frontend`.
"""
from __future__ import annotations

from dataclasses import dataclass

from dsl.registry import Registry


@dataclass(frozen=True)
class FeatureKind:
    """`keys`: the `features.*` keys that apply only under this front end."""

    name: str
    keys: tuple[str, ...] = ()
    description: str = ""


FEATURE_KINDS: Registry[FeatureKind] = Registry("feature kind")
FEATURE_KINDS.register(FeatureKind("logmel", (), "log-Mel filterbank, the paper's front end (dsl.data.frontend)"))
FEATURE_KINDS.register(FeatureKind(
    "ssl", ("features.ssl_model", "features.ssl_layer_sum", "features.ssl_layer"),
    "hidden states of a local self-supervised speech model (dsl.data.ssl_features)"))
