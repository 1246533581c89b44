"""Home: what Paretoscope is, the demo on an empty database, recent studies."""

from __future__ import annotations

import streamlit as st

from pages import common

common.start_page()
st.title("Paretoscope")
st.markdown(
    "**Which optimized variant of your model, on which runtime, is fastest for the accuracy you can afford?** "
    "Paretoscope builds int8 / fp16 variants of the model you already have, runs each on PyTorch, TorchScript, "
    "ONNX Runtime and OpenVINO (and GPU runtimes where a GPU is present), and measures latency, memory and "
    "fidelity with one honest method, so the speed-accuracy trade-off is a chart, not a guess."
)

studies = common.studies(common.url())

if st.button("Run the demo", type="primary" if studies.empty else "secondary",
             help="A small CNN trained offline on scikit-learn's digits, on every CPU runtime at batch 1 and 32"):
    from engine.errors import UserError
    from engine.study import start_demo

    try:
        with st.spinner("Training the demo model on scikit-learn's digits (first time only)..."):
            study_id, _ = start_demo(created_by=common.current_user())
    except UserError as exc:  # the build failed, or a shared server's cap on unfinished studies per person
        st.error(f"error: {exc}")
        st.stop()
    common.clear()
    st.session_state["watch_study"] = study_id
    st.switch_page("pages/benchmark.py")


@st.fragment(run_every=2.0 if (studies["state"] == "running").any() else None)
def recent_studies() -> None:
    """Recent studies and the newest one's state; refreshed every 2 s while one runs (idle pages cost nothing)."""
    frame = common.studies(common.url())
    running = frame[frame["state"] == "running"]
    if len(running):
        first = running.iloc[-1]  # the oldest: the queue runs studies in order
        common.show_state(first)
        if st.button("Watch it", key="watch"):
            st.session_state["watch_study"] = int(first["id"])
            st.switch_page("pages/benchmark.py")
    else:
        common.show_state(frame.iloc[0])
    st.subheader("Recent studies")
    recent = frame.head(10).copy()
    recent["state"] = [common.state_text(row) for _, row in recent.iterrows()]
    recent["cells done"] = [f"{r} of {n}" for r, n in zip(recent["ran"], recent["runnable"], strict=True)]

    def colour(state: str) -> str:
        return {"failed": "color: #b42318; font-weight: 600", "running": "color: #1d4ed8",
                "cancelled": "color: #6b7280", "not run": "color: #b54708"}.get(
                    state, "color: #b54708" if " failed" in state else "")

    view = recent[["id", "name", "model", "state", "cells done", "ok", "failed", "created_at"]]
    st.dataframe(view.style.map(colour, subset=["state"]), hide_index=True,
                 column_config={"created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm")})
    if running.empty and (studies["state"] == "running").any():
        st.rerun(scope="app")  # nothing runs any more: redraw without the polling fragment


if studies.empty:
    st.info("No studies yet: press **Run the demo**, or upload your model on the **Models** page.")
else:
    recent_studies()
    st.page_link("pages/results.py", label="Open the results", icon=":material/insights:")
