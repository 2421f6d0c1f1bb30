"""Segment-based speech emotion recognition with deep self-learning (Mao, Ching & Lee).

Pure Python/NumPy/PyTorch: no Ray, no MLflow. Typical use::

    from dsl import load_config, prepare_data, run_chain
    cfg = load_config(preset_name="cpu", overrides={"data": "path/to/emodb/wav"})
    result = run_chain(cfg, prepare_data(cfg))

The names below are imported on first use, so that `import dsl.config` (the CLI's flag table) does not
import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsl.config import (
        ChainConfig,
        ConfigError,
        FeatureSpec,
        LabelSpec,
        ProtocolSpec,
        SegmentSpec,
        StageSpec,
        TrainSpec,
        load_config,
    )
    from dsl.data.bundle import CorpusData, prepare_data
    from dsl.execution.fold_runners import FoldWorkerError
    from dsl.pipeline.chain import (
        ChainResult,
        ChainState,
        FoldJob,
        IterationResult,
        iterate_chain,
        run_chain,
        run_fold_job,
    )

_WHERE = {
    **dict.fromkeys(("ChainResult", "ChainState", "FoldJob", "IterationResult", "iterate_chain", "run_chain",
                     "run_fold_job"), "pipeline.chain"),
    **dict.fromkeys(("ChainConfig", "ConfigError", "FeatureSpec", "LabelSpec", "ProtocolSpec", "SegmentSpec",
                     "StageSpec", "TrainSpec", "load_config"), "config"),
    **dict.fromkeys(("CorpusData", "prepare_data"), "data.bundle"),
    "FoldWorkerError": "execution.fold_runners",
    "run": "studies.run",
    "EmotionModel": "pipeline.model",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "ChainConfig", "ChainResult", "ChainState", "ConfigError", "CorpusData", "FeatureSpec", "FoldJob", "FoldWorkerError",
    "EmotionModel", "IterationResult", "LabelSpec", "ProtocolSpec", "SegmentSpec", "StageSpec", "TrainSpec", "iterate_chain", "load_config",
    "prepare_data", "run", "run_chain", "run_fold_job",
]
__version__ = "0.1.0"
