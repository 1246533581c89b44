"""What the pages share: cached reads through storage's views and the engine's results, formatting."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import shared
from storage.paths import sub_dir
from engine.report import source
from storage import catalogue
from storage import results as stored
from storage import views
from storage.db import database_url, session

TTL_S = 2


def url() -> str:
    return database_url()


# Checked again every 15 s, not once per server: a worker that was alive (or a `bench` run's, which serves
# only its own study) may have stopped since.
@st.cache_resource(ttl=15, show_spinner=False)
def _local_worker(db_url: str) -> int | None:
    from engine.worker import ensure_local_worker

    return ensure_local_worker()


def ensure_worker() -> None:
    """Once per dashboard process: a worker runs the queued jobs."""
    _local_worker(url())


# set by app.py in every session it runs in
APP_RAN = "_paretoscope_app_ran"


def navigation(position: str = "sidebar") -> Any:
    """The one navigation over PAGES (app.py's)."""
    from pages import FOLDER, PAGES

    return st.navigation([st.Page(str(FOLDER / file), title=title, icon=icon, default=i == 0)
                          for i, (file, title, icon) in enumerate(PAGES)], position=position)  # type: ignore[arg-type]


def current_user() -> str | None:
    """The signed-in person in shared mode (their e-mail, else the provider's subject); None on one's own machine."""
    if not shared.enabled() or not st.user.is_logged_in:
        return None
    return str(st.user.get("email") or st.user.get("sub"))


def _auth_configured() -> bool:
    from streamlit.errors import StreamlitSecretNotFoundError

    try:
        return "auth" in st.secrets
    except (StreamlitSecretNotFoundError, FileNotFoundError):  # no secrets file at all
        return False


def require_sign_in() -> None:
    """In shared mode nothing shows before sign-in (Streamlit's OIDC `st.login`, configured in secrets.toml)."""
    if not shared.enabled():
        return
    st.set_option("client.showErrorDetails", "none")  # a visitor never sees a traceback or a server path
    # the page list stays hidden too (on a fresh server Streamlit would list pages/ in the sidebar)
    navigation(position="hidden")
    if not _auth_configured():
        st.error("This server runs in shared mode (PARETOSCOPE_SHARED=1) but sign-in is not configured: add an "
                 "[auth] section to .streamlit/secrets.toml (README, Shared server).", icon=":material/lock:")
        st.stop()
    if not st.user.is_logged_in:
        st.title("Paretoscope")
        st.info("This Paretoscope server is shared: sign in to upload models and run studies.",
                icon=":material/lock:")
        st.button("Sign in", type="primary", on_click=st.login)
        st.stop()


def may_change(owner: str | None) -> bool:
    """Whether this session's person may delete or cancel what `owner` created (the owner or an admin)."""
    return shared.may_change(current_user(), owner)


def start_page() -> None:
    """Every page's first line. Until some session of a fresh server has run app.py, Streamlit runs a page
    opened by its URL through its legacy discovery of pages/ (file names for titles, no app.py). Such a run
    declares app.py's navigation, which ends the legacy mode for the whole server, and reruns through app.py."""
    if not st.session_state.get(APP_RAN):
        st.session_state[APP_RAN] = True  # once: never a rerun loop
        navigation(position="hidden")
        st.rerun()
    require_sign_in()
    ensure_worker()


@st.cache_data(ttl=TTL_S, show_spinner=False)
def studies(db_url: str) -> pd.DataFrame:
    with session(write=False) as s:
        return views.list_studies(s)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def models(db_url: str) -> pd.DataFrame:
    with session(write=False) as s:
        return views.list_models(s)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def datasets(db_url: str) -> pd.DataFrame:
    with session(write=False) as s:
        return views.list_datasets(s)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def model_artifact(db_url: str, model_id: int) -> dict[str, Any] | None:
    with session(write=False) as s:
        model = catalogue.get_model(s, model_id)
        return dict(model.artifact) if model else None


@st.cache_data(ttl=TTL_S, show_spinner=False)
def results(db_url: str, study_id: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The study's results JSON and its flat table (the report's own flattening, one query)."""
    from engine.report import tables

    with session(write=False) as s:
        full = source.results_json(s, study_id)
    # a note every cell carries (an exporter's fallback) is said once above the table, not on each row
    frame = tables.results_table(full, without=tables.shared_notes(full))[tables.FRAME_COLUMNS]
    if shared.enabled():  # no server path in what a visitor reads
        frame["error"] = frame["error"].map(lambda e: shared.visible_error(e) if isinstance(e, str) else e)
    return frame, full


@st.cache_data(ttl=30, show_spinner=False)
def size_report(folder: str) -> Any:
    """Sizes of the data folder (the cache key): a walk over every file, so at most twice a minute."""
    from storage import blobs

    return blobs.size_report()


@st.cache_data(ttl=TTL_S, show_spinner=False)
def samples(db_url: str, study_id: int) -> dict[int, Any]:
    with session(write=False) as s:
        return stored.study_samples(s, study_id)


def clear() -> None:
    """Forget cached reads after this session wrote something."""
    st.cache_data.clear()


def state_text(row: Any) -> str:
    """A study's state for a person: running, done, failed, "7 ok, 2 failed" or cancelled."""
    if row["state"] == "partial":
        return f"{row['ok']} ok, {row['failed']} failed"
    return str(row["state"])


def study_label(frame: pd.DataFrame, study_id: int) -> str:
    row = frame.set_index("id").loc[study_id]
    return f"#{study_id} {row['name']} ({state_text(row)})"


@st.cache_data(ttl=TTL_S, show_spinner=False)
def study_errors(db_url: str, study_id: int) -> pd.DataFrame:
    with session(write=False) as s:
        return views.study_errors(s, study_id)


def show_state(row: Any) -> None:
    """The study's end, in colour, with its errors grouped where a person looks first (above any table)."""
    state, study_id = row["state"], int(row["id"])
    if state == "running":
        st.info(f"Study #{study_id} is running: {row['ran']} of {row['runnable']} cells done.",
                icon=":material/hourglass_top:")
        return
    if state == "cancelled":
        st.warning(f"Study #{study_id} was cancelled ({row['ok']} ok).", icon=":material/cancel:")
        return
    if state == "not run":
        st.warning(f"Study #{study_id}: none of its {row['cells']} cells can run here (each is n/a or unavailable; "
                   "the table says why).", icon=":material/block:")
        return
    if state == "done":
        st.success(f"Study #{study_id} finished: {row['ok']} of {row['runnable']} cells ok.",
                   icon=":material/check_circle:")
        return
    errors = study_errors(url(), study_id)
    headline = (f"Study #{study_id} failed: every cell that ran failed ({row['failed']})." if state == "failed"
                else f"Study #{study_id} finished with failures: {row['ok']} ok, {row['failed']} failed.")
    lines = [f"- **{n} × {status}**: {shared.visible_error(str(error))[:400]}" for status, error, n in
             zip(errors["status"], errors["error"], errors["count"], strict=True)]
    (st.error if state == "failed" else st.warning)("\n".join([headline, *lines[:5]]), icon=":material/error:")


def stage_upload(name: str, data: bytes) -> Path:
    """Write uploaded bytes inside the data folder for a child process to inspect."""
    from engine.errors import disk_full

    folder = sub_dir("uploads", uuid.uuid4().hex)
    target = folder / Path(name).name
    try:
        target.write_bytes(data)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)  # no partial upload left behind
        full = disk_full(exc, "the data folder")
        if full is None:
            raise
        raise full from exc
    return target


def drop_upload(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


def mb(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value / 2**20:.2f} MB"
