"""Why a cell measured what it did, for people: the lines `python -m engine explain` prints and the Results page's
"Why?" panel, both from the result's `diagnostics` (engine/diagnostics.py, engine/measure/profile.py)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from engine.results import CellResult

# Layers listed by `explain` (the result keeps up to engine.diagnostics.MAX_LAYER_ERRORS).
LISTED_LAYERS = 10


def explain_lines(row: CellResult, environment: Any) -> list[str]:
    """A cell's diagnostics for people: what it is, how it ended, the hardware's verdict, quantization's coverage."""
    lines = [f"cell {row.cell}: {row.variant} · {row.runtime} · batch {row.batch_size} — {row.status}"]
    if not row.ok:
        return [*lines, f"  {row.error or 'no reason recorded'}"]
    if row.latency_ms is not None and row.latency_ms.p50 is not None:
        speed = f"  p50 {row.latency_ms.p50:.3f} ms"
        if row.speedup_vs_baseline is not None:
            speed += f", {row.speedup_vs_baseline:.2f}× vs cell {row.baseline_cell} ({row.speedup_method})"
        lines.append(speed)
    cpu = (environment or {}).get("cpu_capabilities") if isinstance(environment, dict) else None
    if cpu:
        lines.append(f"  machine: int8 via {cpu.get('int8')}; fp16 {cpu.get('fp16')}; bf16 {cpu.get('bf16')}")
    if row.diagnostics is None:
        return [*lines, "  no diagnostics: measured before Paretoscope recorded them; rerun the cell to get them"]
    lines.append(f"  hardware: {row.diagnostics.get('hardware') or 'fp32: nothing to say about number formats'}")
    op_types = row.diagnostics.get("op_types")
    if op_types:
        shares = ", ".join(f"{op} {share:.0%}" for op, share in list(op_types.items())[:6])
        lines.append(f"  time by op type: {shares} (profiled after the timing, "
                     f"{row.diagnostics.get('profile_overhead_ms', 0):.0f} ms)")
        for op in row.diagnostics.get("top_ops") or []:
            lines.append(f"    {op['share']:>4.0%}  {op['ms']:.4f} ms  {op['op_type']} on {op['where']}: {op['name']}")
    elif row.diagnostics.get("profile_error"):
        lines.append(f"  no per-op times: {row.diagnostics['profile_error']}")
    coverage = row.diagnostics.get("quantization")
    if coverage:
        quantized, left = coverage.get("quantized") or {}, coverage.get("float") or {}
        parts = [f"{op} {quantized.get(op, 0)} of {quantized.get(op, 0) + left.get(op, 0)} int8" for op in quantized]
        lines.append("  quantization: " + ("; ".join(parts) or "no compute op found"))
        if coverage.get("float_nodes"):
            lines.append("  left in float: " + ", ".join(coverage["float_nodes"]))
        if coverage.get("quantize_nodes") is not None:
            lines.append(f"  quantize / dequantize nodes: {coverage['quantize_nodes']} / "
                         f"{coverage['dequantize_nodes']}")
        if coverage.get("unfused_qdq_nodes") is not None:
            lines.append(f"  quantize / dequantize nodes left unfused after the runtime's fusions: "
                         f"{coverage['unfused_qdq_nodes']}")
    errors = row.diagnostics.get("layer_errors")
    if errors:
        compare = row.diagnostics.get("layer_compare") or {}
        lines.append(f"  layer errors against fp32 ({compare.get('samples')} samples, {compare.get('compared')} "
                     "layers; own = what the layer adds, reaching = every earlier error included), worst first:")
        for error in errors[:LISTED_LAYERS]:
            lines.append(f"    own {_share(error['own'])}  reaching {_share(error['error'])}  "
                         f"{error['op_type']} {error['layer']}")
        lines.extend(f"  {note}" for note in compare.get("notes") or [])
    elif row.diagnostics.get("layer_errors_error"):
        lines.append(f"  no layer errors: {row.diagnostics['layer_errors_error']}")
    return lines


def _share(value: float | None) -> str:
    return "    -" if value is None else f"{value:>6.1%}"


def why_panel(row: CellResult, environment: Any) -> None:
    """The Results page's "Why?" panel for one cell: the hardware's verdict, where the time goes, quantization's
    coverage. Draws with Streamlit; every number is the result's own."""
    import streamlit as st

    diagnostics = row.diagnostics
    if diagnostics is None:
        st.info("No diagnostics: this cell was measured before Paretoscope recorded them. Rerun it to get them.")
        return
    cpu = environment.get("cpu_capabilities") if isinstance(environment, dict) else None
    if cpu:
        st.caption(f"This machine: int8 via {cpu.get('int8')}; fp16 {cpu.get('fp16')}; bf16 {cpu.get('bf16')}.")
    if diagnostics.get("hardware"):
        st.info(diagnostics["hardware"], icon=":material/memory:")
    op_types = diagnostics.get("op_types")
    if op_types:
        st.markdown(f"**Where the time goes** (profiled after the timing, {diagnostics.get('profile_runs')} calls, "
                    f"{diagnostics.get('profile_overhead_ms', 0):.0f} ms)")
        st.dataframe(pd.DataFrame({"op type": list(op_types), "share": list(op_types.values())}), hide_index=True,
                     column_config={"share": st.column_config.ProgressColumn("share of time", min_value=0,
                                                                             max_value=1, format="percent")})
        top = pd.DataFrame(diagnostics.get("top_ops") or [])
        if not top.empty:
            st.dataframe(top.rename(columns={"ms": "ms per call", "where": "ran on"}), hide_index=True,
                         column_config={"share": st.column_config.NumberColumn("share", format="percent")})
    elif diagnostics.get("profile_error"):
        st.caption(f"No per-op times: {diagnostics['profile_error']}")
    coverage = diagnostics.get("quantization")
    if coverage:
        quantized, left = coverage.get("quantized") or {}, coverage.get("float") or {}
        st.markdown("**What quantization covered**")
        st.dataframe(pd.DataFrame([{"op": op, "int8": quantized.get(op, 0), "float": left.get(op, 0)}
                                   for op in quantized]), hide_index=True)
        if coverage.get("float_nodes"):
            st.caption("Left in float: " + ", ".join(coverage["float_nodes"]))
        if coverage.get("qdq_share") is not None:
            unfused = coverage.get("unfused_qdq_nodes")
            count = f" ({unfused})" if unfused is not None else ""
            st.caption(f"Quantize / dequantize nodes the runtime did not fuse{count}: {coverage['qdq_share']:.0%} "
                       "of the time.")
    layer_table(diagnostics)


def layer_table(diagnostics: dict[str, Any]) -> None:
    """The layers that lost accuracy, worst first (the diagnostics' `layer_errors`)."""
    import streamlit as st

    errors = diagnostics.get("layer_errors")
    if not errors:
        if diagnostics.get("layer_errors_error"):
            st.caption(f"No layer errors: {diagnostics['layer_errors_error']}")
        return
    compare = diagnostics.get("layer_compare") or {}
    st.markdown(f"**Which layers lost accuracy** (against fp32 on {compare.get('samples')} evaluation samples, "
                f"{compare.get('compared')} layers compared, {compare.get('ms', 0):.0f} ms)")
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(pd.DataFrame(errors).rename(columns={"op_type": "op", "own": "own error", "error": "reaching it"}),
                 hide_index=True, column_config={"own error": percent, "reaching it": percent})
    st.caption("Own error: what the layer adds itself. Reaching it: its output's error with every earlier "
               "layer's included. " + " ".join(compare.get("notes") or []))
