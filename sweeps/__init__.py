"""Sweep definitions (YAML), the Optuna search space, the launcher and best-config selection."""
