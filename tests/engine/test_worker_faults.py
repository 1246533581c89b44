"""A worker that survives its faults: a full or read-only database, a kill -9 with a grandchild left running, a
crash while the reference is written, and the temporary files killed processes leave behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from sqlalchemy import event, func, select

from engine.artifacts import intake
from engine.plan import StudySettings
from engine.worker import Worker, remove_stale_scratch
from storage import db
from engine.report import source
from storage import queue
from storage.db import session
from storage.tables import Job, Result, Samples, Study
from tests.engine.test_worker import jobs, settings, wait_for, worker
from tests.storage.helpers import make_study

# Enough iterations that every result's raw samples (4 bytes each) need new database pages, however fast the box.
MANY_SAMPLES = 20_000


@pytest.fixture(autouse=True)
def fresh_engines() -> Any:
    db.reset()
    yield
    db.reset()


class SqliteFault:
    """A real SQLite fault on every connection this process takes from the pool, switched on and off by `kind`:
    "full" caps the file at its current size (max_page_count: "database or disk is full"), "read-only" refuses
    every write (query_only: "attempt to write a readonly database"), None lifts both."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.engine = db.get_engine()
        raw = self.engine.raw_connection()
        try:
            raw.cursor().execute("VACUUM")  # no free pages left inside the file: a new row must grow it
        finally:
            raw.close()
        event.listen(self.engine, "checkout", self._apply)

    def _apply(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_conn.cursor()
        # max_page_count cannot go below the file's size: 1 means "exactly as big as now"
        cursor.execute(f"PRAGMA max_page_count={1 if self.kind == 'full' else 2**31}")
        cursor.execute(f"PRAGMA query_only={int(self.kind == 'read-only')}")
        cursor.close()

    def close(self) -> None:
        event.remove(self.engine, "checkout", self._apply)


class Stderr:
    """sys.stderr for the worker's threads: keeps the lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.lines.extend(line for line in text.splitlines() if line.strip())
        return len(text)

    def flush(self) -> None:
        pass

    def matching(self, pattern: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if re.search(pattern, line)]


def watch_stderr(monkeypatch: pytest.MonkeyPatch) -> Stderr:
    """Called in the test itself: pytest sets its own sys.stderr after the fixtures ran."""
    capture = Stderr()
    monkeypatch.setattr(sys, "stderr", capture)
    return capture


def run_in_thread(w: Worker) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w.run(until_idle=True)
        except BaseException as exc:  # the test asserts there was none
            errors.append(exc)

    thread = threading.Thread(target=run, name="worker", daemon=True)
    thread.start()
    return thread, errors


def join(thread: threading.Thread, errors: list[BaseException]) -> None:
    thread.join(300)
    assert not thread.is_alive(), "the worker did not end"
    assert not errors, f"the worker died: {errors[0]!r}"


def wait_for_lines(stderr: Stderr, pattern: str, thread: threading.Thread, errors: list[BaseException],
                   count: int = 1) -> None:
    """`count` stderr lines matching `pattern` from a worker that is still running."""
    wait_for(lambda: len(stderr.matching(pattern)) >= count or not thread.is_alive(), timeout=300,
             what=f"{count} line(s) matching {pattern!r}")
    assert thread.is_alive() and not errors, f"the worker died: {errors[0]!r}" if errors else "the worker ended"


def reference_stored(study_id: int) -> bool:
    with session(write=False) as s:
        return s.get(Study, study_id).reference is not None


def assert_one_result_each(study_id: int) -> list[Job]:
    ended = jobs(study_id)
    assert [j.status for j in ended] == ["ok"] * len(ended), [(j.status, j.error_message) for j in ended]
    with session(write=False) as s:
        for job in ended:
            assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job.id)) == 1
        counts = s.scalars(select(Samples.count).join(Result).where(Result.study_id == study_id)).all()
        assert len(counts) == len(ended) and min(counts) >= MANY_SAMPLES
        assert s.get(Study, study_id).finished_at is not None
    assert all(job.pgid is None for job in ended)
    return ended


def many_samples() -> dict[str, Any]:
    return {**settings(), "measure": {"warmup": 1, "iterations": MANY_SAMPLES, "min_seconds": 0.0, "rounds": 0}}


# --- 1. database faults ---------------------------------------------------------------------------------------


def test_a_full_disk_is_waited_out_and_every_job_ends_once(data_dir: Path, mlp_onnx: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = watch_stderr(monkeypatch)
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(3, "onnxruntime", settings=many_samples(), artifact=artifact)
    fault = SqliteFault()
    thread, errors = run_in_thread(Worker())
    wait_for(lambda: reference_stored(study_id), timeout=300, what="the study's reference outputs")
    fault.kind = "full"  # from here on no result fits in the database
    wait_for_lines(stderr, r"recording the end of job \d+ failed, retrying .*database or disk is full", thread, errors,
                   count=2)
    assert [j.status for j in jobs(study_id)].count("running") == 1  # its end waits, the job is not lost
    fault.kind = None
    join(thread, errors)
    fault.close()
    assert [j.attempts for j in assert_one_result_each(study_id)] == [1, 1, 1]


def test_a_read_only_database_is_waited_out_and_a_stop_leaves_the_job_to_its_lease(
        data_dir: Path, mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = watch_stderr(monkeypatch)
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(2, "onnxruntime", settings=many_samples(), artifact=artifact)
    fault = SqliteFault()
    fault.kind = "read-only"
    first = Worker(lease_s=3, heartbeat_s=0.5)
    thread, errors = run_in_thread(first)
    # it backs off and retries rather than exits
    wait_for_lines(stderr, r"registering this worker failed, retrying .*readonly", thread, errors, count=2)
    fault.kind = None
    wait_for(lambda: reference_stored(study_id), timeout=300, what="the study's reference outputs")
    fault.kind = "read-only"
    wait_for_lines(stderr, r"recording the end of job \d+ failed, retrying .*readonly", thread, errors)
    first._stop.set()  # what SIGTERM does; the database still refuses the job's end and its requeue
    join(thread, errors)
    assert stderr.matching(r"goes back to the queue when its lease expires")
    assert sorted(j.status for j in jobs(study_id)) == ["queued", "running"]
    fault.kind = None
    thread, errors = run_in_thread(Worker(lease_s=3, heartbeat_s=0.5))  # requeues it once the lease expired
    join(thread, errors)
    fault.close()
    assert sorted(j.attempts for j in assert_one_result_each(study_id)) == [1, 2]  # the left job ran twice


# --- 2. reference outputs written whole or not at all ---------------------------------------------------------


def test_reference_outputs_are_written_whole_or_not_at_all(tmp_path: Path, mlp_onnx: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import job, prepare

    artifact = intake(mlp_onnx)
    study_settings = StudySettings.from_json(settings())
    folder = tmp_path / "study"
    folder.mkdir()

    def compute() -> dict[str, Any]:
        return job.compute_reference(folder, artifact, None, study_settings, lambda phase, fraction: None)

    def disk_full_midway(file: Any, **arrays: Any) -> None:
        with open(file, "wb") if isinstance(file, str | os.PathLike) else contextlib.nullcontext(file) as out:
            out.write(b"PK\x03\x04 the first bytes of an archive")
        raise OSError("No space left on device")

    def down_before_rename(src: Any, dst: Any) -> None:
        raise OSError("the machine went down before the rename")

    for module, name, crash in ((np, "savez", disk_full_midway), (os, "replace", down_before_rename)):
        with monkeypatch.context() as patch:
            patch.setattr(module, name, crash)
            with pytest.raises(OSError):
                compute()
        assert list(folder.iterdir()) == [], f"a crash in {name} left a file a cell would read"
    compute()
    assert [p.name for p in folder.iterdir()] == [prepare.REFERENCE_FILE]
    inputs, outputs, _labels = prepare.load_reference(folder)
    assert outputs[0].shape[0] == next(iter(inputs.values())).shape[0]


# --- 4. no process of a job outlives its lease ------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_requeued_jobs_old_process_group_is_killed_first(data_dir: Path, mlp_onnx: Path) -> None:
    """kill -9 of a worker whose cell started a grandchild that ignores SIGTERM: the cell dies with its worker
    (parent-death signal), the grandchild does not; the worker that requeues the job kills its process group."""
    artifact = intake(mlp_onnx).to_json()
    study_id = make_study(1, ["test-orphan"], settings=settings(timeout_s=600), artifact=artifact)
    first = worker(data_dir, lease_s=2)
    pids = data_dir / "test-pids"  # the grandchild's pid, then the hanging cell's
    wait_for(lambda: pids.exists() and len(list(pids.iterdir())) == 2, timeout=300, what="the cell to hang")
    (running,) = jobs(study_id)
    assert running.pgid is not None and running.status == "running"
    group = [int(p.name) for p in pids.iterdir()]
    assert all(os.getpgid(pid) == running.pgid for pid in group)
    grandchild = next(pid for pid in group if pid != running.pgid)
    stubborn = psutil.Process(grandchild)  # psutil refuses to signal a pid reused since
    first.kill()
    first.wait()
    try:
        wait_for(lambda: not alive(running.pgid), what="the cell to die with its worker")
        assert alive(grandchild)  # what the parent-death signal cannot reach
        second = worker(data_dir, "--until-idle", lease_s=2)
        _out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        wait_for(lambda: not alive(grandchild), what="the grandchild to be killed")
    finally:
        with contextlib.suppress(psutil.Error):  # a failed run must not leave it sleeping for an hour
            stubborn.kill()
    (ended,) = jobs(study_id)
    assert (ended.status, ended.attempts, ended.pgid) == ("ok", 2, None)
    with session(write=False) as s:
        assert len(source.study_results(s, study_id)) == 1


def test_a_requeue_kills_only_the_process_groups_noted_on_this_host(data_dir: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]
    here = subprocess.Popen(sleeper, start_new_session=True)
    there = subprocess.Popen(sleeper, start_new_session=True)  # its pid, as another machine's pgid
    try:
        study_id = make_study(2)
        with session() as s:
            queue.register_worker(s, "local", socket.gethostname(), 1)
            queue.register_worker(s, "remote", "another-machine", 1)
        for worker_id, process in (("local", here), ("remote", there)):
            with session() as s:
                claimed = queue.claim_job(s, worker_id, lease_s=-1, study_id=study_id)  # a lease already expired
                assert claimed is not None
                queue.set_job_process(s, claimed.id, worker_id, process.pid)
        with session() as s:
            assert queue.requeue_expired(s, lease_s=30) == 2
        assert here.wait(60) == -signal.SIGKILL
        assert there.poll() is None
        assert [(j.status, j.pgid) for j in jobs(study_id)] == [("queued", None), ("queued", None)]
    finally:
        for process in (here, there):
            process.kill()
            process.wait()


# --- 5. stale temporary files ------------------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_entry(path: Path, age_s: float = 0.0, folder: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        path.mkdir()
        (path / "part").write_bytes(b"x")
    else:
        path.write_bytes(b"x")
    when = time.time() - age_s
    for item in [path, *path.rglob("*")] if folder else [path]:
        os.utime(item, (when, when))
    return path


def test_a_starting_worker_removes_what_killed_processes_left_and_nothing_in_use(data_dir: Path) -> None:
    me, gone, hour = os.getpid(), dead_pid(), 3600.0
    started = psutil.Process(me).create_time()
    stale = [
        make_entry(data_dir / "tmp" / f"job-{gone}-abc"),
        make_entry(data_dir / "tmp" / f"job-{me}-old", age_s=time.time() - started + 60),  # a reused pid's
        make_entry(data_dir / "blobs" / f".incoming-{gone}-abc", folder=False),
        make_entry(data_dir / "studies" / "3" / f".reference-{gone}-abc.npz", folder=False),
        make_entry(data_dir / "models" / ".0123456789ab-abc", age_s=2 * hour),
        make_entry(data_dir / "variants" / ".01234567-abc", age_s=2 * hour),
        make_entry(data_dir / "tmp" / "job-abc", age_s=2 * hour),  # named before pids were
        make_entry(data_dir / "uploads" / "0f1e", age_s=2 * hour),  # a dashboard killed while inspecting
    ]
    kept = [
        make_entry(data_dir / "tmp" / f"job-{me}-live"),
        make_entry(data_dir / "blobs" / f".incoming-{me}-live", folder=False),
        make_entry(data_dir / "models" / ".0123456789ab-new"),  # an intake in progress
        make_entry(data_dir / "variants" / ".01234567-new"),
        make_entry(data_dir / "uploads" / "fresh"),  # an upload being inspected now
        make_entry(data_dir / "models" / ("ab" * 32), age_s=2 * hour),  # a stored model
        make_entry(data_dir / "studies" / "3" / "reference.npz", age_s=2 * hour, folder=False),
        make_entry(data_dir / "studies" / "3" / ".reference.lock", age_s=2 * hour, folder=False),
    ]
    fresh_inside_old = make_entry(data_dir / "models" / ".0123456789ab-busy", age_s=2 * hour)
    (fresh_inside_old / "part").touch()  # still being written: its folder is old, a file in it is not
    kept.append(fresh_inside_old)
    Worker().run(until_idle=True)  # an empty queue: it only starts and stops
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert remove_stale_scratch() == []
