"""A cell's typed result through the database: stored in its columns, read back as the same record, the job's own
fields (which cell, which job, how many attempts) always the job's."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from engine.report import source
from engine.results import CellResult, Status
from storage import queue
from storage import results as stored
from storage.db import session
from storage.tables import Result
from tests.engine.test_results import full
from tests.storage.helpers import make_study


def test_a_result_comes_back_as_it_was_stored_with_the_jobs_identity() -> None:
    study_id = make_study(1)
    with session() as s:
        job = queue.claim_job(s, "w", lease_s=60)
        assert job is not None
        job_id = job.id
    measured = full()
    measured.cell, measured.job_id, measured.attempts = None, None, None  # the child knows none of them
    measured.variant, measured.batch_size = "baseline", 1
    samples = np.asarray(measured.samples_ms, dtype=np.float32)
    measured.samples_ms = None
    measured.diagnostics = {"quantization": None, "hardware": None, "top_ops": [], "op_types": {}}
    measured.extra = {"generation": {"ttft_ms": {"p50": 12.0}}}  # a newer producer's addition
    with session() as s:
        assert queue.finish_job(s, job_id, "w", Status.OK, result=measured.to_json(), samples=samples) == "ok"
    with session(write=False) as s:
        (row,) = stored.study_rows(s, study_id)
        extra = s.scalars(select(Result.extra)).one()
        (typed,) = source.study_results(s, study_id)
    assert (row["cell"], row["job_id"], row["attempts"], row["status"]) == (0, job_id, 1, "ok")
    assert not {"cell", "job_id", "attempts", "status"} & set(extra) and None not in extra.values()
    back = CellResult.from_json(row)
    for field in ("latency_ms", "fidelity", "task", "paired", "inputs", "noise", "settings", "notes", "wall_s",
                  "model_size_mb", "target", "diagnostics"):
        assert getattr(back, field) == getattr(measured, field), field
    assert back.extra == {"generation": {"ttft_ms": {"p50": 12.0}}}
    # speedups are the engine's, computed when read: this baseline is its own
    assert (typed.speedup_vs_baseline, typed.speedup_method, typed.baseline_cell) == (1.0, "baseline", 0)
