"""Weight-only quantization for decoding (torch Linear layers, through torchao): int8 weights on CPU and GPU, int4
weights on CUDA GPUs.

Weight-only is what decoding wants: each generated token reads every weight once, so fewer weight bytes is the
speedup; activations stay float. torchao (requirements.txt) is the maintained library: its int8 weight-only path
runs on the CPU, its int4 path (tile-packed, bfloat16) needs a CUDA device here — its CPU int4 layouts need the
`mslk` kernels package, which is not installed. Paretoscope writes no kernels of its own: without torchao, or on a
device the path does not support, the cell is a row saying so.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from engine.config import BadValue
from engine.errors import Unavailable
from engine.optimizations.base import OptConfig, implementation, register
from engine.variants import BuildContext

MISSING = ("{step} needs torchao (requirements.txt), which is not installed here: pip install torchao==0.18.0")


@dataclass(frozen=True)
class Int8WeightOnlyConfig(OptConfig):
    pass


@dataclass(frozen=True)
class Int4WeightOnlyConfig(OptConfig):
    # weights quantized in groups of this many input channels, one scale and zero point per group
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.group_size not in (32, 64, 128, 256):
            raise BadValue("group_size", self.group_size, "32, 64, 128 or 256")


register("int8-weight-only", stage="format", config=Int8WeightOnlyConfig, formats=("torch",),
         summary="int8 weights, float activations (torch Linear, torchao)")
register("int4-weight-only", stage="format", config=Int4WeightOnlyConfig, formats=("torch",),
         summary="int4 weights in groups, bfloat16 activations (torch Linear on CUDA, torchao)",
         torch_devices=("cuda",))


def missing_reason(step: str = "int8-weight-only") -> str | None:
    """Why the pass cannot run here (None: torchao is installed), without importing it."""
    return None if importlib.util.find_spec("torchao") is not None else MISSING.format(step=step)


def _torchao_quantization(step: str) -> Any:
    reason = missing_reason(step)
    if reason is not None:
        raise Unavailable(reason)
    # torchao says at import which of its CUDA kernel libraries did not load; on a CPU that is no news
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torchao.quantization

    return torchao.quantization


@implementation("int8-weight-only", "torch")
def int8_weight_only_torch(module: Any, config: Int8WeightOnlyConfig, ctx: BuildContext) -> Any:
    ao = _torchao_quantization("int8-weight-only")
    ao.quantize_(module, ao.Int8WeightOnlyConfig())
    ctx.notes.append("int8-weight-only quantized the Linear layers' weights to int8 (torchao), activations float")
    return module


@implementation("int4-weight-only", "torch")
def int4_weight_only_torch(module: Any, config: Int4WeightOnlyConfig, ctx: BuildContext) -> Any:
    import torch

    ao = _torchao_quantization("int4-weight-only")
    # the tile-packed int4 kernels pack on the cell's CUDA device and take bfloat16 activations
    module = module.to(device=ctx.gpu or "cuda", dtype=torch.bfloat16)
    ao.quantize_(module, ao.Int4WeightOnlyConfig(group_size=config.group_size,
                                                int4_packing_format="tile_packed_to_4d"))
    ctx.notes.append(f"int4-weight-only quantized the Linear layers' weights to int4 in groups of "
                     f"{config.group_size} (torchao, tile-packed), bfloat16 activations")
    return module
