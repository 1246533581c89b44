"""int8 quantization: dynamic (ONNX Runtime and torch) and static QDQ with calibration (ONNX)."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import NotApplicable
from engine.optimizations.base import LARGE_ONNX_BYTES, OptConfig, implementation, register

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

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError("ops must name at least one ONNX op type, e.g. ops=MatMul")
        _check_names("ops", self.ops)
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
def int8_dynamic_onnx(src: Path, dst: Path, config: Int8DynamicConfig, ctx: Any) -> None:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="quant-", dir=dst.parent) as scratch:
        pre = preprocess(src, Path(scratch), ctx.notes)
        quantize_dynamic(
            str(pre), str(dst), op_types_to_quantize=list(config.ops), per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=_quant_type(config.weight_type),
            use_external_data_format=is_large(pre),
        )
    _count_quantized(dst)


@implementation("int8-dynamic", "torch")
def int8_dynamic_torch(module: Any, config: Int8DynamicConfig, ctx: Any) -> Any:
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
    quantized = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear: qconfig}, dtype=torch.qint8,
                                                       inplace=False)
    scheme = "per-channel" if config.per_channel else "per-tensor"
    ctx.notes.append(f"int8-dynamic quantized {len(linears)} Linear layers (torch), {scheme} int8 weights")
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
def int8_static_onnx(src: Path, dst: Path, config: Int8StaticConfig, ctx: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="quant-", dir=dst.parent) as scratch:
        _int8_static(preprocess(src, Path(scratch), ctx.notes), dst, config, ctx, Path(scratch))
    _count_quantized(dst)


def _int8_static(pre: Path, dst: Path, config: Int8StaticConfig, ctx: Any, scratch: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    arrays = ctx.calibration(config.samples)
    fixed = ctx.spec.fixed_batch
    reader = _reader(arrays, fixed or 8)
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
    n = next(iter(arrays.values())).shape[0]
    ctx.notes.append(f"int8-static calibrated on {n} samples ({config.method}, from {ctx.calibration_source})")
    ranges = None
    if config.method == "entropy":
        ranges = _entropy_ranges(pre, reader, scratch, large)
        reader.rewind()
    quantize_static(
        str(pre), str(dst), calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops, per_channel=config.per_channel, reduce_range=config.reduce_range,
        activation_type=_quant_type(config.activation_type), weight_type=_quant_type("int8"),
        nodes_to_exclude=list(config.exclude) or None, calibrate_method=method, extra_options=extra,
        use_external_data_format=large, calibration_cache_path=str(ranges) if ranges else None,
    )
    if inputs_only is not None:
        _float_readers_read_float(dst, set(inputs_only), set(config.exclude))


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


def _entropy_ranges(model: Path, reader: Any, scratch: Path, large: bool) -> Path:
    """Entropy (KL) calibration ranges of every tensor, saved where quantize_static reads a calibration cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model, None, augmented_model_path=str(scratch / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy, use_external_data_format=large,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    path = scratch / "ranges.json"
    save_tensors_data(calibrator.compute_data(), path)
    return path


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
