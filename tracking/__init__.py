"""Everything MLflow, in one package (no Ray; imports `dsl` only): no other package imports `mlflow`.

- `client`: the bounded client (`call`, `TrackingUnavailable`, `$DSL_MLFLOW_TIMEOUT`), the tracking URI a
  command uses, and the fail-fast access check.
- `schema`: tags, the metrics of one iteration (one step), the one lookup of a trial's run.
- `trial_run`: a trial's child run (`TrialRun`; `NoRun` without tracking).
- `sweep_runs`: the sweep's experiment, parent run, child runs and their final statuses.
- `registry`: the final model logged as a pyfunc and registered; downloaded back for `predict`.
- `pyfunc`: the MLflow pyfunc wrapper of `dsl.pipeline.model.EmotionModel`.

Modules import `mlflow` lazily, inside functions, so commands that do not track start fast.
"""
