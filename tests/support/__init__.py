"""Shared test helpers (plain functions and classes, no fixtures; the fixtures live in tests/conftest.py).

- `data`: the real EmoDB copy (`emodb_root`), the EmoDB subsets, synthetic tones and the `TINY` chain.
- `mlflow_server`: `free_port` and `MlflowServer`, a throw-away local `mlflow server`, optionally with basic auth.
- `sweep`: the tiny sweep definition and the MLflow / Tune / Optuna lookups the sweep tests share.
- `cluster`: a multi-node Ray cluster on one machine.
- `driver`: `dsl-sweep` as a subprocess driver, and polling with a deadline.
"""
