"""Segment-based speech emotion recognition with deep self-learning (Mao, Ching & Lee).

Pure Python/NumPy/PyTorch: no Ray, no MLflow. Typical use::

    from dsl import load_config, prepare_data, run_chain
    cfg = load_config(preset_name="cpu", overrides={"data": "path/to/emodb/wav"})
    result = run_chain(cfg, prepare_data(cfg))
"""
from .chain import ChainResult, ChainState, FoldJob, IterationResult, iterate_chain, run_chain, run_fold_job
from .config import ChainConfig, ConfigError, FeatureSpec, LabelSpec, ProtocolSpec, SegmentSpec, TrainSpec, load_config
from .data import CorpusData, prepare_data
from .runners import FoldWorkerError

__all__ = [
    "ChainConfig", "ChainResult", "ChainState", "ConfigError", "CorpusData", "FeatureSpec", "FoldJob", "FoldWorkerError",
    "IterationResult", "LabelSpec", "ProtocolSpec", "SegmentSpec", "TrainSpec", "iterate_chain", "load_config",
    "prepare_data", "run_chain", "run_fold_job",
]
__version__ = "0.1.0"
