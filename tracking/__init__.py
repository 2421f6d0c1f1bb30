"""Everything MLflow, in one package (no Ray; imports `dsl` only): no other package imports `mlflow` or calls
an MLflow client; they call the named functions here (`tests/test_tracking_boundary.py` keeps it so).

- `client`: the bounded client (`call`, `TrackingUnavailable`, `$DSL_MLFLOW_TIMEOUT`), the tracking URI a
  command uses, and the fail-fast access check.
- `schema`: every tag, param, metric and artifact name, the metrics of one iteration (one step), the one
  lookup of a trial's run.
- `trial_run`: a trial's child run (`TrialRun`; `NoRun` without tracking): opened, fed and ended by the
  trial; found again, backfilled from a checkpoint and closed by the driver.
- `trial_artifacts`: a trial's `result.json` and plots, written from its checkpoint.
- `sweep_runs`: the sweep's experiment and parent run (`SweepRun`), its child runs and their final statuses.
- `sweep_settings`: the sweep's settings as the parent keeps them, read back as one typed object.
- `comparison`: the parent's comparison of its trials, and a sweep's export for `dsl-sweep report`.
- `registry`: a final model trained elsewhere, logged as a pyfunc and registered; downloaded back for `predict`.
- `pyfunc`: the MLflow pyfunc wrapper of `dsl.pipeline.model.EmotionModel`.
- `probe`: a node's check that it can log to the tracking server (cluster preflight).

Modules import `mlflow` lazily, inside functions, so commands that do not track start fast.
"""
