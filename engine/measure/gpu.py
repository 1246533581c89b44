"""Device metrics through NVML: this process's GPU memory, power and energy over a measured window.

Every value is None where the GPU or driver does not expose it: never a made-up 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class EnergyWindow:
    """Energy and mean power over a window, from NVML's cumulative energy counter (Volta and newer)."""

    energy_mj: float | None = None
    seconds: float | None = None

    @property
    def mean_power_w(self) -> float | None:
        if self.energy_mj is None or not self.seconds:
            return None
        return self.energy_mj / 1000.0 / self.seconds


class Nvml:
    """A handle on one GPU through NVML; methods return None when a metric is unsupported."""

    def __init__(self, index: int = 0) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass

    def process_memory_mb(self, pid: int | None = None) -> float | None:
        """GPU memory NVML attributes to this process (None where per-process accounting is hidden)."""
        pid = pid or os.getpid()
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except self._nvml.NVMLError:
            return None
        for proc in processes:
            used = getattr(proc, "usedGpuMemory", None)
            if proc.pid == pid and used is not None:
                return float(used) / 2**20
        return None

    def energy_mj(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self._nvml.NVMLError:
            return None


class EnergyMeter:
    """Start/stop around the timed loop: energy used in between, or None without a counter."""

    def __init__(self, nvml: Nvml | None) -> None:
        self.nvml = nvml
        self._start: tuple[float, float | None] | None = None
        self.window = EnergyWindow()

    def start(self) -> None:
        if self.nvml is not None:
            self._start = (time.perf_counter(), self.nvml.energy_mj())

    def stop(self) -> EnergyWindow:
        if self.nvml is None or self._start is None or self._start[1] is None:
            return self.window
        end = self.nvml.energy_mj()
        if end is None:
            return self.window
        self.window = EnergyWindow(end - self._start[1], time.perf_counter() - self._start[0])
        return self.window


def open_nvml(device: str) -> Nvml | None:
    """NVML for a `cuda` / `cuda:N` device, or None (CPU device, or NVML missing)."""
    from engine.measure.devices import cuda_index

    index = cuda_index(device)
    if index is None:
        return None
    try:
        return Nvml(index)
    except Exception:  # noqa: BLE001 - NVML failures of any kind mean "no device metrics", reported as null
        return None


def device_metrics(nvml: Nvml, window: EnergyWindow, iterations: int, batch_size: int,
                   torch_peak_mb: float | None) -> dict[str, Any]:
    """The device fields of a result: peak memory (the larger of NVML and torch's view), power, energy."""
    nvml_mb = nvml.process_memory_mb()
    candidates = [v for v in (nvml_mb, torch_peak_mb) if v is not None]
    per_inference = window.energy_mj / iterations if window.energy_mj is not None and iterations else None
    return {
        "peak_device_mb": max(candidates) if candidates else None,
        "device_memory": {"nvml_process_mb": nvml_mb, "torch_peak_allocated_mb": torch_peak_mb},
        "power_w": window.mean_power_w,
        "energy_mj_per_inference": per_inference,
        "energy_mj_per_item": per_inference / batch_size if per_inference is not None else None,
    }
