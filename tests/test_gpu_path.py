"""The GPU path as far as a CPU can test it: device selection, the autocast dtype, one copy of the corpus per
process on an accelerator (torch's `meta` device stands in for one), and fractional-GPU resource requests."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dsl.config import TrainSpec
from dsl.execution import fold_job
from dsl.execution.fold_job import release_device_memory, shared_frames
from dsl.training.train import _autocast, resolve_device


def test_auto_device_is_cuda_exactly_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_autocast_uses_bf16_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch, bf16, dtype) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... disabling autocast": the dtype is still chosen
        ctx = _autocast(torch.device("cuda"), TrainSpec(device="cuda", amp=True))
    assert ctx.device == "cuda" and ctx.fast_dtype == dtype


def test_frames_go_to_an_accelerator_once_per_process() -> None:
    release_device_memory()
    frames = np.arange(24, dtype=np.float32).reshape(6, 4)
    frames.setflags(write=False)
    meta = torch.device("meta")
    first = shared_frames(frames, meta)
    assert first.device.type == "meta" and first.shape == (6, 4)
    assert shared_frames(frames, meta) is first
    view = np.frombuffer(frames.data, dtype=np.float32).reshape(6, 4)  # the object store's next array: same memory
    assert shared_frames(view, meta) is first
    other = frames.copy()
    assert shared_frames(other, meta) is not first  # another corpus (or a copy of it) is copied again
    release_device_memory()
    assert fold_job._device_frames is None
    assert shared_frames(other, meta) is not first


def test_frames_stay_shared_on_the_cpu() -> None:
    release_device_memory()
    frames = np.ones((5, 3), dtype=np.float32)
    t = shared_frames(frames, torch.device("cpu"))
    assert t.data_ptr() == frames.__array_interface__["data"][0]  # no copy, and nothing kept
    assert fold_job._device_frames is None


def test_fractional_gpu_trials_and_fold_tasks_ask_for_their_share() -> None:
    pytest.importorskip("ray")
    from trainables.context import ResourceSpec
    from trainables.fold_runner import placement

    assert placement(ResourceSpec(cpu=2, gpu=0.25)).bundles == [{"CPU": 2, "GPU": 0.25}]
    bundles = placement(ResourceSpec(cpu=1, gpu=0.5, fold_workers=2, head_cpu=1)).bundles
    assert bundles == [{"CPU": 1}, {"CPU": 1, "GPU": 0.5}, {"CPU": 1, "GPU": 0.5}]
    assert placement(ResourceSpec(cpu=1)).bundles == [{"CPU": 1}]


def test_fold_tasks_on_gpus_follow_each_calls_assignment() -> None:
    """A reused fold worker sees every GPU of its node, and each call trains on the one Ray assigned it."""
    pytest.importorskip("ray")
    from dsl.config import ChainConfig
    from trainables.context import ResourceSpec
    from trainables.fold_runner import GPU_TASK_ENV, on_assigned_gpu, task_options

    cfg = ChainConfig()
    assert on_assigned_gpu(cfg, [3]).train.device == "cuda:3"
    assert on_assigned_gpu(cfg.replace(**{"train.device": "cuda"}), ["1"]).train.device == "cuda:1"
    assert on_assigned_gpu(cfg, []) is cfg  # a CPU task
    assert on_assigned_gpu(cfg.replace(**{"train.device": "cpu"}), [0]).train.device == "cpu"  # asked for the CPU
    gpu = task_options(ResourceSpec(cpu=1, gpu=0.5, fold_workers=2))
    assert gpu["num_gpus"] == 0.5 and gpu["runtime_env"]["env_vars"] == GPU_TASK_ENV and "max_calls" not in gpu
    assert task_options(ResourceSpec(cpu=2, fold_workers=2)) == {"num_cpus": 2, "max_retries": 1, "num_gpus": 0}


def test_a_gpu_trial_names_cuda_so_its_step_keys_say_where_its_folds_train() -> None:
    from dsl.config import ChainConfig
    from trainables.chain_trainable import runtime_config
    from trainables.context import ResourceSpec, TrialContext

    cfg = ChainConfig()
    on_gpu = runtime_config(cfg, TrialContext("s", cfg, resources=ResourceSpec(cpu=1, gpu=0.5, fold_workers=2)))
    assert on_gpu.train.device == "cuda" and on_gpu.train.workers == 1
    on_cpu = runtime_config(cfg, TrialContext("s", cfg, resources=ResourceSpec(cpu=2)))
    assert on_cpu.train.device == "auto" and on_cpu.train.num_threads == 2
    pinned = cfg.replace(**{"train.device": "cpu"})
    assert runtime_config(pinned, TrialContext("s", pinned, resources=ResourceSpec(gpu=1))).train.device == "cpu"
