"""Paretoscope dashboard (first cut): lists the studies the CLI has run and shows their results.

The full multi-page dashboard (upload, study builder, Pareto charts) builds on this.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.paths import data_dir
from engine.worker import ensure_local_worker
from storage import queries as q
from storage.db import database_url, session

st.set_page_config(page_title="Paretoscope", layout="wide")
st.title("Paretoscope")
st.write(
    "Which optimized variant of your model, on which runtime, is fastest for the accuracy you can afford? "
    "Paretoscope builds int8/fp16 variants, runs them on PyTorch, TorchScript, ONNX Runtime and OpenVINO, "
    "and measures latency, memory and fidelity with one honest method."
)


@st.cache_data(ttl=5)
def _studies(url: str) -> pd.DataFrame:  # keyed by the database so a changed data folder never shows stale rows
    with session(write=False) as s:
        return q.list_studies(s)


@st.cache_data(ttl=5)
def _results(url: str, study_id: int) -> tuple[pd.DataFrame, dict]:  # type: ignore[type-arg]
    with session(write=False) as s:
        return q.results_frame(s, study_id), q.results_json(s, study_id)


@st.cache_resource
def _local_worker(url: str) -> int | None:
    """Once per dashboard process: make sure a worker runs the queued jobs."""
    return ensure_local_worker()


url = database_url()
_local_worker(url)
studies = _studies(url)
st.caption(f"Data folder: `{data_dir()}`")
if studies.empty:
    st.info("No studies yet. Run the bundled demo from a terminal: `.venv/bin/python -m engine bench demo`")
    st.stop()

st.subheader("Studies")
st.dataframe(studies, hide_index=True, width="stretch")
choice = st.selectbox("Study", list(studies["id"]),
                      format_func=lambda sid: f"#{sid} {studies.set_index('id').loc[sid, 'name']}")
frame, full = _results(url, int(choice))
st.subheader(full["study"]["name"])
st.dataframe(frame, hide_index=True, width="stretch")
env = full["environment"]
if isinstance(env, dict):
    st.caption(f"{env['cpu']} · {env['cores_logical']} cores · threads {env['threads']} · "
               f"torch {env['libraries'].get('torch')} · onnxruntime {env['libraries'].get('onnxruntime')}")
