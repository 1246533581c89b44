"""Browser tests: Playwright's `expect` waits as long as the pages' own timeouts (its 5 s default fails on a loaded
2-core machine, where a Streamlit page can take longer to draw while other tests run beside it)."""

from __future__ import annotations

import pytest

EXPECT_TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def _patient_expect() -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
