"""int8-weight-only: int8 weights, float activations (torch Linear layers), through torchao when it is installed.

Weight-only int8 is what decoding wants: each generated token reads every weight once, so halving their bytes is
the speedup. No library installed by default offers it on a CPU (torchao and optimum-quanto are optional), and
Paretoscope writes no kernels of its own: without torchao the cell is a row saying so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from engine.errors import Unavailable
from engine.optimizations.base import OptConfig, implementation, register
from engine.variants import BuildContext

MISSING = ("int8-weight-only needs torchao (its Int8WeightOnlyConfig), which is not installed: pip install torchao "
           "(optimum-quanto would be the other maintained path; neither is in requirements.txt)")


@dataclass(frozen=True)
class Int8WeightOnlyConfig(OptConfig):
    pass


register("int8-weight-only", stage="format", config=Int8WeightOnlyConfig, formats=("torch",),
         summary="int8 weights, float activations (torch Linear, through torchao when installed)")


def missing_reason() -> str | None:
    """Why the pass cannot run here (None: torchao is installed), without importing it."""
    return None if importlib.util.find_spec("torchao") is not None else MISSING


@implementation("int8-weight-only", "torch")
def int8_weight_only_torch(module: Any, config: Int8WeightOnlyConfig, ctx: BuildContext) -> Any:
    reason = missing_reason()
    if reason is not None:
        raise Unavailable(reason)
    from torchao.quantization import Int8WeightOnlyConfig as AoConfig
    from torchao.quantization import quantize_

    quantize_(module, AoConfig())
    ctx.notes.append("int8-weight-only quantized the Linear layers' weights to int8 (torchao), activations float")
    return module
