"""Robustness as a sweep dimension: test speech with additive noise (`noise`, `conditions`) and adversarial
inputs to the segment network (`dsl.training.attacks`), scored beside the clean test speech (`eval.*`)."""
