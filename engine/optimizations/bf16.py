"""bf16: torch weights and compute in bfloat16, on CUDA devices (Ampere and newer run it natively)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.optimizations.base import OptConfig, implementation, register
from engine.variants import BuildContext


@dataclass(frozen=True)
class Bf16Config(OptConfig):
    pass


register("bf16", stage="format", config=Bf16Config, formats=("torch",),
         summary="bfloat16 weights and compute (torch on CUDA)", torch_devices=("cuda",))


@implementation("bf16", "torch")
def bf16_torch(module: Any, config: Bf16Config, ctx: BuildContext) -> Any:
    import torch

    return module.to(torch.bfloat16)
