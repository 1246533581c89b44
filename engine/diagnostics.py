"""Why a cell measured what it did: what quantization covered in its variant and what the hardware lets its number
format do. Read from the built variant after the cell's timing, never during it (the results' `diagnostics`)."""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from engine.artifacts import Artifact
from engine.measure import hardware
from engine.measure.layers import Renames
from engine.optimizations.base import Chain, Step
from engine.optimizations.build import build_variant
from engine.variants import BuildContext, Variant

# The compute ops whose precision decides an int8 model's speed, and their integer forms (ONNX's QOperator format).
COMPUTE_OPS = ("MatMul", "Gemm", "Conv")
_INTEGER_FORMS = {"MatMulInteger": "MatMul", "QLinearMatMul": "MatMul", "QGemm": "Gemm", "ConvInteger": "Conv",
                  "QLinearConv": "Conv"}
_QUANTIZE_OPS = ("QuantizeLinear", "DynamicQuantizeLinear")
_LINEAR = re.compile(r"Linear(ReLU)?")
_CONV = re.compile(r"Conv(Transpose)?[123]d|ConvReLU[123]d")
# Names of float compute nodes listed, at most (a transformer has hundreds of MatMuls).
MAX_LISTED = 20


def onnx_quantization(path: str) -> dict[str, Any]:
    """How much of an ONNX graph's compute runs in int8: per op type, the nodes quantized (an integer op, or a
    float op fed by DequantizeLinear: the QDQ form a runtime fuses) and those left in float, named."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    quantized: Counter[str] = Counter()
    left: Counter[str] = Counter()
    float_nodes: list[str] = []
    for node in graph.node:
        if node.op_type in _INTEGER_FORMS:
            quantized[_INTEGER_FORMS[node.op_type]] += 1
        elif node.op_type in COMPUTE_OPS:
            if any(producers.get(name) == "DequantizeLinear" for name in node.input[:2]):
                quantized[node.op_type] += 1
            else:
                left[node.op_type] += 1
                float_nodes.append(node.name or f"{node.op_type} #{sum(left.values())}")
    kinds = Counter(node.op_type for node in graph.node)
    return {
        "quantized": {op: quantized[op] for op in COMPUTE_OPS if quantized[op] or left[op]},
        "float": {op: left[op] for op in COMPUTE_OPS if quantized[op] or left[op]},
        "float_nodes": float_nodes[:MAX_LISTED],
        "quantize_nodes": sum(kinds[op] for op in _QUANTIZE_OPS),
        "dequantize_nodes": kinds["DequantizeLinear"],
    }


def torch_quantization(module: Any) -> dict[str, Any]:
    """The same for an eager torch module: Linear and Conv layers swapped for quantized ones, and those left."""
    quantized: Counter[str] = Counter()
    left: Counter[str] = Counter()
    float_nodes: list[str] = []
    for name, child in module.named_modules():
        kind = type(child)
        # layers, not their parts (a quantized Linear holds a LinearPackedParams)
        op = "Linear" if _LINEAR.fullmatch(kind.__name__) else "Conv" if _CONV.fullmatch(kind.__name__) else None
        if op is None:
            continue
        if ".quantized" in kind.__module__:
            quantized[op] += 1
        elif kind.__module__.startswith("torch.nn.modules"):
            left[op] += 1
            float_nodes.append(name)
    ops = [op for op in ("Linear", "Conv") if quantized[op] or left[op]]
    return {"quantized": {op: quantized[op] for op in ops}, "float": {op: left[op] for op in ops},
            "float_nodes": float_nodes[:MAX_LISTED], "quantize_nodes": None, "dequantize_nodes": None}


def quantization(variant: Variant, steps: list[str]) -> dict[str, Any] | None:
    """What quantization covered in the built variant; None when its chain quantizes nothing to int8."""
    if not any(step.startswith("int8") for step in steps):
        return None
    if variant.target == "onnx" and variant.path is not None:
        model = onnx_file(variant)
        return onnx_quantization(str(model)) if model is not None else None
    if variant.target == "torch" and variant.module is not None:
        return torch_quantization(variant.module)
    return None


def cell_diagnostics(variant: Variant, steps: list[str], device: str, gpu: str | None) -> dict[str, Any]:
    """The result's `diagnostics` that a built variant and this machine answer without running it again."""
    compute_capability = None
    if device == "cuda":
        from engine.measure.devices import cuda_devices, cuda_index

        index = cuda_index(gpu or "cuda:0")
        devices, _ = cuda_devices()
        compute_capability = next((d["compute_capability"] for d in devices if d["index"] == index), None)
    return {
        "quantization": quantization(variant, steps),
        "hardware": hardware.verdict(steps, device, compute_capability=compute_capability),
    }


# Layer errors: computed on this many evaluation samples, this many at a time (a model's fixed batch wins), and
# at most this many layers stored, worst first.
LAYER_SAMPLES = 8
LAYER_BATCH = 4
MAX_LAYER_ERRORS = 20


