"""Backbones and the training of one freshly initialised network on soft segment targets."""
