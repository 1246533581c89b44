"""System: this machine, GPUs, runtime availability, workers, database and data folder sizes."""

from __future__ import annotations

import os

import pandas as pd
import psutil
import streamlit as st

from sqlalchemy import make_url

from engine import shared
from engine.measure.devices import cuda_devices
from engine.measure.environment import cpu_model, library_versions
from storage.paths import data_dir
from engine.runtimes import availability
from pages import common
from storage import queue
from storage import views
from storage.db import database_url, session

common.start_page()
st.title("System")


st.markdown(f"**CPU**: {cpu_model()}")  # whole: a metric tile would cut a long model name
c1, c2 = st.columns(2)
c1.metric("Cores (logical / physical)", f"{os.cpu_count()} / {psutil.cpu_count(logical=False)}")
c2.metric("Memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB")

st.subheader("GPUs")
gpus, reason = cuda_devices()
if gpus:
    st.dataframe(pd.DataFrame(gpus), hide_index=True)
else:
    st.info(f"No GPU: {reason}")

st.subheader("Runtimes")
runtimes = pd.DataFrame(availability())
runtimes["settings"] = runtimes["options"].map(lambda o: ", ".join(o) or "-")
st.dataframe(runtimes[["id", "available", "reason", "device", "consumes", "settings", "summary"]], hide_index=True)
st.caption("Settings go in the Benchmark page's *Runtime settings* (or `--option RUNTIME.KEY=VALUE`); "
           "`python -m engine runtimes --options` says what each does.")
versions = {k: v for k, v in library_versions().items() if v}
st.caption(" · ".join(f"{k} {v}" for k, v in versions.items()))

st.subheader("Workers")
with session(write=False) as s:
    workers = views.workers_frame(s)
    live = {w.id for w in queue.live_workers(s)}
if workers.empty:
    st.caption("No worker has run yet.")
else:
    workers["alive"] = workers["id"].isin(live)
    workers["current_job_id"] = workers["current_job_id"].map(lambda j: "–" if pd.isna(j) else str(int(j)))
    st.dataframe(workers, hide_index=True)

st.subheader("Storage")
report = common.size_report(str(data_dir()))
if not shared.enabled():  # a shared server's paths and database address are not a visitor's business
    url = make_url(database_url())
    where = url.database if url.drivername.startswith("sqlite") else url.render_as_string(hide_password=True)
    st.markdown(f"Database: `{where}` · data folder `{data_dir()}`")
st.dataframe(pd.DataFrame([
    {"what": "database", "MB": report.database_bytes / 2**20},
    {"what": f"blobs ({report.blob_count} files)", "MB": report.blobs_bytes / 2**20},
    {"what": "models", "MB": report.models_bytes / 2**20},
    {"what": "built variants", "MB": report.variants_bytes / 2**20},
    {"what": "studies (logs, reference outputs)", "MB": report.studies_bytes / 2**20},
    {"what": "total", "MB": report.total_bytes / 2**20},
]), hide_index=True, column_config={"MB": st.column_config.NumberColumn("MB", format="%.2f")})