def onnx_file(variant: Variant) -> Path | None:
    """The variant's ONNX file (a folder's first one when the variant is a folder)."""
    path = variant.path
    if path is None:
        return None
    return path if path.suffix == ".onnx" else next(iter(sorted(path.rglob("*.onnx"))), None)


def student_renames(edits: list[dict[str, Any]]) -> Renames | None:
    """A distilled student's names for the reference's layers: the student keeps some of the teacher's layers
    (a `keep_layers` edit) and numbers them anew, so the teacher's layer keep[i] is the student's layer i (in
    module names, `encoder.layer.4.…`, and ONNX names, `/encoder/layer.4/…`); the others have no counterpart."""
    kept = [edit for edit in edits if edit.get("kind") == "keep_layers"]
    if not kept:
        return None
    rules = []
    for edit in kept:
        new_index = {old: new for new, old in enumerate(edit["keep"])}
        for form in (edit["target"], "/" + edit["target"].replace(".", "/")):
            rules.append((re.compile(re.escape(form) + r"\.(\d+)(?=[./]|$)"), new_index))

    def rename(name: str) -> str | None:
        for pattern, new_index in rules:
            found = pattern.search(name)
            if found:
                old = int(found.group(1))
                if old not in new_index:
                    return None
                name = f"{name[:found.start(1)]}{new_index[old]}{name[found.end(1):]}"
        return name

    return rename


def _torch_call(input_names: list[str]) -> Any:
    """One forward pass of a module on numpy feeds, on the module's own device and float type."""
    import torch

    def call(module: Any, feeds: dict[str, np.ndarray]) -> None:
        weight = next(iter(module.parameters()), None)
        device = weight.device if weight is not None else torch.device("cpu")
        tensors = []
        for name in input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device)
            if weight is not None and tensor.is_floating_point() and weight.is_floating_point():
                tensor = tensor.to(weight.dtype)
            tensors.append(tensor)
        with torch.inference_mode():
            module(*tensors)

    return call


def layer_errors(model: Artifact, variant: Variant, steps: list[str], edits: list[dict[str, Any]],
                 inputs: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    """The diagnostics' `layer_errors` (each compared layer's `error` and `own` error against the fp32 reference,
    worst first; engine/measure/layers.py) and `layer_compare` (how: method, samples, layers compared, notes, ms);
    `layer_errors_error` instead when they cannot be computed. Empty for the baseline (it is the reference)."""
    if not steps:
        return {}
    from engine.measure import layers

    start = time.perf_counter()
    count = min(LAYER_SAMPLES, next(iter(inputs.values())).shape[0])
    sample = {k: v[:count] for k, v in inputs.items()}
    batch = model.spec.fixed_batch or LAYER_BATCH
    renames = student_renames(edits)
    reference_ctx = BuildContext(model.spec)
    if variant.target == "onnx" and onnx_file(variant) is not None:
        reference = onnx_file(build_variant(model, Chain(()), "onnx", reference_ctx))
        if reference is None:
            return {"layer_errors": None, "layer_errors_error": "the fp32 reference has no ONNX file"}
        found, notes = layers.onnx_layer_errors(reference, onnx_file(variant) or reference, sample, batch, threads,
                                                renames)
        method = ("ONNX Runtime on the CPU: intermediate tensors of matching names marked as outputs, "
                  f"{layers.SLICE} at a time (a marked tensor can keep the runtime from fusing across it)")
    elif variant.target == "torch" and variant.module is not None:
        original = build_variant(model, Chain(()), "torch", reference_ctx).module
        found, notes = layers.torch_layer_errors(original, variant.module, _torch_call(variant.input_names), sample,
                                                 batch, renames)
        method = "forward hooks on the Linear and Conv layers; own error: the variant's layer fed the fp32 inputs"
    else:
        return {"layer_errors": None,
                "layer_errors_error": f"a {variant.target} variant has no per-layer outputs to compare (no forward "
                                      "hooks in TorchScript); the same chain's torch or onnxruntime cell has them"}
    return {
        "layer_errors": [error.to_json() for error in found[:MAX_LAYER_ERRORS]],
        "layer_compare": {"method": method, "samples": count, "compared": len(found), "notes": notes,
                          "ms": (time.perf_counter() - start) * 1e3},
    }


# The quantization steps whose `exclude` keeps named layers in float.
FLOAT_EXCLUDE_STEPS = ("int8-static", "int8-dynamic")


def with_float_layers(chain: Chain, names: list[str]) -> Chain | None:
    """The same chain with these layers kept in float by its int8 step (their names added to its `exclude`);
    None when the chain has no int8 step that can exclude layers."""
    steps = list(chain.steps)
    for i, step in enumerate(steps):
        if step.id in FLOAT_EXCLUDE_STEPS:
            kept = tuple(dict.fromkeys([*step.config.exclude, *names]))  # type: ignore[attr-defined]
            steps[i] = Step(step.id, dataclasses.replace(step.config, exclude=kept))  # type: ignore[call-arg]
            return Chain(tuple(steps))
    return None
