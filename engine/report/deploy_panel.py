"""The Results page's "Ship it" panel: pick a target, download the cell's deployment bundle as a zip.

The bundle is written only when the button is clicked (engine.deploy.bundle_zip); drawing the panel reads the study
once to say which cell it is, or why that cell cannot be bundled and which to pick instead.
"""

from __future__ import annotations

import streamlit as st

from engine.deploy.bundle import TARGETS, load_deploy_cell
from engine.deploy.write import bundle_name, bundle_zip
from engine.errors import UserError

TITLE = "Ship it"
TARGET_LABELS = {"fastapi": "FastAPI server (Docker)", "triton": "Triton model repository",
                 "hf-endpoint": "Hugging Face Inference Endpoint"}
TARGET_HELP = {
    "fastapi": "serve.py (uvicorn): /healthz, /v1/predict, /metrics, optional dynamic batching; the model's files, "
               "requirements.txt, a Dockerfile and a README with curl examples",
    "triton": "model_repository/NAME/config.pbtxt and version 1 of the model, for tritonserver --model-repository",
    "hf-endpoint": "handler.py (a custom EndpointHandler), the model's files and requirements.txt: push to a model "
                   "repository and create an endpoint from it",
}


def deploy_panel(study_id: int, cell: int | None = None, *, key: str = "deploy") -> str | None:
    """Draw the panel for a study's cell (None: the recommended one); returns the target picked, or None when the
    cell cannot be bundled (the panel then says why and what to pick)."""
    st.subheader(TITLE)
    try:
        deployed = load_deploy_cell(study_id, cell)
    except UserError as exc:
        st.info(str(exc), icon=":material/info:")
        return None
    target = st.radio("Target", TARGETS, format_func=lambda t: TARGET_LABELS[t], horizontal=True, key=f"{key}_target")
    st.caption(f"{deployed.label}: {TARGET_HELP[target]}")
    st.download_button(f"Download the {TARGET_LABELS[target]} bundle (.zip)",
                       data=lambda: bundle_zip(study_id, deployed.cell.cell, target),
                       file_name=f"{bundle_name(deployed, target)}.zip", mime="application/zip", on_click="ignore",
                       key=f"{key}_download")
    return target
