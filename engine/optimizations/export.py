"""Conversions between working formats: torch module -> ONNX (dynamo, legacy fallback) and -> TorchScript."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.optimizations.base import OptConfig, register
from engine.specs import InputSpec

# Batch 2 for the example inputs: an exporter that sees size 1 may specialize the batch axis.
EXAMPLE_BATCH = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class OnnxExportConfig(OptConfig):
    opset: int = 18
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 23:
            raise ValueError(f"opset={self.opset} must be between 13 and 23")
        if self.exporter not in ("auto", "dynamo", "legacy"):
            raise ValueError(f"exporter={self.exporter} is not auto, dynamo or legacy")


register("onnx-export", stage="convert", config=OnnxExportConfig, formats=("torch",),
         summary="torch.onnx.export with dynamic batch/sequence axes (automatic for ONNX runtimes)")


def _output_names(module: Any, args: tuple[Any, ...], spec: InputSpec) -> list[str]:
    import torch

    with torch.inference_mode():
        out = module(*args)
    count = len(out) if isinstance(out, (tuple, list)) else 1
    if len(spec.outputs) == count:
        return [t.name for t in spec.outputs]
    return [f"output_{i}" for i in range(count)]


def to_onnx(module: Any, spec: InputSpec, dst: Path, config: OnnxExportConfig, notes: list[str]) -> None:
    """Export with dynamic batch (and sequence) axes: dynamo first, the legacy exporter as fallback."""
    import torch

    from engine.modules import example_tensors

    args = example_tensors(spec, EXAMPLE_BATCH)
    names = spec.names
    outputs = _output_names(module, args, spec)
    is_script = isinstance(module, torch.jit.ScriptModule)
    if config.exporter != "legacy" and not is_script:
        dynamic_shapes = tuple(
            {i: torch.export.Dim.DYNAMIC for i, d in enumerate(t.shape) if isinstance(d, str)} or None
            for t in spec.inputs
        )
        try:
            torch.onnx.export(
                module, args, str(dst), dynamo=True, input_names=names, output_names=outputs,
                dynamic_shapes=dynamic_shapes, opset_version=config.opset, external_data=False,
            )
            notes.append(f"exported to ONNX with the dynamo exporter (opset {config.opset})")
            return
        except Exception as exc:
            if config.exporter == "dynamo":
                raise
            text = _ANSI.sub("", str(exc)).strip()  # the exporter colours its messages for terminals
            first = (text.splitlines() or [type(exc).__name__])[0][:200]
            notes.append(f"dynamo exporter failed ({type(exc).__name__}: {first}); used the legacy exporter")
    elif is_script:
        notes.append("TorchScript archives export with the legacy (TorchScript) exporter")
    dynamic_axes = {
        t.name: {i: (d if isinstance(d, str) else f"dim{i}") for i, d in enumerate(t.shape) if isinstance(d, str)}
        for t in spec.inputs
    }
    for name in outputs:
        dynamic_axes[name] = {0: "batch"}
    # torch.export programs are traced in eval mode and refuse .train(), which the exporter's default
    # (EVAL) calls; every module here is in eval mode already, so preserving its mode is the same.
    modes = torch.onnx.TrainingMode
    mode = modes.PRESERVE if isinstance(module, torch.fx.GraphModule) else modes.EVAL
    torch.onnx.export(
        module, args, str(dst), dynamo=False, input_names=names, output_names=outputs,
        dynamic_axes=dynamic_axes, opset_version=min(config.opset, 18), do_constant_folding=True, training=mode,
    )
    notes.append(f"exported to ONNX with the legacy exporter (opset {min(config.opset, 18)})")


def to_torchscript(module: Any, spec: InputSpec, dst: Path, notes: list[str]) -> None:
    """Trace an eval-mode module (or keep a TorchScript archive) and save it."""
    import torch

    from engine.modules import example_tensors

    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    else:
        args = example_tensors(spec, EXAMPLE_BATCH)
        with torch.inference_mode(False), torch.no_grad():
            scripted = torch.jit.trace(module, args, check_trace=False, strict=False)
        notes.append("converted to TorchScript with torch.jit.trace")
    torch.jit.save(scripted, str(dst))
