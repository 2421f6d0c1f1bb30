"""A plugin protocol that registers as leak-free but reads its test utterances' labels: it cuts its outer folds
stratified by label, ignoring the label-free partition it is given. `dsl-sweep leakcheck` must catch it."""
from __future__ import annotations

from dsl.protocols.plans import FoldPlan, refinery, register_protocol, stratified_folds


@register_protocol("leaky_refinery", leak_free=True, transductive_twin="stratified")
def leaky_refinery(labels, speakers, spec, seed, outer=None) -> FoldPlan:
    """Refinery over outer folds stratified by every label, the test folds' included."""
    return refinery(labels, speakers, spec, seed, stratified_folds(labels, spec.folds, seed))
