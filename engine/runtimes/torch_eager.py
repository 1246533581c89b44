"""PyTorch eager (inference_mode) and torch.compile (inductor; compile time counts as cold start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from engine.config import param
from engine.measure.profile import OpTime
from engine.runtimes.base import Runtime, RuntimeOptions, RuntimeSettings, Session, register
from engine.variants import Variant

@dataclass(frozen=True)
class CompileOptions(RuntimeOptions):
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = param(
        "default", "torch.compile's mode")


@dataclass(frozen=True)
class TorchScriptOptions(RuntimeOptions):
    freeze: bool = param(True, "torch.jit.freeze the module before timing")


def set_torch_threads(settings: RuntimeSettings[Any]) -> None:
    import torch

    torch.set_num_threads(settings.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process; the value stays as it was
        pass


class TorchSession(Session):
    def __init__(self, module: Any, input_names: list[str]) -> None:
        import torch

        super().__init__(input_names)
        self._torch = torch
        self.module = module
        params = list(module.parameters()) if hasattr(module, "parameters") else []
        floats = [p.dtype for p in params if p.dtype.is_floating_point]
        self._float_dtype = floats[0] if floats else torch.float32
        self.applied["dtype"] = str(self._float_dtype).replace("torch.", "")
        # read back: set_num_interop_threads cannot change once parallel work has run in this process
        self.applied["intra_op_threads"] = torch.get_num_threads()
        self.applied["inter_op_threads"] = torch.get_num_interop_threads()

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        tensors = []
        for name in self.input_names:
            t = self._torch.from_numpy(np.ascontiguousarray(feeds[name]))
            if t.dtype.is_floating_point and t.dtype != self._float_dtype:
                t = t.to(self._float_dtype)
            tensors.append(t)
        return tuple(tensors)

    def _run(self, prepared: Any) -> Any:
        with self._torch.inference_mode():
            return self.module(*prepared)

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        items = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return [o.detach().float().numpy() if o.dtype.is_floating_point else o.numpy() for o in items]

    def profile_ops(self, prepared: Any, runs: int) -> list[OpTime]:
        """torch.profiler's self time per operator (aten::addmm, ...), device time where the op ran on a GPU."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self._torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(runs):
                self.run(prepared)
                self.synchronize()
        found = []
        for event in prof.key_averages():
            device_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
            cpu_us = float(event.self_cpu_time_total)
            where, us = ("cuda", device_us) if device_us > 0 else ("cpu", cpu_us)
            if us > 0:
                found.append(OpTime(event.key, event.key, where, us / 1e3))
        return found


@register
class TorchEager(Runtime[RuntimeOptions]):
    id = "torch"
    consumes = "torch"
    summary = "PyTorch eager mode under torch.inference_mode"
    requires = ("torch",)

    def load(self, variant: Variant) -> Session:
        set_torch_threads(self.settings)
        return TorchSession(variant.module, variant.input_names)


@register
class TorchCompile(Runtime[CompileOptions]):
    id = "torch-compile"
    consumes = "torch"
    summary = "torch.compile with the inductor backend (compile time is cold start)"
    Options = CompileOptions
    requires = ("torch",)

    def load(self, variant: Variant) -> Session:
        import torch

        set_torch_threads(self.settings)
        mode = self.settings.options.compile_mode
        compiled = torch.compile(variant.module, backend="inductor", mode=mode, dynamic=False)
        session = TorchSession(compiled, variant.input_names)
        session.applied.update({"backend": "inductor", "compile_mode": mode})
        return session


@register
class TorchScriptRuntime(Runtime[TorchScriptOptions]):
    id = "torchscript"
    consumes = "torchscript"
    summary = "TorchScript archive (torch.jit.load, frozen for inference)"
    Options = TorchScriptOptions
    requires = ("torch",)

    def load(self, variant: Variant) -> Session:
        import torch

        set_torch_threads(self.settings)
        module = torch.jit.load(str(variant.file), map_location="cpu").eval()
        freeze = self.settings.options.freeze
        if freeze:
            module = torch.jit.freeze(module)
        session = TorchSession(module, variant.input_names)
        session.applied["freeze"] = freeze
        return session
