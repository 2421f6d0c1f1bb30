"""Label-update rules: pure functions from the previous model's posteriors to new soft targets.

A rule takes `q` (n_segments, K) out-of-sample posteriors, `y` (n_segments, K) one-hot utterance
labels, `utt` (n_segments,) utterance ids and its parameters, and returns targets whose rows sum to 1.
Register a new rule with `@register_rule(...)`: one function. Outside this package, name
the registering module in `ChainConfig.plugins` so that fold workers and Ray trials import it too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RuleFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class LabelRule:
    """`uses_alpha`: the rule is WDSL-like and takes the scheduled alpha; `static`: ignores `q`;
    `local`: a segment's new target depends only on its own utterance's rows, so the chain may update
    the targets fold by fold (and start the next iteration's folds early). Register a rule that needs
    statistics over the whole corpus with `local=False`."""

    name: str
    fn: RuleFn
    uses_alpha: bool = False
    uses_epsilon: bool = False
    static: bool = False
    description: str = ""
    local: bool = True

    def __call__(self, q: np.ndarray, y: np.ndarray, utt: np.ndarray, *, alpha: float = 0.0,
                 epsilon: float = 0.0) -> np.ndarray:
        kwargs = {}
        if self.uses_alpha:
            kwargs["alpha"] = alpha
        if self.uses_epsilon:
            kwargs["epsilon"] = epsilon
        return self.fn(np.asarray(q, dtype=np.float32), np.asarray(y, dtype=np.float32), np.asarray(utt), **kwargs)


RULES: dict[str, LabelRule] = {}


def register_rule(name: str, *, uses_alpha: bool = False, uses_epsilon: bool = False, static: bool = False,
                  description: str = "", local: bool = True) -> Callable[[RuleFn], RuleFn]:
    def wrap(fn: RuleFn) -> RuleFn:
        if name in RULES:
            raise ValueError(f"rule {name!r} is already registered")
        RULES[name] = LabelRule(name, fn, uses_alpha, uses_epsilon, static, description or (fn.__doc__ or "").strip(),
                                local)
        return fn
    return wrap


def get_rule(name: str) -> LabelRule:
    if name not in RULES:
        raise KeyError(f"unknown rule {name!r}; known: {', '.join(sorted(RULES))}")
    return RULES[name]


# The ChainConfig keys that exist only for some rules: the alpha schedule (rules with `uses_alpha`) and
# the smoothing epsilon (rules with `uses_epsilon`).
ALPHA_KEYS = ("labels.alpha", "labels.schedule", "labels.alpha_end", "labels.alpha_step")
EPSILON_KEYS = ("labels.epsilon",)
AUX_KEYS = ("train.aux_augs", "train.aux_cls_weight", "train.aux_rec_weight", "train.aux_data")  # MTL-AUG only
SSL_KEYS = ("features.ssl_model", "features.ssl_layer", "features.ssl_layer_sum")  # features.kind: ssl only
STAGE_KEYS = ("stage.input", "stage.epsilon", "stage.dim", "stage.with_mean", "stage.epochs", "stage.lr",
              "stage.batch_size", "stage.weight_decay")  # the acp utterance stage only


def key_applies(key: str, rule: str | LabelRule, schedule: str | None = None, aux: str | None = None,
                kind: str | None = None, layer_sum: bool | None = None, stage: str | None = None) -> bool:
    """Whether dotted ChainConfig key `key` means anything under label rule `rule` (a name or a LabelRule)
    and, when `schedule` is given, that alpha schedule: the alpha keys only for rules that use alpha,
    `labels.alpha_end` only for a non-constant schedule, `labels.alpha_step` only for the `step` schedule,
    `labels.epsilon` only for rules that use epsilon; with `aux` given, the MTL-AUG keys only for
    `train.aux: mtl_aug`; with `kind` given, the SSL keys only for `features.kind: ssl`, and with
    `layer_sum` given, `features.ssl_layer` only without the learned layer sum; with `stage` given
    (`stage.name`), the ACP keys only for the `acp` stage. Every other key applies.
    The one definition behind the conditional search space, trial configs, config checks and trial names."""
    if key in AUX_KEYS and aux is not None and aux != "mtl_aug":
        return False
    if key in STAGE_KEYS and stage is not None and stage != "acp":
        return False
    if key in SSL_KEYS and kind is not None and kind != "ssl":
        return False
    if key == "features.ssl_layer" and layer_sum:
        return False
    if key in ALPHA_KEYS or key in EPSILON_KEYS:
        r = get_rule(rule) if isinstance(rule, str) else rule
        if not (r.uses_alpha if key in ALPHA_KEYS else r.uses_epsilon):
            return False
    if schedule is not None:
        if key == "labels.alpha_end" and schedule == "constant":
            return False
        if key == "labels.alpha_step" and schedule != "step":
            return False
    return True


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


@register_rule("bdsl")
def bdsl(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Basic DSL: the previous posterior is the new target, g = q."""
    return _normalise(q)


@register_rule("wdsl", uses_alpha=True)
def wdsl(q: np.ndarray, y: np.ndarray, utt: np.ndarray, alpha: float) -> np.ndarray:
    """Weighted DSL: g = (1 - alpha) q + alpha y."""
    return _normalise((1.0 - alpha) * q + alpha * y)


@register_rule("gsl")
def gsl(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Global self-learning: g = mean of q over the segment's utterance."""
    _, inverse, counts = np.unique(utt, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), q.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, q)
    return _normalise((sums / counts[:, None])[inverse])


@register_rule("hdl")
def hdl(q: np.ndarray, y: np.ndarray, utt: np.ndarray) -> np.ndarray:
    """Hard-decision labels: g = one-hot argmax q."""
    return one_hot(np.argmax(q, axis=1), q.shape[1])


@register_rule("label_smoothing", uses_epsilon=True, static=True)
def label_smoothing(q: np.ndarray, y: np.ndarray, utt: np.ndarray, epsilon: float) -> np.ndarray:
    """Static soft labels: g = (1 - eps) y + eps / K."""
    return _normalise((1.0 - epsilon) * y + epsilon / y.shape[1])
