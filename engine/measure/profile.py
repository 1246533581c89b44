"""Where a cell's time goes: per-op times from its runtime's own profiler, summed into the ops holding most of
the time and the share of each op type. Run after the cell's timing, never during it.

A runtime's profiler (ONNX Runtime's, OpenVINO's performance counters, torch.profiler) yields OpTime records;
this module only aggregates them, so every runtime is summarized alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

# Ops listed by name, at most; every op still counts in the per-type shares.
TOP_OPS = 10
# The profiled run: at least MIN_RUNS calls and about TARGET_S seconds, at most MAX_RUNS calls.
MIN_RUNS, MAX_RUNS, TARGET_S = 3, 50, 0.25
# Quantize / dequantize ops as runtimes name them when they run on their own (OpenVINO: FakeQuantize)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "FakeQuantize")


@dataclass(frozen=True)
class OpTime:
    """One op's time in one profiled call: its name in the graph, its type, where it ran (provider, kernel)."""

    name: str
    op_type: str
    where: str
    ms: float


def profile_runs(p50_ms: float) -> int:
    """How many calls the profiled run makes for a cell whose median call takes `p50_ms`."""
    if p50_ms <= 0:
        return MIN_RUNS
    return max(MIN_RUNS, min(MAX_RUNS, int(TARGET_S * 1e3 / p50_ms)))


def summarize(ops: list[OpTime], runs: int) -> dict[str, Any]:
    """`top_ops` (name, op type, where, ms per call, share) and `op_types` (share of the time per op type),
    from every op time of `runs` profiled calls."""
    per_node: dict[tuple[str, str, str], float] = defaultdict(float)
    for op in ops:
        per_node[(op.name, op.op_type, op.where)] += op.ms
    total = sum(per_node.values())
    if total <= 0:
        return {"top_ops": [], "op_types": {}, "profiled_ms": 0.0, "unfused_qdq_nodes": 0}
    ranked = sorted(per_node.items(), key=lambda item: item[1], reverse=True)
    top = [{"name": name, "op_type": op_type, "where": where, "ms": ms / runs, "share": ms / total}
           for (name, op_type, where), ms in ranked[:TOP_OPS]]
    by_type: dict[str, float] = defaultdict(float)
    for (_, op_type, _), ms in per_node.items():
        by_type[op_type] += ms
    op_types = {op_type: ms / total for op_type, ms in sorted(by_type.items(), key=lambda item: item[1],
                                                               reverse=True)}
    # the runtime's profile lists the graph as it runs, after its fusions: a Q/DQ node still there was not fused
    unfused = len({name for name, op_type, _ in per_node if op_type in QDQ_OPS})
    return {"top_ops": top, "op_types": op_types, "profiled_ms": total / runs, "unfused_qdq_nodes": unfused}


def qdq_share(op_types: dict[str, float]) -> float:
    """The share of the profiled time spent quantizing and dequantizing (Q/DQ nodes the runtime did not fuse)."""
    return sum(op_types.get(op, 0.0) for op in QDQ_OPS)
