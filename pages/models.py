"""Models: upload (inspected in a child process), inspect, adjust the input spec, rename, delete; data files."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.artifacts import Artifact
from engine.errors import UserError
from engine.inspection import check_data, inspect_model, respec_model
from engine.specs import range_label
from pages import common
from storage import blobs
from storage import queries as q
from storage.db import session

common.start_page()
st.title("Models")
st.caption("ONNX (.onnx, or a zip with its external data), TorchScript (.pt), torch.export (.pt2), or a zipped "
           "Hugging Face folder (config.json + *.safetensors). Files are checked by their bytes; pickles are refused.")


with st.form("upload", clear_on_submit=True):
    upload = st.file_uploader("Model file", type=None, key="model_file")
    c1, c2 = st.columns(2)
    spec_text = c1.text_input("Input spec (only for files without example inputs)",
                              placeholder="x:float32[B,3,224,224]")
    seq_len = c2.number_input("Sequence length (text models)", min_value=0, value=0, step=1,
                              help="0 keeps the default (128, or the model's maximum)")
    submitted = st.form_submit_button("Upload and inspect", type="primary")
if submitted and upload is not None:
    staged = common.stage_upload(upload.name, upload.getvalue())
    inspected = None
    try:
        with st.spinner(f"Inspecting {upload.name}..."):
            # in a child with time and memory limits: a hostile or broken file never touches this process
            inspected = inspect_model(staged, spec_text.strip() or None, int(seq_len) or None)
    except UserError as exc:
        st.error(f"error: {exc}")
    finally:
        common.drop_upload(staged)
    if inspected is not None:
        with session() as s:
            model = q.get_or_create_model(s, inspected.to_json(), upload.name)
            st.session_state["model_id"] = model.id
        common.clear()
        st.success(f"{upload.name}: {inspected.format} model stored (sha256 {inspected.sha256[:12]}…)")

models = common.models(common.url())
if models.empty:
    st.info("No model yet. Upload one above, or run the demo from the Home page.")
    st.stop()

table = models.assign(size=[common.mb(v) for v in models["size_bytes"]])
st.dataframe(table[["id", "name", "format", "size", "studies", "sha256", "created_at"]], hide_index=True,
             column_config={"sha256": st.column_config.TextColumn("sha256", width="small"),
                            "created_at": st.column_config.DatetimeColumn("added", format="YYYY-MM-DD HH:mm")})

ids = list(models["id"])
default = ids.index(st.session_state["model_id"]) if st.session_state.get("model_id") in ids else 0
model_id = st.selectbox("Model", ids, index=default,
                        format_func=lambda i: f"#{i} {models.set_index('id').loc[i, 'name']}")
artifact = common.model_artifact(common.url(), int(model_id))
if artifact is None:
    st.stop()
info = artifact.get("info", {})
spec = artifact["spec"]

c1, c2, c3, c4 = st.columns(4)
c1.metric("Format", artifact["format"])
c2.metric("Size", common.mb(artifact["size_bytes"]))
params = info.get("parameters")
c3.metric("Parameters", f"{params:,}" if params else "-")
c4.metric("Opset", info.get("opset") or "-")
st.caption(f"sha256 `{artifact['sha256']}`")


def spec_frame(tensors: list[dict]) -> pd.DataFrame:  # type: ignore[type-arg]
    return pd.DataFrame([{"name": t["name"], "dtype": t["dtype"], "shape": "[" + ", ".join(map(str, t["shape"])) + "]",
                          "value range": range_label(t["value_range"]) if t.get("value_range") else "–"}
                         for t in tensors], columns=["name", "dtype", "shape", "value range"])


left, right = st.columns(2)
left.markdown("**Inputs**")
left.dataframe(spec_frame(spec["inputs"]), hide_index=True)
right.markdown("**Outputs**")
right.dataframe(spec_frame(spec.get("outputs", [])), hide_index=True)
if spec.get("seq_len"):
    st.caption(f"Sequence length: {spec['seq_len']}")
extra = {k: v for k, v in info.items() if k not in ("parameters", "opset") and v not in (None, "")}
if extra:
    st.json(extra, expanded=False)

with st.expander("Adjust the input spec"):
    with st.form("respec"):
        new_spec = st.text_input("Input spec", value=";".join(
            f"{t['name']}:{t['dtype']}[{','.join(map(str, t['shape']))}]" for t in spec["inputs"]))
        new_seq = st.number_input("Sequence length", min_value=0, value=int(spec.get("seq_len") or 0), step=1)
        if st.form_submit_button("Apply"):
            updated = None
            with st.spinner("Checking the new spec against the model..."):
                try:
                    updated = respec_model(Artifact.from_json(artifact), new_spec.strip() or None,
                                           int(new_seq) or None)
                except UserError as exc:
                    st.error(f"error: {exc}")
            if updated is not None:
                with session() as s:
                    q.get_or_create_model(s, updated.to_json(), str(models.set_index("id").loc[model_id, "name"]))
                common.clear()
                st.success("Input spec updated.")
                st.rerun()

with st.expander("Rename or delete"):
    new_name = st.text_input("Name", value=str(models.set_index("id").loc[model_id, "name"]))
    c1, c2 = st.columns(2)
    if c1.button("Rename"):
        with session() as s:
            q.rename_model(s, int(model_id), new_name)
        common.clear()
        st.rerun()
    if c2.button("Delete", type="secondary"):
        try:
            with session() as s:
                q.delete_model(s, int(model_id))
        except ValueError as exc:
            st.error(f"error: {exc}")
        else:
            common.clear()
            st.rerun()

st.subheader("Data files")
st.caption("An .npz with arrays named after the model's inputs; `labels` for an evaluation set; optional "
           "`train/`, `calib/`, `eval/` prefixes. Loaded without pickles.")
with st.form("data_upload", clear_on_submit=True):
    data_file = st.file_uploader("Data file (.npz)", type=["npz"], key="data_file")
    if st.form_submit_button("Upload data") and data_file is not None:
        from engine.specs import InputSpec

        staged = common.stage_upload(data_file.name, data_file.getvalue())
        try:
            check_data(staged, InputSpec.from_json(spec))  # read in a limited child, never in this process
            sha = blobs.put_file(staged)
            with session() as s:
                q.get_or_create_dataset(s, sha, data_file.name, staged.stat().st_size)
            common.clear()
            st.success(f"{data_file.name} stored; pick it on the Benchmark page.")
        except UserError as exc:
            st.error(f"error: {exc}")
        finally:
            common.drop_upload(staged)
datasets = common.datasets(common.url())
if not datasets.empty:
    st.dataframe(datasets.assign(size=[common.mb(v) for v in datasets["size_bytes"]])[["id", "name", "size",
                                                                                        "created_at"]],
                 hide_index=True)
