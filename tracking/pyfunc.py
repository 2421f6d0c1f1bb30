"""The MLflow pyfunc wrapper of a DSL model directory (for the Model Registry).

MLflow warns that `predict` has no type hints: on purpose, its input is file paths, not a data schema.
"""
from __future__ import annotations

import mlflow.pyfunc

from dsl.model import EmotionModel


class DslPyfunc(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a `path` column (or a list of paths). Output: label and class probabilities."""

    def load_context(self, context) -> None:
        self.model = EmotionModel.load(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        paths = list(model_input["path"]) if hasattr(model_input, "columns") else list(model_input)
        rows = [{"path": p.path, "label": p.label, **p.probabilities} for p in self.model.predict_details(paths)]
        return pd.DataFrame(rows)
