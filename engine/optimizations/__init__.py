"""Optimizations: importing this package registers every optimization (no heavy imports)."""

from engine.optimizations import bf16, distill, export, fp16, nncf_ptq, prune, quantize  # noqa: F401  (registration)
from engine.optimizations import weight_only  # noqa: F401  (registration)
from engine.optimizations.base import REGISTRY, Chain, Step, parse_chain

__all__ = ["REGISTRY", "Chain", "Step", "parse_chain"]
