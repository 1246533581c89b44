"""int8 quantization: dynamic (ONNX Runtime and torch) and static QDQ with calibration (ONNX)."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import NotApplicable
from engine.optimizations.base import LARGE_ONNX_BYTES, OptConfig, implementation, register
from engine.variants import BuildContext

# Dynamic quantization rewrites MatMul/Attention only by default: ONNX Runtime's CPU ConvInteger
# has no int8-weight kernel, and quantizing embeddings (Gather) costs accuracy for little speed.
DEFAULT_DYNAMIC_OPS = ("MatMul", "Attention")
# Static quantization with `ops` left empty picks by model. Without convolutions (transformers, MLPs)
# only the weight-carrying MatMul/Gemm are quantized: residual Adds, LayerNorm, Softmax and embedding
# Gathers stay float. They are where int8 loses a transformer's accuracy (outlier activations), and
# quantizing them adds Q/DQ pairs that cost more than they save. A BERT-class encoder (MiniLM-L6 shape)
# measured faster and closer to fp32 this way on both ONNX Runtime and OpenVINO. Conv nets instead get
# every op ONNX Runtime can quantize, so activations stay int8 from one layer to the next.
STATIC_TRANSFORMER_OPS = ("MatMul", "Gemm")
# Whenever the op types are a list (chosen so, or given as `ops`), int8 also stays where the integer kernels
# need it (quantize_outputs=False): the MatMul/Gemm inputs get a Q/DQ pair, their outputs do not, and an op left in
# float that reads the same tensor as a MatMul (the residual Add beside the LayerNorm -> MatMul) reads the
# float tensor, not its int8 round trip. A pretrained BERT's residual stream carries outlier channels
# (|x| ~ 200 in all-MiniLM-L6-v2, the rest within a few units) that one int8 scale cannot hold with the
# ordinary values. Measured on all-MiniLM-L6-v2 with English text (cosine to fp32, ONNX Runtime and
# OpenVINO alike): 0.84 with the outputs quantized, 0.981 without, 0.987 with the float readers rewired,
# at the same speed.
OUTPUT_OPS = ("MatMul", "Gemm")
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
# quantize_static builds its Entropy calibrator with 128 histogram bins and 128 quantized bins: that
# leaves one candidate threshold, the full range, so method=entropy would calibrate exactly like
# minmax. Entropy ranges are computed here with the usual 2048 bins (TensorRT's choice) instead.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128
# Accuracy-aware int8-static (max_drop): the cosine to fp32 is measured on this many calibration samples held
# out of the calibration (16-32 keep each trial's run short; fewer are held out when the data has fewer).
HOLDOUT_SAMPLES = 32
# ...and at most this fraction of the quantizable nodes stays float: past it int8 has lost most of its speed.
# On all-MiniLM-L6-v2 (English text), 5 of its 48 MatMuls in float reached cosine 0.99, 7 reached 0.995.
MAX_FLOAT_FRACTION = 0.25
# the nodes whose sensitivity is measured when the op types are chosen by model (weight-carrying ops)
SENSITIVITY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# batch of the calibration reader and of the held-out runs when the model does not fix one
CALIBRATION_BATCH = 8


def _check_names(field: str, values: tuple[str, ...]) -> None:
    for value in values:
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise ValueError(f"{field}={value!r} is not an ONNX name (no empty names, no surrounding spaces)")


@dataclass(frozen=True)
class Int8DynamicConfig(OptConfig):
    per_channel: bool = True
    reduce_range: bool = False
    ops: tuple[str, ...] = DEFAULT_DYNAMIC_OPS
    weight_type: Literal["int8", "uint8"] = "int8"
    # layers kept in float, joined with '|' on the command line: ONNX node names, or torch module names
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError("ops must name at least one ONNX op type, e.g. ops=MatMul")
        _check_names("ops", self.ops)
        _check_names("exclude", self.exclude)
        if self.weight_type not in ("int8", "uint8"):
            raise ValueError(f"weight_type={self.weight_type} is not int8 or uint8")


@dataclass(frozen=True)
class Int8StaticConfig(OptConfig):
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    samples: int = 128
    # uint8 activations are asymmetric: ONNX Runtime's fast x86 path (U8S8). int8 activations are
    # symmetric (zero point 0, the S8S8 recipe): OpenVINO runs those fastest.
    activation_type: Literal["uint8", "int8"] = "uint8"
    percentile: float = 99.999
    # op types to quantize; empty = chosen by model (see STATIC_TRANSFORMER_OPS)
    ops: tuple[str, ...] = ()
    # 7-bit weights: for x86 CPUs without VNNI, where U8S8 products can saturate
    reduce_range: bool = False
    # node names kept in float (sensitive layers), joined with '|' on the command line
    exclude: tuple[str, ...] = ()
    # true: MatMul/Gemm outputs are quantized too and float ops read the int8 round trip of a tensor they
    # share with a MatMul (the recipe before issue #13). Convolutional models whose ops are chosen by model
    # quantize every op, outputs included, whatever this says.
    quantize_outputs: bool = False
    # accuracy-aware mode: keep the most sensitive MatMul/Gemm/Conv nodes float until the cosine to fp32 on
    # held-out calibration samples is at least 1 - max_drop (see _keep_sensitive_float); 0 = off
    max_drop: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"method={self.method} is not minmax, entropy or percentile")
        if not 1 <= self.samples <= 100_000:
            raise ValueError(f"samples={self.samples} must be between 1 and 100000")
        if self.activation_type not in ("uint8", "int8"):
            raise ValueError(f"activation_type={self.activation_type} is not uint8 or int8")
        if not 90.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile={self.percentile} must be in [90, 100)")
        _check_names("ops", self.ops)
        _check_names("exclude", self.exclude)
        if not 0.0 <= self.max_drop < 1.0:  # NaN fails too
            raise ValueError(f"max_drop={self.max_drop} must be in (0, 1), e.g. 0.01 for cosine >= 0.99 (0: off)")

    @property
    def calibration_samples(self) -> int:
        """How many calibration inputs the pass reads: with max_drop, some more are held out to measure fidelity."""
        return self.samples + (HOLDOUT_SAMPLES if self.max_drop else 0)


register("int8-dynamic", stage="format", config=Int8DynamicConfig, formats=("onnx", "torch"),
         summary="int8 weights, activations quantized at run time (MatMul/Linear)")
register("int8-static", stage="format", config=Int8StaticConfig, formats=("onnx",),
         summary="int8 weights and activations (QDQ) calibrated on sample data")


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def is_large(onnx_path: Path) -> bool:
    """Whether a model needs external data: every model here sits in a folder of its own, so the folder's size
    counts the weights wherever they are (inside the .onnx or beside it)."""
    from engine.artifacts import folder_size

    return folder_size(onnx_path.parent) > LARGE_ONNX_BYTES


def preprocess(src: Path, scratch: Path, notes: list[str]) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimization), written into `scratch`
    (a folder the caller removes: the pre-processed model is never part of the variant)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    large = is_large(src)
    src, dst = src.resolve(), (scratch / "model" / "preprocessed.onnx").resolve()
    dst.parent.mkdir(parents=True)
    # When symbolic shape inference gives up it saves its partial model into the working directory
    # (sym_shape_infer_temp.onnx + a data file); run it where that litter is thrown away.
    litter = scratch / "cwd"
    litter.mkdir()
    with contextlib.chdir(litter):
        try:
            quant_pre_process(str(src), str(dst), save_as_external_data=large)
        except Exception as exc:  # noqa: BLE001 - symbolic shape inference fails on many graphs; retry without it
            notes.append(f"quantization pre-processing without symbolic shape inference ({type(exc).__name__})")
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=large)
    return dst


@implementation("int8-dynamic", "onnx")
def int8_dynamic_onnx(src: Path, dst: Path, config: Int8DynamicConfig, ctx: BuildContext) -> None:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="quant-", dir=dst.parent) as scratch:
        pre = preprocess(src, Path(scratch), ctx.notes)
        _check_excluded(pre, config.exclude, ctx.notes)
        quantize_dynamic(
            str(pre), str(dst), op_types_to_quantize=list(config.ops), per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=_quant_type(config.weight_type),
            nodes_to_exclude=list(config.exclude) or None, use_external_data_format=is_large(pre),
        )
    _count_quantized(dst)


@implementation("int8-dynamic", "torch")
def int8_dynamic_torch(module: Any, config: Int8DynamicConfig, ctx: BuildContext) -> Any:
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        raise NotApplicable("int8-dynamic cannot rewrite a TorchScript archive; use it on onnxruntime")
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise NotApplicable(
            "int8-dynamic found no nn.Linear modules to quantize (torch.export programs keep weights as "
            "graph constants); use it on onnxruntime"
        )
    if config.weight_type != "int8":
        raise NotApplicable("torch's dynamic quantized Linear takes int8 weights only; use weight_type=int8, "
                            "or weight_type=uint8 on onnxruntime")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    # one scale per output row: per-tensor weights lose a pretrained encoder's small rows (all-MiniLM-L6-v2:
    # cosine 0.91 per tensor, 0.96 per channel); torch's x86 kernel reduces activations to 7 bits either way
    qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    names = [name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    unknown = [name for name in config.exclude if name not in names]
    if unknown:
        raise NotApplicable(f"int8-dynamic exclude={'|'.join(unknown)}: no Linear layer of that name (the names "
                            f"are module names, e.g. {names[0]})")
    spec: dict[Any, Any] = ({name: qconfig for name in names if name not in config.exclude} if config.exclude
                            else {torch.nn.Linear: qconfig})
    quantized = torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, inplace=False)
    scheme = "per-channel" if config.per_channel else "per-tensor"
    kept = f", {len(config.exclude)} kept in float ({_names(list(config.exclude))})" if config.exclude else ""
    ctx.notes.append(f"int8-dynamic quantized {len(names) - len(config.exclude)} Linear layers (torch), {scheme} "
                     f"int8 weights{kept}")
    return quantized


def _reader(arrays: dict[str, Any], batch: int) -> Any:
    """A CalibrationDataReader feeding the calibration samples in small batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            n = next(iter(arrays.values())).shape[0]
            self._batches = [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]
            self._iter = iter(self._batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = iter(self._batches)

    return Reader()


@implementation("int8-static", "onnx")
def int8_static_onnx(src: Path, dst: Path, config: Int8StaticConfig, ctx: BuildContext) -> None:
    with tempfile.TemporaryDirectory(prefix="quant-", dir=dst.parent) as scratch:
        _int8_static(preprocess(src, Path(scratch), ctx.notes), dst, config, ctx, Path(scratch))
    _count_quantized(dst)


# quantize(target, float nodes, only): the recipe's quantize_static into `target` with these nodes left float
# (besides `exclude`), or with `only` that node quantized
Quantize = Callable[[Path, set[str], str | None], None]


def _check_excluded(pre: Path, exclude: tuple[str, ...], notes: list[str]) -> None:
    """Refuse `exclude` names that no node of the graph has: quantizing as if they were not given would hide it."""
    if not exclude:
        return
    import onnx

    names = {node.name for node in onnx.load(str(pre), load_external_data=False).graph.node}
    unknown = [name for name in exclude if name not in names]
    if unknown:
        raise NotApplicable(f"exclude={'|'.join(unknown)}: no node of the graph has that name (`python -m engine "
                            "explain` lists the layers' names)")
    notes.append(f"{len(exclude)} node(s) kept in float by exclude ({_names(list(exclude))})")


def _int8_static(pre: Path, dst: Path, config: Int8StaticConfig, ctx: BuildContext, scratch: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    _check_excluded(pre, config.exclude, ctx.notes)
    arrays = ctx.calibration(config.calibration_samples)
    held_out = None
    if config.max_drop:
        arrays, held_out = _hold_out(arrays, config.samples)
    batch = ctx.spec.fixed_batch or CALIBRATION_BATCH
    reader = _reader(arrays, batch)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    extra: dict[str, Any] = {}
    if config.method == "percentile":
        extra["CalibPercentile"] = config.percentile
    if config.activation_type == "int8":
        extra["ActivationSymmetric"] = True
    ops = _static_ops(pre, config, ctx.notes)
    # the op types to quantize when only their inputs get Q/DQ (see OUTPUT_OPS), else None
    inputs_only = ops if ops is not None and not config.quantize_outputs else None
    if inputs_only is not None:
        extra["OpTypesToExcludeOutputQuantization"] = list(OUTPUT_OPS)
        ctx.notes.append(f"int8-static quantized only the inputs of {'/'.join(inputs_only)}: their outputs, and "
                         "float ops reading the same tensors, stay float (quantize_outputs=true quantizes both)")
    large = is_large(pre)
    n = _count(arrays)
    ctx.notes.append(f"int8-static calibrated on {n} samples ({config.method}, from {ctx.calibration_source})")
    # the first quantize_static calibrates and saves the ranges here; every later call (the max_drop trials)
    # reads them instead of calibrating again
    ranges = scratch / "ranges.json"
    if config.method == "entropy":
        _entropy_ranges(pre, reader, scratch, ranges, large)

    def quantize(target: Path, float_nodes: set[str], only: str | None) -> None:
        excluded = set(config.exclude) | float_nodes
        quantize_static(
            str(pre), str(target), calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops, per_channel=config.per_channel, reduce_range=config.reduce_range,
            activation_type=_quant_type(config.activation_type), weight_type=_quant_type("int8"),
            nodes_to_quantize=[only] if only else None, nodes_to_exclude=sorted(excluded) or None,
            calibrate_method=method, extra_options=extra, use_external_data_format=large,
            calibration_cache_path=str(ranges),
        )
        if inputs_only is not None:
            _float_readers_read_float(target, set(inputs_only), excluded)

    quantize(dst, set(), None)
    if held_out is not None:
        _keep_sensitive_float(pre, dst, quantize, held_out, ops, config, ctx, scratch)


def _count(arrays: dict[str, Any]) -> int:
    return int(next(iter(arrays.values())).shape[0])


def _hold_out(arrays: dict[str, Any], samples: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibration inputs (at most `samples`) and, after them, the held-out ones that measure fidelity.

    HOLDOUT_SAMPLES are held out when the data has that many beyond `samples`; otherwise what is beyond them,
    at least a quarter of the data and one sample, so that a short calib split still calibrates on the rest.
    """
    n = _count(arrays)
    if n < 2:
        raise NotApplicable(f"int8-static max_drop needs at least 2 calibration samples (one to calibrate, one "
                            f"held out to measure fidelity); the calibration data has {n}")
    held = min(HOLDOUT_SAMPLES, max(n - samples, n // 4, 1))
    calibrate = min(samples, n - held)
    return {k: v[:calibrate] for k, v in arrays.items()}, {k: v[n - held:] for k, v in arrays.items()}


def _run(path: Path, inputs: dict[str, Any], batch: int) -> list[Any]:
    """Every output of the ONNX model at `path` on `inputs` (ONNX Runtime on the CPU), in batches of `batch`."""
    import numpy as np
    import onnxruntime as ort

    from engine.data import take_batch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = _count(inputs)
    chunks = []
    for start in range(0, n, batch):
        # a fixed batch size is filled by wrapping around, then trimmed
        outputs = session.run(None, take_batch(inputs, start, batch))
        chunks.append([np.asarray(o)[:min(batch, n - start)] for o in outputs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _candidates(path: Path, kinds: list[str], exclude: tuple[str, ...]) -> dict[str, str]:
    """The nodes whose sensitivity is measured, name to op type, in graph order: named nodes of these op
    types, less those excluded already."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    named = [(n.name, n.op_type) for n in nodes if n.op_type in kinds and n.name and n.name not in exclude]
    names = [name for name, _ in named]
    # quantize_static addresses nodes by name: a name shared by two nodes cannot be kept float alone
    return {name: op for name, op in named if names.count(name) == 1}


def _worst_cosine(fid: dict[str, Any]) -> float:
    """The fidelity the budget holds: the flat cosine, and the mean-pooled one of an encoder when lower;
    -1 for NaN outputs."""
    values = [fid["cosine"]] + ([fid["pooled_cosine"]] if fid.get("pooled_cosine") is not None else [])
    return -1.0 if any(math.isnan(v) for v in values) else float(min(values))


def _keep_sensitive_float(pre: Path, dst: Path, quantize: Quantize, held_out: dict[str, Any],
                          ops: list[str] | None, config: Int8StaticConfig, ctx: BuildContext, scratch: Path) -> None:
    """int8-static:max_drop=D: leave the nodes int8 hurts most in float until the cosine to fp32 on held-out
    samples is at least 1 - D.

    Each candidate is ranked by the error of the model with only that node quantized (with the ranges of the
    one calibration), then the worst are kept float one at a time, re-measuring, up to MAX_FLOAT_FRACTION of
    them. When even that misses the budget the variant keeps the best model found and says so: its measured
    fidelity is in the result either way, and a number is worth more than an n/a after the search.
    """
    from engine.data import attention_mask
    from engine.measure.accuracy import fidelity

    start = time.perf_counter()
    budget = 1.0 - config.max_drop
    batch = ctx.spec.fixed_batch or CALIBRATION_BATCH
    mask = attention_mask(ctx.spec, held_out)
    reference = _run(pre, held_out, batch)

    def measure(path: Path) -> dict[str, Any]:
        return fidelity(reference, _run(path, held_out, batch), mask)

    plain = best = measure(dst)
    # the quantized op types, or the weight-carrying ones when every op is quantized (a conv net)
    kinds = list(ops) if ops is not None else list(SENSITIVITY_OPS)
    candidates = _candidates(pre, kinds, config.exclude)
    kind = "/".join(k for k in kinds if k in candidates.values()) or "/".join(kinds)
    n = _count(held_out)
    label = f"int8-static:max_drop={config.max_drop}"
    record: dict[str, Any] = {"max_drop": config.max_drop, "held_out_samples": n, "candidates": len(candidates),
                              "plain_cosine": plain["cosine"], "plain_pooled_cosine": plain["pooled_cosine"]}
    float_nodes: list[str] = []
    ranked: list[tuple[str, float]] = []
    last_k = 0
    if _worst_cosine(plain) < budget and candidates:
        trial = scratch / "trial" / dst.name
        trial.parent.mkdir()
        others = set(candidates)
        errors: dict[str, float] = {}
        for i, node in enumerate(candidates):
            ctx.progress(f"int8-static: sensitivity of {node}", i / (2 * len(candidates)))
            quantize(trial, others - {node}, node)
            errors[node] = 1.0 - _worst_cosine(measure(trial))
        ranked = sorted(errors.items(), key=lambda item: item[1], reverse=True)  # stable: graph order on ties
        cap = _float_cap(len(candidates))
        best_k = 0
        while last_k < cap and _worst_cosine(best) < budget:
            last_k += 1
            ctx.progress(f"int8-static: {last_k} node(s) in float", 0.5 + last_k / (2 * cap))
            quantize(dst, {name for name, _ in ranked[:last_k]}, None)
            result = measure(dst)
            if _worst_cosine(result) > _worst_cosine(best):
                best, best_k = result, last_k
        float_nodes = [name for name, _ in ranked[:best_k]]
        if best_k != last_k:  # the last trial left another set in dst than the best one
            quantize(dst, set(float_nodes), None)
    met = _worst_cosine(best) >= budget
    record.update({
        "met": met, "cosine": best["cosine"], "pooled_cosine": best["pooled_cosine"], "float_nodes": float_nodes,
        "sensitivity": [{"node": name, "error": error} for name, error in ranked[:10]],
        "trials": len(ranked) + last_k, "search_s": time.perf_counter() - start,
    })
    ctx.details["int8-static"] = record
    # enough digits to show a difference as small as the budget
    digits = max(4, math.ceil(-math.log10(config.max_drop)) + 1)
    measured = (f"held-out cosine {_cosine_text(best, digits)} (plain int8 {_cosine_text(plain, digits)}) "
                f"on {n} samples")
    if not float_nodes and met:
        ctx.notes.append(f"{label}: the plain recipe met the budget ({measured}); no node kept in float")
    elif met:
        ctx.notes.append(f"{label} kept {len(float_nodes)} of {len(candidates)} {kind} in float "
                         f"({_names(float_nodes)}); {measured}")
    else:
        ctx.notes.append(f"{label} missed its budget (cosine >= 1 - {config.max_drop:g}): at most "
                         f"{_float_cap(len(candidates))} of {len(candidates)} {kind} may "
                         f"stay float; the variant keeps the best found, {len(float_nodes)} in float"
                         f"{f' ({_names(float_nodes)})' if float_nodes else ''}; {measured}")


def _float_cap(candidates: int) -> int:
    return max(1, int(candidates * MAX_FLOAT_FRACTION))


def _cosine_text(fid: dict[str, Any], digits: int) -> str:
    pooled = fid.get("pooled_cosine")
    return f"{fid['cosine']:.{digits}f}" + (f", pooled {pooled:.{digits}f}" if pooled is not None else "")


def _names(names: list[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _float_readers_read_float(path: Path, quantized_ops: set[str], excluded: set[str]) -> int:
    """Point every float op that reads a quantized activation's DequantizeLinear at the float tensor instead.

    quantize_static gives a tensor one Q/DQ pair and rewires all its readers to the pair's output, so the
    residual Add that shares the LayerNorm's output with the next MatMul adds the int8 round trip of it.
    Only the quantized ops (and their Q/DQ) need that; the others get the original tensor back. Returns how
    many inputs were rewired. The weights stay where they are (the model is read without external data).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    float_of: dict[str, str] = {}
    for node in graph.node:
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if (source is not None and source.op_type == "QuantizeLinear" and source.input[0] not in initializers
                and node.output[0] not in graph_outputs):
            float_of[node.output[0]] = source.input[0]
    rewired = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or (
                node.op_type in quantized_ops and node.name not in excluded):
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
                rewired += 1
    if not rewired:
        return 0
    # a pair whose every reader went back to float is dead: drop its DequantizeLinear, then its Q if unread
    read = _names_read(graph) | graph_outputs
    dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in float_of
            and n.output[0] not in read]
    for node in dead:
        graph.node.remove(node)
    read = _names_read(graph) | graph_outputs
    for name in dict.fromkeys(n.input[0] for n in dead if n.input[0] not in read):
        graph.node.remove(producers[name])
    onnx.save(model, str(path))
    return rewired


def _names_read(graph: Any) -> set[str]:
    """Every tensor name a node of the graph reads, inside If/Loop/Scan bodies too."""
    import onnx

    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _names_read(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for body in attr.graphs:
                    names |= _names_read(body)
    return names


def _entropy_ranges(model: Path, reader: Any, scratch: Path, path: Path, large: bool) -> None:
    """Entropy (KL) calibration ranges of every tensor, saved at `path`, where quantize_static reads a
    calibration cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model, None, augmented_model_path=str(scratch / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy, use_external_data_format=large,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), path)


def _static_ops(path: Path, config: Int8StaticConfig, notes: list[str]) -> list[str] | None:
    """The op types to quantize: the configured ones, or chosen by whether the model convolves."""
    if config.ops:
        return list(config.ops)
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(node.op_type in _CONV_OPS for node in model.graph.node):
        notes.append("int8-static quantized every op ONNX Runtime supports, outputs included (convolutional model)")
        return None
    notes.append("int8-static quantized MatMul/Gemm only; adds, normalizations and softmax stay float")
    return list(STATIC_TRANSFORMER_OPS)


def _count_quantized(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    quantized = sum(op in ("DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul",
                           "QLinearConv", "QLinearMatMul", "ConvInteger") for op in ops)
    if quantized == 0:
        raise NotApplicable("the quantizer found no operator it could quantize in this model")
