"""Auxiliary training tasks (`train.aux`) and the config keys each one owns.

Training dispatches in `dsl.training.train.fit`; this registry holds the facts the config checks, trial
configs, the conditional search space, trial names and the report read. A new auxiliary task is not a
plugin yet: it needs its losses in `dsl.training`.
"""
from __future__ import annotations

from dataclasses import dataclass

from dsl.registry import Registry


@dataclass(frozen=True)
class AuxTask:
    """`keys`: the `train.*` keys that apply only with this task; `title`: how tables name the method."""

    name: str
    keys: tuple[str, ...] = ()
    title: str = ""
    description: str = ""


AUX_TASKS: Registry[AuxTask] = Registry("auxiliary task")
AUX_TASKS.register(AuxTask("none", (), "", "the emotion loss alone"))
AUX_TASKS.register(AuxTask(
    "mtl_aug", ("train.aux_augs", "train.aux_cls_weight", "train.aux_rec_weight", "train.aux_data"), "MTL-AUG",
    "augmentation classification and reconstruction share the encoder (dsl.training.mtl)"))
