"""How the dashboard says a study failed, partly failed or measured noisy, and what it offers then."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from storage import queue
from storage.db import session
from storage.tables import Job
from tests.storage.helpers import make_study

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SETTINGS = {"timeout_s": 60, "threads": 1, "measure": {"warmup": 1, "iterations": 5, "min_seconds": 0.1}}


def _result(p50: float, noisy: bool) -> dict:  # type: ignore[type-arg]
    return {"latency_ms": {"p50": p50, "p90": p50, "p99": p50 * 1.1}, "throughput_per_s": 1000 / p50,
            "model_size_mb": 1.0, "peak_host_mb": 100.0, "notes": ["a note on every cell"], "settings": {},
            "accuracy": {"fidelity": {"max_abs": 0.0, "mean_abs": 0.0, "cosine": 1.0, "top1_agreement": 1.0},
                         "task": None},
            "noise": {"noisy": noisy, "spread_pct": 23.0 if noisy else 0.4, "cv": 0.1, "other_busy_cores": 0.0,
                      "reasons": [], "message": "noisy: ±23% — rerun on an idle machine" if noisy else None}}


def _end(study_id: int, outcomes: list[tuple[str, dict | None, str | None]]) -> None:  # type: ignore[type-arg]
    for status, result, error in outcomes:
        with session() as s:
            job = queue.claim_job(s, "w", lease_s=60, study_id=study_id)
            assert job is not None
            queue.finish_job(s, job.id, "w", status, result=result, error_type="RuntimeError" if error else None,
                         error=error)


def _page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page != "home.py":
        at.switch_page(f"pages/{page}")
        at.run()
    assert not at.exception, at.exception
    return at


def test_a_failed_study_is_red_with_its_error_on_home_and_results(data_dir: Path) -> None:
    study = make_study(2, name="doomed", settings=SETTINGS)
    _end(study, [("failed", None, "the runtime exploded"), ("failed", None, "the runtime exploded")])
    for page in ("home.py", "results.py"):
        at = _page(page)
        errors = [e.value for e in at.error]
        assert any(f"Study #{study} failed" in e and "2 × failed" in e and "RuntimeError: the runtime exploded" in e
                   for e in errors), errors
    results = _page("results.py")
    # the error stands before the table, not only in a column off to the right
    kinds = [type(el).__name__ for el in results.main]
    assert kinds.index("Error") < kinds.index("Dataframe"), kinds


def test_a_partly_failed_study_says_how_many_failed(data_dir: Path) -> None:
    study = make_study(3, name="mixed", settings=SETTINGS)
    _end(study, [("ok", _result(1.0, False), None), ("failed", None, "boom"), ("ok", _result(2.0, False), None)])
    at = _page("home.py")
    assert any("2 ok, 1 failed" in w.value for w in at.warning), [w.value for w in at.warning]


def test_noisy_cells_are_flagged_and_can_be_rerun(data_dir: Path) -> None:
    study = make_study(2, name="noisy", settings=SETTINGS)
    _end(study, [("ok", _result(1.0, True), None), ("ok", _result(2.0, False), None)])
    at = _page("results.py")
    table = at.dataframe[0].value
    assert "⚠ noisy ±23%" in " ".join(map(str, table["status"]))
    assert any("Notes for the whole study" in m.value and "a note on every cell" in m.value for m in at.markdown)
    assert any("This cell was noisy: ±23%" in w.value for w in at.warning)  # the fastest cell is the noisy one
    rerun = next(b for b in at.button if b.label.startswith("Rerun the 1 noisy"))
    rerun.click().run()
    with session(write=False) as s:
        statuses = {j.cell: j.status for j in s.scalars(select(Job).where(Job.study_id == study))}
    assert statuses == {0: "queued", 1: "ok"}
