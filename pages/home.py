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
    from engine.artifacts import Artifact
    from engine.executors.local import run_child
    from engine.paths import sub_dir
    from engine.study import submit_demo_study

    with st.spinner("Training the demo model on scikit-learn's digits (first time only)..."):
        outcome = run_child("demo", {}, 600, sub_dir("logs") / "demo.log")
    if outcome.status != "ok" or outcome.result is None:
        st.error(f"The demo could not be built: {outcome.error}")
    else:
        study_id = submit_demo_study(Artifact.from_json(outcome.result["artifact"]), outcome.result["data"])
        common.clear()
        st.session_state["watch_study"] = study_id
        st.switch_page("pages/benchmark.py")

if studies.empty:
    st.info("No studies yet: press **Run the demo**, or upload your model on the **Models** page.")
else:
    running = studies[studies["finished_at"].isna() & ~studies["cancelled"].astype(bool)]
    if len(running):
        first = running.iloc[-1]
        st.info(f"Study #{first['id']} ({first['name']}) is running: {first['done']} of {first['cells']} cells done.")
        if st.button("Watch it", key="watch"):
            st.session_state["watch_study"] = int(first["id"])
            st.switch_page("pages/benchmark.py")
    st.subheader("Recent studies")
    recent = studies.head(10).copy()
    recent["state"] = ["cancelled" if c else ("done" if f is not None and str(f) != "NaT" else "running")
                       for c, f in zip(recent["cancelled"], recent["finished_at"], strict=True)]
    st.dataframe(recent[["id", "name", "model", "cells", "done", "ok", "state", "created_at"]], hide_index=True,
                 column_config={"created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm")})
    st.page_link("pages/results.py", label="Open the results", icon=":material/insights:")
