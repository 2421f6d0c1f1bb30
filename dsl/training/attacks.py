"""Adversarial test inputs for the segment network, from a registry of attacks: FGSM (Goodfellow et al. 2015) and
PGD (Madry et al. 2018); a plugin registers more with `@register_attack(name)`.

What is attacked is the *segment network* alone, on its normalised input (log-Mel or SSL frames after the
fold's training mean/std), one segment at a time; the utterance stage (forest or ACP) then scores the perturbed
segments' posteriors as it would clean ones. The stage is not attacked, and overlapping segments get independent
perturbations of their shared frames, so this measures how far the segment posteriors can be pushed, not the
worst case for an utterance's waveform.

- eps is relative to the features' standard deviation: the input is already divided by the fold's training std,
  so an L-inf ball of radius eps there is eps standard deviations per feature.
- No label is read (leak-free protocols stay leak-free): the attack is untargeted against the network's own
  predicted class on the clean segment (it raises the cross-entropy of that class), as Kurakin et al. (2017)
  recommend to avoid label leaking.
- FGSM: one step of eps * sign(gradient). PGD: `steps` steps of 2.5 eps / steps, each projected back into the
  ball, starting from the clean input (no random start, so the result is deterministic and eps = 0 is the clean
  input). No box constraint: log-Mel values have no natural range.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dsl.registry import Registry, first_line

ATTACK_BATCH = 256  # segments per backward pass (memory: activations of the whole eval batch would be large)
AttackFn = Callable[..., torch.Tensor]  # (model, x, eps, steps, autocast) -> x perturbed within the eps ball


@dataclass(frozen=True)
class Attack:
    """`fn(model, x, eps, steps, autocast)`: the batch `x` perturbed within the L-inf ball of radius `eps` (`steps`:
    `eval.adversarial.pgd_steps`, for attacks that iterate; `autocast`: a factory of the prediction's context)."""

    name: str
    fn: AttackFn
    description: str = ""


ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(name: str, *, description: str = "") -> Callable[[AttackFn], AttackFn]:
    return ATTACKS.decorator(lambda fn: Attack(name, fn, description or first_line(fn.__doc__)))


def attack_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of `target` (the clean prediction): what the attacks raise."""
    return F.cross_entropy(logits.float(), target, reduction="sum")


def signed_steps(model: nn.Module, x: torch.Tensor, eps: float, n_steps: int, step: float,
                 autocast: Callable[[], object] | None = None) -> torch.Tensor:
    """`n_steps` steps of `step` * sign(gradient of `attack_loss`) from `x`, each projected into the eps ball; the
    target is the model's prediction on the clean `x`. In batches of ATTACK_BATCH segments."""
    x = x.detach()
    out = []
    for i in range(0, len(x), ATTACK_BATCH):
        clean = x[i:i + ATTACK_BATCH]
        adv, target = clean.clone(), None
        for _ in range(n_steps):
            adv.requires_grad_(True)
            with torch.enable_grad(), (autocast() if autocast is not None else torch.autocast("cpu", enabled=False)):
                logits = model(adv)
                if target is None:
                    target = logits.detach().argmax(dim=1)
                loss = attack_loss(logits, target)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + step * grad.sign()
            adv = torch.minimum(torch.maximum(adv, clean - eps), clean + eps)
        out.append(adv.detach())
    return torch.cat(out) if out else x


@register_attack("fgsm")
def fgsm(model: nn.Module, x: torch.Tensor, eps: float, steps: int = 1,
         autocast: Callable[[], object] | None = None) -> torch.Tensor:
    """Fast gradient sign method: one step of eps * sign(gradient)."""
    return signed_steps(model, x, eps, 1, eps, autocast)


@register_attack("pgd")
def pgd(model: nn.Module, x: torch.Tensor, eps: float, steps: int = 5,
        autocast: Callable[[], object] | None = None) -> torch.Tensor:
    """Projected gradient descent: `steps` steps of 2.5 eps / steps from the clean input (no random start)."""
    steps = max(1, steps)
    return signed_steps(model, x, eps, steps, 2.5 * eps / steps, autocast)


def attack(model: nn.Module, x: torch.Tensor, kind: str, eps: float, steps: int = 5,
           autocast: Callable[[], object] | None = None) -> torch.Tensor:
    """`x` perturbed by the registered attack `kind` within the L-inf ball of radius `eps`, raising the loss of the
    model's clean prediction. `model` should be in eval mode (BatchNorm's running statistics; no dropout); its
    parameters get no gradient."""
    return ATTACKS.get(kind).fn(model, x, eps, steps, autocast)
