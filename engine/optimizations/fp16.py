"""fp16: ONNX float16 conversion keeping fp32 inputs/outputs; torch `.half()` on CUDA only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.optimizations.base import LARGE_ONNX_BYTES, OptConfig, implementation, register
from engine.variants import BuildContext


@dataclass(frozen=True)
class Fp16Config(OptConfig):
    keep_io_types: bool = True
    # ops left in fp32, joined with '|' on the command line (e.g. op_block_list=Resize|TopK)
    op_block_list: tuple[str, ...] = ()


register("fp16", stage="format", config=Fp16Config, formats=("onnx", "torch"),
         summary="float16 weights and compute", torch_devices=("cuda",))


@implementation("fp16", "onnx")
def fp16_onnx(src: Path, dst: Path, config: Fp16Config, ctx: BuildContext) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    blocked = list(DEFAULT_OP_BLOCK_LIST) + list(config.op_block_list)
    converted = convert_float_to_float16(model, keep_io_types=config.keep_io_types, op_block_list=blocked)
    large = converted.ByteSize() > LARGE_ONNX_BYTES  # in memory, the weights are all in the proto
    onnx.save(converted, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)


@implementation("fp16", "torch")
def fp16_torch(module: Any, config: Fp16Config, ctx: BuildContext) -> Any:
    # Only CUDA devices reach here (torch_devices): CPU half kernels are slow or missing.
    return module.half()
