"""Paretoscope dashboard: navigation over pages/, the shared sidebar, and a local worker."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine import shared
from storage.paths import data_dir
from engine.worker import local_worker_starting
from pages import common
from storage import queue
from storage import views
from storage.db import session

# a local icon: a Material icon as page_icon is fetched from a font host, which fails offline
st.set_page_config(page_title="Paretoscope", page_icon=str(Path(__file__).parent / "pages" / "assets" / "favicon.png"),
                   layout="wide")


common.require_sign_in()
common.ensure_worker()
st.session_state[common.APP_RAN] = True

navigation = common.navigation()

with st.sidebar:
    with session(write=False) as s:
        workers = queue.live_workers(s)
        busy = views.busy_workers(s)
        queued = queue.has_open_jobs(s)
    if workers:
        st.success(f"{len(workers)} worker(s) alive, {busy} busy", icon=":material/check_circle:")
    elif local_worker_starting():
        st.info("A local worker is starting.", icon=":material/hourglass_top:")
    else:
        st.warning("No live worker: queued studies wait until one starts (`python -m engine worker`).",
                   icon=":material/pause_circle:")
    if queued:
        st.caption("Jobs are queued or running.")
    if shared.enabled():  # the server's paths are not a visitor's business
        st.caption(f"Signed in as {common.current_user()}")
        st.button("Sign out", on_click=st.logout, key="sign_out")
    else:
        st.caption(f"Data folder: `{data_dir()}`")

navigation.run()
