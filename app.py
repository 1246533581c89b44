"""Paretoscope dashboard (first cut): lists the studies the CLI has run and shows their results.

The full multi-page dashboard (upload, study builder, Pareto charts) builds on this.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.paths import data_dir
from engine.study import list_studies

st.set_page_config(page_title="Paretoscope", layout="wide")
st.title("Paretoscope")
st.write(
    "Which optimized variant of your model, on which runtime, is fastest for the accuracy you can afford? "
    "Paretoscope builds int8/fp16 variants, runs them on PyTorch, TorchScript, ONNX Runtime and OpenVINO, "
    "and measures latency, memory and fidelity with one honest method."
)


@st.cache_data(ttl=5)
def _studies(folder: str) -> list[dict]:  # type: ignore[type-arg]
    return list_studies()  # keyed by the data folder so a changed PARETOSCOPE_DATA_DIR never shows stale rows


studies = _studies(str(data_dir()))
st.caption(f"Data folder: `{data_dir()}`")
if not studies:
    st.info("No studies yet. Run the bundled demo from a terminal: `.venv/bin/python -m engine bench demo`")
    st.stop()

overview = pd.DataFrame([
    {"study": s["study"]["id"], "name": s["study"]["name"], "cells": len(s["results"]),
     "ok": sum(r["status"] == "ok" for r in s["results"]), "created": s["study"]["created_at"]}
    for s in studies
])
st.subheader("Studies")
st.dataframe(overview, hide_index=True, width="stretch")

choice = st.selectbox("Study", [s["study"]["id"] for s in studies],
                      format_func=lambda sid: next(s["study"]["name"] for s in studies if s["study"]["id"] == sid))
study = next(s for s in studies if s["study"]["id"] == choice)
rows = []
for r in study["results"]:
    lat = r.get("latency_ms") or {}
    fid = (r.get("accuracy") or {}).get("fidelity") or {}
    task = (r.get("accuracy") or {}).get("task") or {}
    rows.append({
        "variant": r["variant"], "runtime": r["runtime"], "batch": r["batch_size"], "status": r["status"],
        "p50 ms": lat.get("p50"), "p99 ms": lat.get("p99"), "items/s": r.get("throughput_per_s"),
        "speedup": r.get("speedup_vs_baseline"), "peak MB": r.get("peak_host_mb"),
        "size MB": r.get("model_size_mb"), "cosine": fid.get("cosine"), "top-1": task.get("value"),
        "error / notes": r.get("error") or "; ".join(r.get("notes") or []),
    })
st.subheader(study["study"]["name"])
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
env = study["environment"]
st.caption(f"{env['cpu']} · {env['cores_logical']} cores · threads {env['threads']} · "
           f"torch {env['libraries'].get('torch')} · onnxruntime {env['libraries'].get('onnxruntime')}")
