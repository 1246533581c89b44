"""Which layers lost accuracy: each compute layer's output in a variant against the same layer of the fp32
reference, on a few evaluation samples (the results' `diagnostics.layer_errors`).

Two errors per layer, both relative L2 (‖variant − reference‖ / ‖reference‖ over the samples):
- `error`: the layer's output as the variant computes it, every earlier error included (what reaches it);
- `own`: what the layer adds itself. For torch, the variant's layer fed the reference's own inputs (forward
  hooks), so it is that layer's error alone; for ONNX, the growth of `error` over the largest error among the
  nearest compared layers feeding it (floored at 0). Layers are ranked by `own`, worst first.

Memory stays bounded: the layers are compared in slices (SLICE tensors marked as outputs, or hooked, at once),
one batch at a time, and only running sums are kept.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The ops whose weights number formats and pruning change: the layers compared.
ONNX_LAYER_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# Layers compared at once (outputs marked per session, hooks per forward pass).
SLICE = 16
# At most this many layers are compared (the first ones in graph or module order).
MAX_LAYERS = 512
# Reference names → the variant's (a distilled student's renumbered layers); None: no counterpart.
Renames = Callable[[str], str | None]


@dataclass(frozen=True)
class LayerError:
    """One layer's errors. `layer` is its name in the variant (what the int8 step's `exclude=` names);
    `reference` the fp32 model's name for it when that differs (a distilled student numbers its layers anew)."""

    layer: str
    op_type: str
    error: float
    own: float | None
    reference: str | None = None

    def to_json(self) -> dict[str, Any]:
        found = {"layer": self.layer, "op_type": self.op_type, "error": self.error, "own": self.own}
        return {**found, "reference": self.reference} if self.reference else found


@dataclass
class _Sums:
    """Running sums of one layer's squared difference and squared reference."""

    diff: float = 0.0
    ref: float = 0.0
    own_diff: float = 0.0
    own_ref: float = 0.0
    own_failed: bool = False

    def add(self, variant: np.ndarray, reference: np.ndarray) -> None:
        v, r = variant.astype(np.float64, copy=False), reference.astype(np.float64, copy=False)
        self.diff += float(np.sum((v - r) ** 2))
        self.ref += float(np.sum(r ** 2))

    def add_own(self, variant: np.ndarray, reference: np.ndarray) -> None:
        v, r = variant.astype(np.float64, copy=False), reference.astype(np.float64, copy=False)
        self.own_diff += float(np.sum((v - r) ** 2))
        self.own_ref += float(np.sum(r ** 2))

    @staticmethod
    def _relative(diff: float, ref: float) -> float:
        return float(np.sqrt(diff / ref)) if ref > 0 else (0.0 if diff == 0 else float("inf"))

    @property
    def error(self) -> float:
        return self._relative(self.diff, self.ref)

    @property
    def own(self) -> float | None:
        if self.own_failed or (self.own_ref == 0 and self.own_diff == 0):
            return None
        return self._relative(self.own_diff, self.own_ref)


def _batches(inputs: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    n = next(iter(inputs.values())).shape[0]
    for start in range(0, n, batch):
        idx = np.arange(start, start + batch) % n  # a fixed batch size wraps around
        yield {k: v[idx] for k, v in inputs.items()}


def _slices(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), SLICE):
        yield items[start:start + SLICE]


def ranked(errors: list[LayerError]) -> list[LayerError]:
    """Worst first: by the layer's own error, then by the error reaching it."""
    return sorted(errors, key=lambda e: (-(e.own if e.own is not None else -1.0), -e.error))


# ---------------------------------------------------------------------------------------------------- ONNX


def _onnx_layers(graph: Any) -> list[tuple[str, str, str]]:
    """(tensor, layer name, op type) of the compute layers of the reference graph, in graph order."""
    layers = []
    for i, node in enumerate(graph.node):
        if node.op_type in ONNX_LAYER_OPS and node.output and node.output[0]:
            layers.append((node.output[0], node.name or f"{node.op_type}_{i}", node.op_type))
    return layers[:MAX_LAYERS]


def _feeders(graph: Any, compared: set[str]) -> dict[str, set[str]]:
    """For each compared tensor, the nearest compared tensors upstream of its producer (through any ops)."""
    producer = {out: node for node in graph.node for out in node.output if out}
    memo: dict[str, frozenset[str]] = {}

    def upstream(tensor: str) -> frozenset[str]:
        # the nearest compared tensors at or above `tensor`: a post-order walk without recursion (deep graphs)
        stack = [(tensor, False)]
        while stack:
            name, expanded = stack.pop()
            if name in memo:
                continue
            node = producer.get(name)
            if name in compared or node is None:
                memo[name] = frozenset({name}) if name in compared else frozenset()
            elif expanded:
                memo[name] = frozenset().union(*(memo.get(i, frozenset()) for i in node.input if i))
            else:
                stack.append((name, True))
                stack.extend((i, False) for i in node.input if i and i not in memo)
        return memo[tensor]

    found = {}
    for tensor in compared:
        node = producer[tensor]
        found[tensor] = set(frozenset().union(*(upstream(i) for i in node.input if i)))
    return found


