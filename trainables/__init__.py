"""Ray Tune trainables: one DSL chain per trial, checkpointed per iteration, tracked in MLflow.

Imports stay light here; `trainables.chain_trainable.train_chain` is the function trainable.
"""
