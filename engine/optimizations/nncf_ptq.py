"""int8 post-training quantization by NNCF (Intel's toolkit) on ONNX: a QDQ model with SmoothQuant for transformers."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.errors import NotApplicable, Unavailable, UserError
from engine.optimizations.base import LARGE_ONNX_BYTES, OptConfig, implementation, register
from engine.variants import BuildContext

# NNCF's own default SmoothQuant alpha for MatMuls (AdvancedSmoothQuantParameters().matmul in nncf 3.4). On the
# pretrained all-MiniLM-L6-v2 it gave cosine 0.996 to fp32; SmoothQuant off gave 0.987 (issue #13's research).
NNCF_SMOOTH_QUANT = 0.95
SMOOTH_QUANT_OFF = -1.0
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_INSTALL = "pip install nncf==3.4.0 (see requirements.txt)"


@dataclass(frozen=True)
class Int8NncfConfig(OptConfig):
    preset: Literal["mixed", "performance"] = "mixed"
    # transformer: NNCF's transformer rules (SmoothQuant, float residual adds and normalizations). Without them a
    # pretrained encoder falls to cosine 0.44. auto: transformer when the graph has MatMul and no convolution.
    model_type: Literal["auto", "transformer", "none"] = "auto"
    # SmoothQuant's alpha for MatMuls, in [0, 1]; -1 turns it off (transformers only: NNCF applies it to no other
    # model type). Off is faster on ONNX Runtime, whose integer MatMul fusion the smoothing Mul nodes block.
    smooth_quant: float = NNCF_SMOOTH_QUANT
    samples: int = 128
    # node names kept in float, joined with '|' on the command line
    ignored: tuple[str, ...] = ()
    # NNCF's fast bias correction; false runs its full BiasCorrection (slower to build)
    fast_bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.preset not in ("mixed", "performance"):
            raise ValueError(f"preset={self.preset} is not mixed or performance")
        if self.model_type not in ("auto", "transformer", "none"):
            raise ValueError(f"model_type={self.model_type} is not auto, transformer or none")
        alpha = self.smooth_quant
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not (
                alpha == SMOOTH_QUANT_OFF or 0.0 <= alpha <= 1.0):
            raise ValueError(f"smooth_quant={alpha} must be in [0, 1], or -1 to turn SmoothQuant off")
        if not 1 <= self.samples <= 100_000:
            raise ValueError(f"samples={self.samples} must be between 1 and 100000")
        for name in self.ignored:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ValueError(f"ignored={name!r} is not an ONNX node name (no empty names, no surrounding spaces)")


register("int8-nncf", stage="format", config=Int8NncfConfig, formats=("onnx",),
         summary="int8 QDQ by NNCF post-training quantization (SmoothQuant for transformers), calibrated")


def nncf_available() -> tuple[bool, str | None]:
    """(True, None) or (False, why), without importing nncf."""
    if importlib.util.find_spec("nncf") is None:
        return False, f"int8-nncf needs the Python package 'nncf', which is not installed: {_INSTALL}"
    return True, None


def is_transformer(model: Any) -> bool:
    """auto's choice: a graph with MatMul and no convolution (encoders, decoders, MLPs over sequences)."""
    ops = {node.op_type for node in model.graph.node}
    return "MatMul" in ops and not ops & _CONV_OPS


def calibration_items(arrays: dict[str, np.ndarray], fixed_batch: int | None) -> list[dict[str, np.ndarray]]:
    """The calibration samples as NNCF's dataset items: one sample each, or the model's fixed batch (the last
    batch filled from the first samples when they do not divide evenly)."""
    n = next(iter(arrays.values())).shape[0]
    size = fixed_batch or 1
    count = -(-n // size)
    return [{k: np.take(v, np.arange(i * size, (i + 1) * size) % n, axis=0) for k, v in arrays.items()}
            for i in range(count)]


@implementation("int8-nncf", "onnx")
def int8_nncf_onnx(src: Path, dst: Path, config: Int8NncfConfig, ctx: BuildContext) -> None:
    ok, why = nncf_available()
    if not ok:
        raise Unavailable(why)
    import nncf
    import onnx
    from onnx.external_data_helper import uses_external_data

    # weights stay on disk while NNCF reads the graph; a model with external data is handed its folder
    model = onnx.load(str(src), load_external_data=False)
    external = any(uses_external_data(t) for t in model.graph.initializer)
    unknown = sorted(set(config.ignored) - {node.name for node in model.graph.node})
    if unknown:
        raise UserError(f"int8-nncf: ignored names {unknown} are not nodes of this model (ONNX node names)")
    transformer = is_transformer(model) if config.model_type == "auto" else config.model_type == "transformer"
    arrays = ctx.calibration(config.samples)
    items = calibration_items(arrays, ctx.spec.fixed_batch)
    quantized = _quantize(model, items, config, transformer, str(src.parent.resolve()) if external else None)
    count = sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    if count == 0:
        raise NotApplicable("NNCF found no operator it could quantize in this model")
    large = quantized.ByteSize() > LARGE_ONNX_BYTES  # in memory, the weights are all in the proto
    onnx.save(quantized, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    alpha = "off" if not transformer or config.smooth_quant == SMOOTH_QUANT_OFF else f"alpha {config.smooth_quant}"
    n = next(iter(arrays.values())).shape[0]
    ctx.notes.append(
        f"int8-nncf: NNCF {nncf.__version__}, {config.preset} preset, model type "
        f"{'transformer' if transformer else 'default'}{' (auto)' if config.model_type == 'auto' else ''}, "
        f"SmoothQuant {alpha}, calibrated on {n} samples from {ctx.calibration_source}; "
        f"{count} QuantizeLinear nodes"
    )


def _quantize(model: Any, items: list[dict[str, np.ndarray]], config: Int8NncfConfig, transformer: bool,
              external_dir: str | None) -> Any:
    import nncf
    from nncf.onnx.quantization.backend_parameters import BackendParameters
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth_quant),
        backend_params={BackendParameters.EXTERNAL_DATA_DIR: external_dir} if external_dir else {},
    )
    preset = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    try:
        return nncf.quantize(
            model, nncf.Dataset(items), preset=preset[config.preset], subset_size=len(items),
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            fast_bias_correction=config.fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=list(config.ignored)) if config.ignored else None,
            advanced_parameters=advanced,
        )
    except nncf.ValidationError as exc:
        # NNCF checks the opset and the protobuf size before it starts
        raise NotApplicable(f"NNCF cannot quantize this model: {str(exc).splitlines()[0]}") from exc