# Ops a runtime's optimizer folds into the compute layer before them (their output then takes the layer's place;
# the exporter folds BatchNormalization into a Conv already, quantization's pre-processing and ONNX Runtime fold more).
FUSED_AFTER = ("BatchNormalization", "Relu", "Clip", "LeakyRelu", "Add", "Mul", "Sigmoid", "HardSigmoid")
# How many such ops after a layer are followed, at most.
FUSED_DEPTH = 3


def _fused_outputs(tensor: str, consumers: dict[str, list[Any]]) -> list[str]:
    """The layer's output, then the outputs of the ops an optimizer may fold into it (each the only reader of the
    one before), nearest first."""
    found = [tensor]
    for _ in range(FUSED_DEPTH):
        readers = consumers.get(found[-1], [])
        if len(readers) != 1 or readers[0].op_type not in FUSED_AFTER or not readers[0].output:
            break
        found.append(readers[0].output[0])
    return found


def _with_outputs(model: Any, tensors: list[str]) -> Any:
    """A copy of the model whose graph also outputs these intermediate tensors."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in tensors:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


class _OnnxRunner:
    """Sessions of one ONNX model with extra outputs, read from its own folder (external data resolves)."""

    def __init__(self, path: Path, optimize: bool, threads: int) -> None:
        import onnx

        self.path = path
        self.model = onnx.load(str(path), load_external_data=False)
        self.external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in self.model.graph.initializer)
        self.optimize, self.threads = optimize, threads
        self.tensors = {out for node in self.model.graph.node for out in node.output if out}
        self.inputs = [i.name for i in self.model.graph.input]
        # what readers of a quantized tensor read: its QuantizeLinear -> DequantizeLinear round trip (where the
        # quantizer also dropped a ReLU the unsigned range clamps, the tensor itself is the unclamped value)
        quantized = {node.input[0]: node.output[0] for node in self.model.graph.node
                     if node.op_type == "QuantizeLinear" and node.input and node.output}
        dequantized = {node.input[0]: node.output[0] for node in self.model.graph.node
                       if node.op_type == "DequantizeLinear" and node.input and node.output}
        self.read_as = {tensor: dequantized[q] for tensor, q in quantized.items() if q in dequantized}

    def run(self, tensors: list[str], feeds: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        model = _with_outputs(self.model, tensors)
        if self.external:  # saved beside the original so that its external data files resolve
            with tempfile.NamedTemporaryFile(prefix=".layers-", suffix=".onnx", dir=self.path.parent) as tmp:
                tmp.write(model.SerializeToString())
                tmp.flush()
                session = ort.InferenceSession(tmp.name, options, providers=["CPUExecutionProvider"])
        else:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for batch in feeds:
            values = session.run(tensors, {k: v for k, v in batch.items() if k in self.inputs})
            yield dict(zip(tensors, values, strict=True))


def onnx_layer_errors(reference: Path, variant: Path, inputs: dict[str, np.ndarray], batch: int, threads: int,
                      renames: Renames | None = None) -> tuple[list[LayerError], list[str]]:
    """Per-layer errors of an ONNX variant against the fp32 ONNX reference (ONNX Runtime on the CPU: the
    reference unoptimized, as the study's reference outputs are; the variant optimized, as it runs), and notes
    on the layers that could not be compared."""
    ref, var = _OnnxRunner(reference, False, threads), _OnnxRunner(variant, True, threads)
    layers = []
    consumers: dict[str, list[Any]] = {}
    for node in ref.model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for tensor, name, op_type in _onnx_layers(ref.model.graph):
        # a layer whose output the variant's optimizer fused away (Conv + BatchNormalization: the fused Conv
        # outputs the normalization's tensor) is compared at the first tensor after it the variant still has
        for candidate in _fused_outputs(tensor, consumers):
            mapped = renames(candidate) if renames else candidate
            if mapped is not None and mapped in var.tensors:
                layers.append((candidate, var.read_as.get(mapped, mapped), name, op_type))
                break
    notes = []
    if not layers:
        return [], ["no layer of the reference has a counterpart in the variant (no matching tensor names)"]
    sums = {tensor: _Sums() for tensor, *_ in layers}
    mismatched: set[str] = set()
    for part in _slices(layers):
        ref_names, var_names = [t for t, *_ in part], [m for _, m, *_ in part]
        for got_ref, got_var in zip(ref.run(ref_names, _batches(inputs, batch)),
                                    var.run(var_names, _batches(inputs, batch)), strict=True):
            for tensor, mapped, *_ in part:
                r, v = got_ref[tensor], got_var[mapped]
                if r.shape != v.shape:
                    mismatched.add(tensor)
                elif tensor not in mismatched:
                    sums[tensor].add(np.asarray(v, dtype=np.float32), np.asarray(r, dtype=np.float32))
    compared = {tensor for tensor, *_ in layers if tensor not in mismatched}
    if mismatched:
        notes.append(f"{len(mismatched)} layer(s) not compared: their output's shape differs in the variant "
                     "(pruned channels)")
    feeders = _feeders(ref.model.graph, compared)
    errors = []
    for tensor, _, name, op_type in layers:
        if tensor not in compared:
            continue
        error = sums[tensor].error
        upstream = [sums[t].error for t in feeders[tensor]]
        own = max(0.0, error - max(upstream, default=0.0))
        # ONNX node names carry the same scope as their tensors' (/encoder/layer.4/...): renamed alike
        in_variant = (renames(name) if renames else None) or name
        errors.append(LayerError(in_variant, op_type, error, own, name if in_variant != name else None))
    return ranked(errors), notes


# --------------------------------------------------------------------------------------------------- torch

_TORCH_LAYER = re.compile(r"Linear|LinearReLU|Conv(Transpose)?[123]d|ConvReLU[123]d")


def torch_layers(module: Any) -> dict[str, Any]:
    """The compute layers (Linear, Conv and their quantized forms) of a module, by qualified name."""
    found = {}
    for name, child in module.named_modules():
        if name and _TORCH_LAYER.fullmatch(type(child).__name__):
            found[name] = child
    return found


def _tensor(value: Any) -> Any:
    """The first tensor of a layer's output (a float copy on the CPU), dequantized when quantized."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    if getattr(value, "is_quantized", False):
        value = value.dequantize()
    return value.detach().float().cpu()


def _keeper(store: dict[str, Any], name: str, with_inputs: bool) -> Callable[..., None]:
    """A forward hook keeping a layer's output (and, for the reference, its inputs) under `name`."""

    def hook(module: Any, args: tuple[Any, ...], out: Any) -> None:
        store[name] = (args, _tensor(out)) if with_inputs else _tensor(out)

    return hook


def _like(args: tuple[Any, ...], layer: Any) -> tuple[Any, ...]:
    """The reference's inputs on the variant layer's device, in its float type (a half or a GPU variant)."""
    weight = next(iter(layer.parameters()), None)
    if weight is None:  # a quantized layer keeps its weights packed, on the CPU, and reads float inputs
        return args
    return tuple(a.to(device=weight.device,
                      dtype=weight.dtype if a.is_floating_point() and weight.is_floating_point() else None)
                 if hasattr(a, "is_floating_point") else a for a in args)


def torch_layer_errors(reference: Any, variant: Any, call: Callable[[Any, dict[str, np.ndarray]], None],
                       inputs: dict[str, np.ndarray], batch: int,
                       renames: Renames | None = None) -> tuple[list[LayerError], list[str]]:
    """Per-layer errors of an eager torch variant against the fp32 reference module, by forward hooks:
    `call(module, feeds)` runs one forward pass. `own` feeds each variant layer the reference layer's inputs."""
    import torch

    ref_layers, var_layers = torch_layers(reference), torch_layers(variant)
    pairs = []
    for name in list(ref_layers)[:MAX_LAYERS]:
        mapped = renames(name) if renames else name
        if mapped is not None and mapped in var_layers:
            pairs.append((name, mapped))
    if not pairs:
        return [], ["no layer of the reference has a counterpart in the variant (no matching module names)"]
    sums = {name: _Sums() for name, _ in pairs}
    mismatched: set[str] = set()
    for part in _slices(pairs):
        seen_ref: dict[str, tuple[Any, Any]] = {}
        seen_var: dict[str, Any] = {}
        handles = []
        for name, mapped in part:
            handles.append(ref_layers[name].register_forward_hook(_keeper(seen_ref, name, with_inputs=True)))
            handles.append(var_layers[mapped].register_forward_hook(_keeper(seen_var, name, with_inputs=False)))
        try:
            for feeds in _batches(inputs, batch):
                seen_ref.clear()
                seen_var.clear()
                call(reference, feeds)
                call(variant, feeds)
                for name, mapped in part:
                    if name not in seen_ref or name not in seen_var:
                        continue
                    (args, r), v = seen_ref[name], seen_var[name]
                    if r.shape != v.shape:
                        mismatched.add(name)
                        continue
                    sums[name].add(v.numpy(), r.numpy())
                    try:
                        with torch.inference_mode():
                            own = _tensor(var_layers[mapped](*_like(args, var_layers[mapped])))
                        sums[name].add_own(own.numpy(), r.numpy())
                    except (RuntimeError, TypeError, ValueError, NotImplementedError):
                        sums[name].own_failed = True  # e.g. a statically quantized layer reads quantized inputs
        finally:
            for handle in handles:
                handle.remove()
    notes = []
    if mismatched:
        notes.append(f"{len(mismatched)} layer(s) not compared: their output's shape differs in the variant "
                     "(pruned channels)")
    errors = [LayerError(mapped, type(ref_layers[name]).__name__, sums[name].error, sums[name].own,
                         name if mapped != name else None)
              for name, mapped in pairs if name not in mismatched and (sums[name].ref or sums[name].diff)]
    return ranked(errors), notes
