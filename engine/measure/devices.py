"""GPU discovery through NVML (nvidia-ml-py); absent drivers are a reason, never a crash."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any


@functools.lru_cache(maxsize=1)
def cuda_devices() -> tuple[tuple[dict[str, Any], ...], str | None]:
    """(devices, None) or ((), why there is none)."""
    if importlib.util.find_spec("pynvml") is None:
        return (), "nvidia-ml-py is not installed, so no NVIDIA GPU can be found"
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return (), f"no NVIDIA driver ({exc}); no CUDA device on this machine"
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return (), "the NVIDIA driver reports no GPU"
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        devices = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            devices.append({
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "memory_mb": round(memory.total / 2**20),
                "driver": driver,
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "compute_capability": f"{major}.{minor}",
            })
        return tuple(devices), None
    except pynvml.NVMLError as exc:
        return (), f"NVML failed to describe the GPUs ({exc})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_index(device: str) -> int | None:
    """The index of a `cuda` / `cuda:N` device string; None for anything else."""
    if device == "cuda":
        return 0
    index = device.removeprefix("cuda:")
    return int(index) if device.startswith("cuda:") and index.isdigit() else None
