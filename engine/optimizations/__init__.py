"""Optimizations: importing this package registers every optimization (no heavy imports)."""

from engine.optimizations import export, fp16, quantize  # noqa: F401  (registration side effects)
from engine.optimizations.base import REGISTRY, Chain, Step, parse_chain

__all__ = ["REGISTRY", "Chain", "Step", "parse_chain"]
