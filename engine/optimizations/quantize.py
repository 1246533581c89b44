"""int8 quantization: dynamic (ONNX Runtime and torch) and static QDQ with calibration (ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import NotApplicable
from engine.optimizations.base import OptConfig, implementation, register

# Dynamic quantization rewrites MatMul/Attention only by default: ONNX Runtime's CPU ConvInteger
# has no int8-weight kernel, and quantizing embeddings (Gather) costs accuracy for little speed.
DEFAULT_DYNAMIC_OPS = ("MatMul", "Attention")


@dataclass(frozen=True)
class Int8DynamicConfig(OptConfig):
    per_channel: bool = True
    reduce_range: bool = False
    ops: tuple[str, ...] = DEFAULT_DYNAMIC_OPS
    weight_type: Literal["int8", "uint8"] = "int8"

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError("ops must name at least one ONNX op type, e.g. ops=MatMul")
        if self.weight_type not in ("int8", "uint8"):
            raise ValueError(f"weight_type={self.weight_type} is not int8 or uint8")


@dataclass(frozen=True)
class Int8StaticConfig(OptConfig):
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    samples: int = 128
    activation_type: Literal["uint8", "int8"] = "uint8"
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"method={self.method} is not minmax, entropy or percentile")
        if not 1 <= self.samples <= 100_000:
            raise ValueError(f"samples={self.samples} must be between 1 and 100000")
        if not 90.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile={self.percentile} must be in [90, 100)")


register("int8-dynamic", stage="format", config=Int8DynamicConfig, formats=("onnx", "torch"),
         summary="int8 weights, activations quantized at run time (MatMul/Linear)")
register("int8-static", stage="format", config=Int8StaticConfig, formats=("onnx",),
         summary="int8 weights and activations (QDQ) calibrated on sample data")


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    large = src.stat().st_size > 1_500_000_000
    try:
        quant_pre_process(str(src), str(dst), save_as_external_data=large)
    except Exception as exc:  # noqa: BLE001 - symbolic shape inference fails on many graphs; retry without it
        notes.append(f"quantization pre-processing without symbolic shape inference ({type(exc).__name__})")
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=large)
    return dst


@implementation("int8-dynamic", "onnx")
def int8_dynamic_onnx(src: Path, dst: Path, config: Int8DynamicConfig, ctx: Any) -> None:
    from onnxruntime.quantization import quantize_dynamic

    pre = preprocess(src, dst.with_name("preprocessed.onnx"), ctx.notes)
    quantize_dynamic(
        str(pre), str(dst), op_types_to_quantize=list(config.ops), per_channel=config.per_channel,
        reduce_range=config.reduce_range, weight_type=_quant_type(config.weight_type),
        use_external_data_format=pre.stat().st_size > 1_500_000_000,
    )
    _count_quantized(dst, ctx)


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
    dtype = torch.qint8 if config.weight_type == "int8" else torch.quint8
    quantized = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=dtype, inplace=False)
    ctx.notes.append(f"int8-dynamic quantized {len(linears)} Linear layers (torch)")
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
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    pre = preprocess(src, dst.with_name("preprocessed.onnx"), ctx.notes)
    arrays = ctx.calibration(config.samples)
    fixed = ctx.spec.fixed_batch
    reader = _reader(arrays, fixed or 8)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    extra: dict[str, Any] = {}
    if config.method == "percentile":
        extra["CalibPercentile"] = config.percentile
    n = next(iter(arrays.values())).shape[0]
    ctx.notes.append(f"int8-static calibrated on {n} samples ({config.method}, from {ctx.calibration_source})")
    quantize_static(
        str(pre), str(dst), calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel, activation_type=_quant_type(config.activation_type),
        weight_type=_quant_type("int8"), calibrate_method=method, extra_options=extra,
        use_external_data_format=pre.stat().st_size > 1_500_000_000,
    )
    _count_quantized(dst, ctx)


def _count_quantized(path: Path, ctx: Any) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    quantized = sum(op in ("DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul",
                           "QLinearConv", "QLinearMatMul", "ConvInteger") for op in ops)
    if quantized == 0:
        raise NotApplicable("the quantizer found no operator it could quantize in this model")
