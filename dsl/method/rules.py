"""Label-update rules: pure functions from the previous model's posteriors to new soft targets.

A rule takes `q` (n_segments, K) out-of-sample posteriors, `y` (n_segments, K) one-hot utterance
labels, `utt` (n_segments,) utterance ids and its parameters, and returns targets whose rows sum to 1.
Register a new rule with `@register_rule(...)`: one function. A rule with a parameter of its own declares
it (`params={"beta": RuleParam(0.5, 0.0, 1.0)}`): the config carries it as `labels.params.beta`, the config
checks hold it to its range, trial configs, trial names and the report follow it, and a sweep can search
it. Outside this package, name the registering module in `ChainConfig.plugins` so that fold workers and
Ray trials import it too (docs/extending.md).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dsl.registry import Registry, first_line

RuleFn = Callable[..., np.ndarray]

# The typed LabelSpec keys that exist only for some rules: the alpha schedule (rules with `uses_alpha`) and
# the smoothing epsilon (rules with `uses_epsilon`). A rule's own parameters are `labels.params.<name>`.
ALPHA_KEYS = ("labels.alpha", "labels.schedule", "labels.alpha_end", "labels.alpha_step")
EPSILON_KEYS = ("labels.epsilon",)
PARAMS_PREFIX = "labels.params."


@dataclass(frozen=True)
class RuleParam:
    """A rule's own numeric parameter: its default and the closed range the config checks hold it to."""

    default: float
    low: float = 0.0
    high: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"RuleParam: default {self.default} outside [{self.low}, {self.high}]")


@dataclass(frozen=True)
class LabelRule:
    """`uses_alpha`: the rule is WDSL-like and takes the scheduled alpha; `uses_epsilon`: it takes
    `labels.epsilon`; `params`: its own parameters (`labels.params.<name>`); `static`: ignores `q`;
    `local`: a segment's new target depends only on its own utterance's rows, so the chain may update
    the targets fold by fold (and start the next iteration's folds early). Register a rule that needs
    statistics over the whole corpus with `local=False`. `title`: how tables name it."""

    name: str
    fn: RuleFn
    uses_alpha: bool = False
    uses_epsilon: bool = False
    static: bool = False
    description: str = ""
    local: bool = True
    params: Mapping[str, RuleParam] = field(default_factory=dict)
    title: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        """The config keys that mean something under this rule (and only under rules that declare them)."""
        return ((*ALPHA_KEYS,) if self.uses_alpha else ()) + (EPSILON_KEYS if self.uses_epsilon else ()) + tuple(
            PARAMS_PREFIX + p for p in self.params)

    def values(self, given: Mapping[str, float] | None = None) -> dict[str, float]:
        """This rule's parameter values: the declared defaults, overridden by the ones `given` (others ignored)."""
        given = given or {}
        return {p: float(given.get(p, spec.default)) for p, spec in self.params.items()}

    def __call__(self, q: np.ndarray, y: np.ndarray, utt: np.ndarray, *, alpha: float = 0.0,
                 epsilon: float = 0.0, params: Mapping[str, float] | None = None) -> np.ndarray:
        kwargs: dict[str, float] = self.values(params)
        if self.uses_alpha:
            kwargs["alpha"] = alpha
        if self.uses_epsilon:
            kwargs["epsilon"] = epsilon
        return self.fn(np.asarray(q, dtype=np.float32), np.asarray(y, dtype=np.float32), np.asarray(utt), **kwargs)


RULES: Registry[LabelRule] = Registry("rule")


def register_rule(name: str, *, uses_alpha: bool = False, uses_epsilon: bool = False, static: bool = False,
                  description: str = "", local: bool = True, params: Mapping[str, RuleParam] | None = None,
                  title: str = "") -> Callable[[RuleFn], RuleFn]:
    """Register `fn(q, y, utt, **params) -> targets`; `params` are passed by name, with `alpha`/`epsilon`
    for rules that use them."""
    for p in params or {}:
        if not p.isidentifier():
            raise ValueError(f"rule {name!r}: parameter name {p!r} must be an identifier")
    return RULES.decorator(lambda fn: LabelRule(name, fn, uses_alpha, uses_epsilon, static,
                                                description or first_line(fn.__doc__), local, dict(params or {}),
                                                title or name))


def get_rule(name: str) -> LabelRule:
    return RULES.get(name)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def _normalise(t: np.ndarray) -> np.ndarray:
    return (t / t.sum(axis=1, keepdims=True)).astype(np.float32)


@register_rule("baseline", static=True)
def baseline(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Original (noisy) utterance labels: every segment keeps its utterance's one-hot label."""
    return y.copy()


@register_rule("bdsl", title="BDSL")
def bdsl(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Basic DSL: the previous posterior is the new target, g = q."""
    return _normalise(q)


@register_rule("wdsl", uses_alpha=True, title="WDSL")
def wdsl(q: np.ndarray, y: np.ndarray, utt: np.ndarray, alpha: float) -> np.ndarray:
    """Weighted DSL: g = (1 - alpha) q + alpha y."""
    return _normalise((1.0 - alpha) * q + alpha * y)


@register_rule("gsl", title="GSL")
def gsl(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Global self-learning: g = mean of q over the segment's utterance."""
    _, inverse, counts = np.unique(utt, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), q.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, q)
    return _normalise((sums / counts[:, None])[inverse])


@register_rule("hdl", title="HDL")
def hdl(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Hard-decision labels: g = one-hot argmax q."""
    return one_hot(np.argmax(q, axis=1), q.shape[1])


@register_rule("label_smoothing", uses_epsilon=True, static=True)
def label_smoothing(q: np.ndarray, y: np.ndarray, utt: np.ndarray, epsilon: float) -> np.ndarray:
    """Static soft labels: g = (1 - eps) y + eps / K."""
    return _normalise((1.0 - epsilon) * y + epsilon / y.shape[1])
