"""Models: upload (inspected in a child process), inspect, adjust the input spec, rename, delete; data files."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.artifacts import Artifact
from engine import shared
from engine.errors import UserError, disk_full
from engine.inspection import check_data, inspect_model, respec_model
from engine.specs import range_label
from pages import common
from storage import blobs
from storage import catalogue
from storage.db import session

common.start_page()
st.title("Models")
st.caption("ONNX (.onnx, or a zip with its external data), TorchScript (.pt), torch.export (.pt2), a zipped "
           "Hugging Face folder (config.json + *.safetensors), or with the TensorFlow extra a zipped SavedModel or a "
           "Keras .keras file. Files are checked by their bytes; pickles and legacy .h5 files are refused.")


with st.form("upload", clear_on_submit=True):
    upload = st.file_uploader("Model file", type=None, key="model_file")
    c1, c2 = st.columns(2)
    spec_text = c1.text_input("Input spec (only for files without example inputs)",
                              placeholder="x:float32[B,3,224,224]")
    seq_len = c2.number_input("Sequence length (text models)", min_value=0, value=0, step=1,
                              help="0 keeps the default (128, or the model's maximum)")
    submitted = st.form_submit_button("Upload and inspect", type="primary")
user = common.current_user()
if shared.enabled():
    bounds = shared.limits()
    with session(write=False) as s:
        used = catalogue.upload_bytes(s, user)
    st.caption(f"Shared server: TorchScript and .pt2 files are refused (loading them runs the uploader's code); "
               f"export to ONNX. Your uploads use {used / 2**20:.1f} of {bounds.upload_quota_mb:g} MB."
               if bounds else "")


def upload_model(name: str, data: bytes, spec: str | None, seq: int | None) -> None:
    """Inspect an uploaded model in a limited child and store it; every outcome leaves an audit line."""
    inspected = None
    staged = None
    try:
        with session(write=False) as s:
            shared.check_quota(catalogue.upload_bytes(s, user), len(data))
        staged = common.stage_upload(name, data)
        with st.spinner(f"Inspecting {name}..."):
            # in a child with time and memory limits: a hostile or broken file never touches this process
            inspected = inspect_model(staged, spec, seq)
    except UserError as exc:
        shared.audit("upload-model", user, name=name, bytes=len(data), refused=str(exc))
        st.error(f"error: {shared.visible_error(str(exc))}")
    finally:
        if staged is not None:
            common.drop_upload(staged)
    if inspected is not None:
        with session() as s:
            model = catalogue.get_or_create_model(s, inspected.to_json(), name, created_by=user)
            st.session_state["model_id"] = model.id
            shared.audit("upload-model", user, name=name, bytes=len(data), model_id=model.id,
                         sha256=inspected.sha256, format=inspected.format)
        common.clear()
        st.success(f"{name}: {inspected.format} model stored (sha256 {inspected.sha256[:12]}…)")


if submitted and upload is not None:
    upload_model(upload.name, upload.getvalue(), spec_text.strip() or None, int(seq_len) or None)
elif submitted:
    st.warning("No model file yet: choose one (or drop it on the box), wait until its name shows without a spinner, "
               "then press Upload and inspect")

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
owner = models.set_index("id").loc[model_id, "created_by"]
allowed = common.may_change(owner)  # the uploader or an admin changes a model on a shared server
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
        if st.form_submit_button("Apply", disabled=not allowed):
            updated = None
            with st.spinner("Checking the new spec against the model..."):
                try:
                    updated = respec_model(Artifact.from_json(artifact), new_spec.strip() or None,
                                           int(new_seq) or None)
                except UserError as exc:
                    st.error(f"error: {exc}")
            if updated is not None:
                with session() as s:
                    catalogue.get_or_create_model(s, updated.to_json(),
                                                  str(models.set_index("id").loc[model_id, "name"]))
                common.clear()
                st.success("Input spec updated.")
                st.rerun()

with st.expander("Rename or delete"):
    if not allowed:
        st.caption(f"Only {owner or 'its uploader'} or an admin may rename or delete this model.")
    new_name = st.text_input("Name", value=str(models.set_index("id").loc[model_id, "name"]), disabled=not allowed)
    c1, c2 = st.columns(2)
    if c1.button("Rename", disabled=not allowed):
        with session() as s:
            catalogue.rename_model(s, int(model_id), new_name)
        common.clear()
        st.rerun()
    if c2.button("Delete", type="secondary", disabled=not allowed):
        try:
            with session() as s:
                catalogue.delete_model(s, int(model_id))
        except ValueError as exc:
            st.error(f"error: {exc}")
        else:
            shared.audit("delete-model", user, model_id=int(model_id))
            common.clear()
            st.rerun()

st.subheader("Data files")
st.caption("An .npz with arrays named after the model's inputs; `labels` for an evaluation set; optional "
           "`train/`, `calib/`, `eval/` prefixes. Loaded without pickles.")
with st.form("data_upload", clear_on_submit=True):
    data_file = st.file_uploader("Data file (.npz)", type=["npz"], key="data_file")
    if st.form_submit_button("Upload data") and data_file is not None:
        from engine.specs import InputSpec

        staged = None
        try:
            with session(write=False) as s:
                shared.check_quota(catalogue.upload_bytes(s, user), data_file.size)
            staged = common.stage_upload(data_file.name, data_file.getvalue())
            check_data(staged, InputSpec.from_json(spec))  # read in a limited child, never in this process
            try:
                sha = blobs.put_file(staged)
            except OSError as exc:
                full = disk_full(exc, "the data folder")
                if full is None:
                    raise
                raise full from exc
            with session() as s:
                dataset = catalogue.get_or_create_dataset(s, sha, data_file.name, staged.stat().st_size,
                                                          created_by=user)
                shared.audit("upload-data", user, name=data_file.name, bytes=data_file.size, dataset_id=dataset.id)
            common.clear()
            st.success(f"{data_file.name} stored; pick it on the Benchmark page.")
        except UserError as exc:
            shared.audit("upload-data", user, name=data_file.name, bytes=data_file.size, refused=str(exc))
            st.error(f"error: {shared.visible_error(str(exc))}")
        finally:
            if staged is not None:
                common.drop_upload(staged)
datasets = common.datasets(common.url())
if not datasets.empty:
    st.dataframe(datasets.assign(size=[common.mb(v) for v in datasets["size_bytes"]])[["id", "name", "size",
                                                                                        "created_at"]],
                 hide_index=True)
