"""The machine and library versions a result was computed on.

The same seed gives different numbers on CPUs with different vector units (AVX2 vs AVX-512/AMX pick
different convolution kernels) and under other torch versions, so every result records where it ran,
and "deterministic per seed" is claimed only for results with the same `fingerprint`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys

# CPU flags that change which kernels torch picks (and so the float results).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in SIMD_FLAGS if f in flags]


def machine_info() -> dict:
    """CPU model and SIMD flags, core count, GPU, and the versions of the libraries that compute results."""
    return dict(_machine_info())


@functools.lru_cache(maxsize=1)
def _machine_info() -> dict:
    import numpy
    import sklearn
    import torch

    model, flags = _cpu()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info = {"cpu": model, "cpu_flags": flags, "machine": platform.machine(), "cores": os.cpu_count(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "sklearn": sklearn.__version__, "platform": sys.platform}
    key = "|".join(str(info[k]) for k in ("cpu", "cpu_flags", "machine", "gpu", "torch", "numpy", "sklearn"))
    info["fingerprint"] = hashlib.sha256(key.encode()).hexdigest()[:12]
    return info


def describe_machine(info: dict) -> str:
    """One line: `Intel Xeon ... (avx2, avx512f), 2 cores, no GPU, torch 2.14.1`."""
    flags = ", ".join(info.get("cpu_flags") or []) or "no SIMD flags read"
    gpu = info.get("gpu") or "no GPU"
    return f"{info.get('cpu', '?')} ({flags}), {info.get('cores', '?')} cores, {gpu}, torch {info.get('torch', '?')}"
