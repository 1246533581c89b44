"""Why a cell measured what it did: what quantization covered in its variant and what the hardware lets its number
format do. Read from the built variant after the cell's timing, never during it (the results' `diagnostics`)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from engine.measure import hardware
from engine.variants import Variant

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
        path = variant.path
        model = path if path.suffix == ".onnx" else next(iter(sorted(path.rglob("*.onnx"))), None)
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
