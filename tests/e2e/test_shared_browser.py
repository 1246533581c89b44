"""Shared-server mode in a real browser: sign-in through a real OIDC provider, then ownership of deletes.

The identity provider is `oidc-provider-mock` (a double of Google/Microsoft/Keycloak, never of Streamlit),
started by the test on a loopback port; Streamlit's own `st.login` talks to it as it would to any provider.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.artifacts import intake
from engine.measure.latency import MeasureSettings
from engine.optimizations import parse_chain
from engine.plan import StudySettings
from engine.study import submit_study
from storage import db
from storage import views
from storage.db import session
from tests.e2e.test_browser import ROOT, _browser, _free_port, _needs_browser

pytestmark = pytest.mark.slow


@pytest.fixture
def provider() -> Iterator[str]:
    """A local OpenID Connect provider: any subject typed on its form signs in, its e-mail claim the same."""
    mock = pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock is not installed "
                                                            "(requirements-dev.txt)")
    with mock.run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the dashboard did not start")


@pytest.fixture
def shared_dashboard(tmp_path: Path, data_dir: Path, provider: str) -> Iterator[str]:
    """The dashboard in shared mode, sign-in configured in a secrets file the test writes."""
    _needs_browser()
    port = _free_port()
    url = f"http://localhost:{port}"
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(
        "[auth]\n"
        f'redirect_uri = "{url}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "paretoscope"\n'
        'client_secret = "not-a-secret-for-the-mock"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
    )
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), "PARETOSCOPE_SHARED": "1",
           "PARETOSCOPE_NO_AUTO_WORKER": "1"}  # the studies stay queued: this test is about who may delete them
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--secrets.files", str(secrets_file)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        _wait_for_port(port, proc)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def _study(model: object, created_by: str) -> int:
    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.02, rounds=0), threads=1,
                             timeout_s=60)
    study_id, _ = submit_study(model, [parse_chain("baseline")], ["onnxruntime"], [1], settings,  # type: ignore[arg-type]
                               name=f"{created_by.split('@')[0]}'s study", created_by=created_by)
    return study_id


def test_sign_in_then_delete_only_ones_own_study(shared_dashboard: str, mlp_onnx: Path, data_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("PARETOSCOPE_SHARED", "1")
    db.reset()
    model = intake(mlp_onnx)
    alices = _study(model, "alice@example.com")
    bobs = _study(model, "bob@example.com")  # the newest: the Results page opens on it
    url = shared_dashboard
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})  # type: ignore[attr-defined]
        page.set_default_timeout(60_000)
        page.goto(url)
        # nothing of the server shows before sign-in: no page list, no study
        expect(page.get_by_text("This Paretoscope server is shared")).to_be_visible()
        expect(page.locator("[data-testid=stSidebarNav]")).to_have_count(0)
        page.get_by_role("button", name="Sign in").click()

        # the provider's own sign-in form
        page.wait_for_url(re.compile(r".*/oauth2/authorize.*"))
        page.locator("input[name=sub]").fill("alice@example.com")
        page.get_by_role("button", name="Authorize").click()

        expect(page.get_by_text("Signed in as alice@example.com")).to_be_visible()
        expect(page.get_by_text(str(data_dir))).to_have_count(0)  # the data folder's path is not shown

        page.goto(f"{url}/results")
        expect(page.get_by_role("heading", name="Results")).to_be_visible()
        page.get_by_text("Delete this study", exact=True).click()
        expect(page.get_by_text("Only bob@example.com or an admin may delete this study.")).to_be_visible()
        expect(page.get_by_role("checkbox", name=f"Yes, delete study #{bobs}")).to_be_disabled()

        # her own study: pick it, confirm, delete
        page.get_by_role("combobox").first.click()
        page.get_by_role("option", name=re.compile(rf"#{alices} alice's study")).click()
        confirm = page.get_by_role("checkbox", name=f"Yes, delete study #{alices}")
        expect(confirm).to_be_enabled()
        page.get_by_text(f"Yes, delete study #{alices}").click()
        expect(confirm).to_be_checked()
        page.get_by_role("button", name="Delete", exact=True).click()
        # the page reruns without her study: the Results page falls back to the one left
        expect(page.get_by_text(f"Yes, delete study #{alices}")).to_have_count(0)
        browser.close()  # type: ignore[attr-defined]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with session(write=False) as s:
            remaining = list(views.list_studies(s)["id"])
        if remaining == [bobs]:
            break
        time.sleep(0.5)
    assert remaining == [bobs]
    lines = [json.loads(line) for line in (data_dir / "logs" / "audit.log").read_text().splitlines()]
    assert {"action": "delete-study", "user": "alice@example.com", "study_id": alices}.items() <= lines[-1].items()


def test_shared_mode_without_sign_in_configured_says_what_to_do(tmp_path: Path, data_dir: Path) -> None:
    """No [auth] secrets: the server shows one line saying what to configure, and nothing else."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    details = st.get_option("client.showErrorDetails")
    os.environ["PARETOSCOPE_SHARED"] = "1"
    try:
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        app.run()
        assert st.get_option("client.showErrorDetails") == "none"  # a visitor never sees a traceback
    finally:
        del os.environ["PARETOSCOPE_SHARED"]
        st.set_option("client.showErrorDetails", details)  # the option is the process's: other tests' apps
    assert not app.exception
    assert [e.value for e in app.error] and "sign-in is not configured" in app.error[0].value
    assert not app.title  # no page ran

