"""The MLflow pyfunc of a DSL model directory (`dsl.pipeline.model.EmotionModel`), servable by `mlflow models serve`.

Input: a DataFrame with a `path` column (audio files the server can read) or an `audio` column (the
file's bytes, base64-encoded, for clients on other machines); one row per utterance. Output: `label`
and one probability column per class. The model carries its signature, an input example (a training
utterance, base64), pinned requirements of what prediction imports, and the `dsl` and `tracking`
packages as `code_paths`, so an environment without dsl-sweeps installed can load it.
"""
from __future__ import annotations

import base64
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from dsl.pipeline.model import EmotionModel

# what loading and predicting imports (pip names); the versions pinned are the ones installed when logging
PREDICT_REQUIREMENTS = ("torch", "timm", "numpy", "scikit-learn", "joblib", "librosa", "soundfile", "pandas",
                        "PyYAML")
SSL_REQUIREMENTS = ("transformers", "safetensors")  # features.kind: ssl (the checkpoint travels in the model dir)


def predict_requirements(features_kind: str = "logmel") -> tuple[str, ...]:
    """What prediction imports for a model with this front end."""
    return PREDICT_REQUIREMENTS + (SSL_REQUIREMENTS if features_kind == "ssl" else ())


def pinned_requirements(names: Sequence[str] = PREDICT_REQUIREMENTS) -> list[str]:
    """`name==version` of each installed package (a name that is not installed is left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def code_paths() -> list[str]:
    """The project's packages prediction imports: `dsl` (the model) and `tracking` (this wrapper)."""
    import dsl

    return [str(Path(dsl.__file__).parent), str(Path(__file__).parent)]


def signature(label_names: Sequence[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "path", required=False), ColSpec("string", "audio", required=False)])
    outputs = Schema([ColSpec("string", "path"), ColSpec("string", "label"),
                      *[ColSpec("double", n) for n in label_names]])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(wav: str | Path):
    """One request: the bytes of `wav`, base64-encoded (runs anywhere, unlike a path)."""
    import pandas as pd

    return pd.DataFrame({"audio": [base64.b64encode(Path(wav).read_bytes()).decode("ascii")]})


class DslPyfunc(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a `path` or an `audio` (base64) column, or a list of paths.
    Output: path (or `audio[i]`), label and class probabilities."""

    def load_context(self, context) -> None:
        self.model = EmotionModel.load(context.artifacts["model_dir"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        if not hasattr(model_input, "columns"):
            model_input = pd.DataFrame({"path": list(model_input)})
        with tempfile.TemporaryDirectory(prefix="dsl-serve-") as tmp:
            paths, names = [], []
            for i, row in enumerate(model_input.to_dict("records")):
                audio, path = row.get("audio"), row.get("path")
                if isinstance(audio, str) and audio:
                    f = Path(tmp) / f"audio{i}.wav"
                    f.write_bytes(base64.b64decode(audio))
                    paths.append(str(f))
                    names.append(f"audio[{i}]")
                elif isinstance(path, str) and path:
                    paths.append(path)
                    names.append(path)
                else:
                    raise ValueError(f"row {i}: give a `path` (a file the server can read) or `audio` "
                                     "(the file's bytes, base64)")
            preds = self.model.predict_details(paths)
        return pd.DataFrame([{"path": n, "label": p.label, **p.probabilities} for n, p in zip(names, preds)])
