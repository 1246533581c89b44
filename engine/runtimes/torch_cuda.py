"""PyTorch eager and torch.compile on a CUDA device, timed with CUDA events; optional CUDA-graph replay."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from engine.config import param
from engine.errors import Unavailable
from engine.runtimes.base import CudaOptions, Runtime, Session, register, tf32_option
from engine.runtimes.torch_eager import CompileOptions, set_torch_threads
from engine.variants import Variant


def torch_cuda_available() -> tuple[bool, str | None]:
    """Without importing torch: a GPU through NVML, and a torch build that is not CPU-only."""
    if importlib.util.find_spec("torch") is None:
        return False, "the Python package 'torch' is not installed"
    from engine.measure.devices import cuda_devices

    gpus, why = cuda_devices()
    if not gpus:
        return False, why
    version = importlib.metadata.version("torch")
    if version.endswith("+cpu"):
        return False, f"torch {version} is a CPU-only build; install a CUDA build of torch"
    return True, None


class CudaTorchSession(Session):
    """Inputs are copied to the device in prepare(); run() launches; CUDA events time each call."""

    def __init__(self, module: Any, input_names: list[str], device: str, cuda_graph: bool) -> None:
        import torch

        super().__init__(input_names)
        self._torch = torch
        self.device = torch.device(device)
        self.module = module
        floats = [p.dtype for p in module.parameters() if p.dtype.is_floating_point] \
            if hasattr(module, "parameters") else []
        self._float_dtype = floats[0] if floats else torch.float32
        self._graph: Any = None
        self._static_in: tuple[Any, ...] = ()
        self._static_out: Any = None
        self._cuda_graph = cuda_graph
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.applied.update({"dtype": str(self._float_dtype).replace("torch.", ""), "device": str(self.device),
                             "gpu": torch.cuda.get_device_name(self.device), "cuda_graph": cuda_graph,
                             "timing": "cuda-events", "host_device_copies_timed": False})
        torch.cuda.reset_peak_memory_stats(self.device)

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        tensors = []
        for name in self.input_names:
            t = self._torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
            if t.dtype.is_floating_point and t.dtype != self._float_dtype:
                t = t.to(self._float_dtype)
            tensors.append(t)
        if self._cuda_graph:
            self._capture_or_copy(tuple(tensors))
        self._torch.cuda.synchronize(self.device)
        return tuple(tensors)

    def _capture_or_copy(self, tensors: tuple[Any, ...]) -> None:
        """Capture the model once on static buffers; later inputs are copied into those buffers."""
        torch = self._torch
        if self._graph is not None and all(a.shape == b.shape for a, b in zip(self._static_in, tensors, strict=True)):
            for static, new in zip(self._static_in, tensors, strict=True):
                static.copy_(new)
            return
        self._static_in = tuple(t.clone() for t in tensors)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # no_grad rather than inference_mode: static buffers are written with copy_() outside any mode later,
        # and PyTorch documents graph capture with ordinary tensors
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm up allocations on a side stream before capture, as CUDA graphs need
                self.module(*self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.no_grad():
            self._static_out = self.module(*self._static_in)

    def _run(self, prepared: Any) -> Any:
        if self._graph is not None:
            self._graph.replay()
            return self._static_out
        with self._torch.inference_mode():
            return self.module(*prepared)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.device)

    def device_timer(self, prepared: Any) -> float:
        """Milliseconds of one call measured on the GPU between two events; waits for the end event."""
        self._start.record()
        self._run(prepared)
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        items = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return [o.detach().float().cpu().numpy() if o.dtype.is_floating_point else o.cpu().numpy() for o in items]

    def peak_allocated_mb(self) -> float:
        return float(self._torch.cuda.max_memory_allocated(self.device)) / 2**20


@dataclass(frozen=True)
class TorchCudaOptions(CudaOptions):
    cuda_graph: bool = param(False, "capture once and replay a CUDA graph")
    tf32: bool = tf32_option()


@dataclass(frozen=True)
class CompileCudaOptions(CompileOptions, CudaOptions):  # fields: device, compile_mode, tf32
    tf32: bool = tf32_option()


_CudaOptionsT = TypeVar("_CudaOptionsT", bound=TorchCudaOptions | CompileCudaOptions)


class _TorchCudaRuntime(Runtime[_CudaOptionsT]):
    consumes = "torch"
    device = "cuda"
    requires = ("torch",)

    @classmethod
    def available(cls) -> tuple[bool, str | None]:
        return torch_cuda_available()

    def _device(self) -> str:
        return self.settings.options.device

    def _module(self, variant: Variant) -> Any:
        import torch

        if not torch.cuda.is_available():
            raise Unavailable("torch.cuda.is_available() is False: no usable CUDA device for torch")
        set_torch_threads(self.settings)
        # cuDNN convolutions default to TF32 on Ampere and newer: fp32 means fp32 unless `tf32` is asked for
        tf32 = self.settings.options.tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        return variant.module.to(self._device())

    def _session(self, module: Any, variant: Variant, cuda_graph: bool) -> CudaTorchSession:
        session = CudaTorchSession(module, variant.input_names, self._device(), cuda_graph)
        session.applied["tf32"] = self.settings.options.tf32
        return session


@register
class TorchCuda(_TorchCudaRuntime[TorchCudaOptions]):
    id = "torch-cuda"
    summary = "PyTorch eager on a CUDA GPU (CUDA events; optional CUDA graphs)"
    Options = TorchCudaOptions

    def load(self, variant: Variant) -> Session:
        return self._session(self._module(variant), variant, self.settings.options.cuda_graph)


@register
class TorchCompileCuda(_TorchCudaRuntime[CompileCudaOptions]):
    id = "torch-compile-cuda"
    summary = "torch.compile (inductor) on a CUDA GPU; compile time is cold start"
    Options = CompileCudaOptions

    def load(self, variant: Variant) -> Session:
        import torch

        mode = self.settings.options.compile_mode
        compiled = torch.compile(self._module(variant), backend="inductor", mode=mode, dynamic=False)
        session = self._session(compiled, variant, cuda_graph=False)
        session.applied.update({"backend": "inductor", "compile_mode": mode})
        return session
