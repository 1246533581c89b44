"""Conversions between working formats: torch module -> ONNX (dynamo, legacy fallback) and -> TorchScript."""

from __future__ import annotations

import inspect
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.optimizations.base import LARGE_ONNX_BYTES, OptConfig, register
from engine.specs import InputSpec

# Batch 2 for the example inputs: an exporter that sees size 1 may specialize the batch axis.
EXAMPLE_BATCH = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What varies between two exports of the same failing model (object addresses): left out of the fallback note so
# that it reads the same on every cell of a study, and the results page shows it once.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
# The fallback note quotes this much of the dynamo exporter's error (type and first line); its traceback goes to
# the cell's log.
NOTE_ERROR_CHARS = 120


@dataclass(frozen=True)
class OnnxExportConfig(OptConfig):
    opset: int = 18
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 23:
            raise ValueError(f"opset={self.opset} must be between 13 and 23")
        if self.exporter not in ("auto", "dynamo", "legacy"):
            raise ValueError(f"exporter={self.exporter} is not auto, dynamo or legacy")


register("onnx-export", stage="convert", config=OnnxExportConfig, formats=("torch", "tensorflow"),
         summary="torch.onnx.export with dynamic batch/sequence axes, tf2onnx for TensorFlow models (automatic for "
                 "ONNX runtimes)")


def _output_names(module: Any, args: tuple[Any, ...], spec: InputSpec) -> list[str]:
    import torch

    with torch.inference_mode():
        out = module(*args)
    count = len(out) if isinstance(out, (tuple, list)) else 1
    if len(spec.outputs) == count:
        return [t.name for t in spec.outputs]
    return [f"output_{i}" for i in range(count)]


def _dynamic_shapes(module: Any, args: tuple[Any, ...], spec: InputSpec) -> dict[str, Any]:
    """The spec's named dynamic axes laid out as `module.forward` binds `args`: keyed by parameter name, and one
    tuple of per-input axes for a `*tensors` parameter (HFWrapper's), which takes every input at once."""
    axes = [{i: d for i, d in enumerate(t.shape) if isinstance(d, str)} or None for t in spec.inputs]
    signature = inspect.signature(module.forward)
    shapes: dict[str, Any] = {}
    position = 0
    for name, value in signature.bind(*args).arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[name] = tuple(axes[position:position + len(value)])
            position += len(value)
        else:
            shapes[name] = axes[position]
            position += 1
    return shapes


def _weight_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _dynamo_program(module: Any, args: tuple[Any, ...], spec: InputSpec, outputs: list[str], opset: int) -> Any:
    """The module as an ONNX program from the dynamo (torch.export) exporter, not yet saved."""
    import torch

    with warnings.catch_warnings():
        # axes of several inputs share a name (batch, sequence) on purpose: that is how they are named
        warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape")
        program = torch.onnx.export(
            # axis names (strings) are dynamic and name the ONNX model's axes, as the legacy exporter's do
            module, args, None, dynamo=True, input_names=spec.names, output_names=outputs,
            dynamic_shapes=_dynamic_shapes(module, args, spec), opset_version=opset,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
    # Each node carries the exporter's debugging notes (the Python stack that made it, with this machine's paths):
    # nothing here reads them, and they would grow a small model's file several times over.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    return program


def fallback_note(exc: BaseException, opset: int) -> str:
    """One line saying the legacy exporter was used and why: the root cause of the dynamo exporter's error (it wraps
    torch.export's in a generic "step 1/3" message), its first line without addresses, at most NOTE_ERROR_CHARS."""
    cause = exc
    while cause.__cause__ is not None and str(cause.__cause__).strip():
        cause = cause.__cause__
    text = _ADDRESS.sub("0x…", _ANSI.sub("", str(cause))).strip()  # the exporter colours its messages
    line = " ".join(text.splitlines()[0].split()) if text else ""
    reason = f"{type(cause).__name__}: {line}" if line else type(cause).__name__
    if len(reason) > NOTE_ERROR_CHARS:
        reason = reason[:NOTE_ERROR_CHARS - 1].rstrip() + "…"
    return f"exported to ONNX with the legacy exporter (opset {opset}): dynamo failed ({reason})"


def to_onnx(module: Any, spec: InputSpec, dst: Path, config: OnnxExportConfig, notes: list[str]) -> None:
    """Export with dynamic batch (and sequence) axes: dynamo first, the legacy exporter as fallback."""
    import torch

    from engine.modules import example_tensors

    args = example_tensors(spec, EXAMPLE_BATCH)
    names = spec.names
    outputs = _output_names(module, args, spec)
    is_script = isinstance(module, torch.jit.ScriptModule)
    legacy_opset = min(config.opset, 18)
    failure: BaseException | None = None
    if config.exporter != "legacy" and not is_script:
        try:
            program = _dynamo_program(module, args, spec, outputs, config.opset)
        except Exception as exc:  # the exporter raises whatever torch.export or a converter raises
            if config.exporter == "dynamo":
                raise
            failure = exc
            # the whole story goes to the cell's log; the note carries one line of it
            print("the dynamo exporter failed; exporting with the legacy exporter instead:", file=sys.stderr)
            traceback.print_exception(exc, file=sys.stderr)
            sys.stderr.flush()
        else:
            # one self-contained file, unless protobuf's 2 GB limit needs the weights beside it
            program.save(str(dst), external_data=_weight_bytes(module) > LARGE_ONNX_BYTES)
            notes.append(f"exported to ONNX with the dynamo exporter (opset {config.opset})")
            return
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
        dynamic_axes=dynamic_axes, opset_version=legacy_opset, do_constant_folding=True, training=mode,
    )
    notes.append(fallback_note(failure, legacy_opset) if failure is not None
                 else f"exported to ONNX with the legacy exporter (opset {legacy_opset})")


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
