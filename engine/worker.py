"""The worker: claim a queued job, run it in a fresh child with limits, heartbeat, record the end.

Jobs on this machine never overlap: a worker holds the machine's measurement lock (a file lock in
the data folder) from claim to record, so several workers can share a queue without disturbing
each other's timings.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from engine.executors.local import Outcome, run_child, stop_process_group
from engine.paths import child_env, sub_dir
from engine.plan import Cell
from engine.study import StudyEvents, study_dir
from storage import blobs
from storage import queries as q
from storage.db import session
from storage.tables import Job, Study

LEASE_S = float(os.environ.get("PARETOSCOPE_WORKER_LEASE_S", 30.0))
HEARTBEAT_S = min(5.0, LEASE_S / 3)
IDLE_S = 1.0
# Progress writes to the database are throttled to this interval (phase changes always go through).
PROGRESS_EVERY_S = 1.0


class WorkerStopping(BaseException):
    """SIGTERM/SIGINT arrived: stop the child, requeue its job, exit cleanly.

    A BaseException, like KeyboardInterrupt: the signal handler raises it wherever the main thread is, also
    inside a database call, where SQLAlchemy would wrap an Exception into a StatementError (and generic
    `except Exception` handlers would swallow it)."""


@dataclass
class _Current:
    job_id: int
    pid: int | None = None
    cancelled: bool = False


@contextlib.contextmanager
def measurement_lock() -> Iterator[None]:
    """One measurement at a time on this machine, across every worker process."""
    path = sub_dir("locks") / "measure.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_worker_id() -> str:
    """host-pid-hex: names one worker; `bench` makes it before its study exists, to store it as the owner."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, *, worker_id: str | None = None, study_id: int | None = None,
                 events: StudyEvents | None = None, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S,
                 idle_s: float = IDLE_S) -> None:
        self.id = worker_id or new_worker_id()
        self.study_id = study_id
        self.events = events or StudyEvents()
        self.lease_s, self.heartbeat_s, self.idle_s = lease_s, heartbeat_s, idle_s
        self._stop = threading.Event()
        self._current: _Current | None = None
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._last_phase = ""
        self._environment: dict[str, Any] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self, until_idle: bool = False, max_jobs: int | None = None) -> int:
        """Run jobs until stopped, until the queue is empty (`until_idle`) or `max_jobs` ran."""
        handlers = self._install_signals()
        with session() as s:
            q.register_worker(s, self.id, socket.gethostname(), os.getpid())
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        done = 0
        try:
            while not self._stop.is_set() and (max_jobs is None or done < max_jobs):
                with session() as s:
                    q.requeue_expired(s, self.lease_s)
                ran = self._run_one()
                done += ran
                if not ran:
                    if until_idle and self._queue_empty():
                        break
                    self._stop.wait(self.idle_s)
        except WorkerStopping:
            pass
        finally:
            self._stop.set()
            beat.join(timeout=self.heartbeat_s + 1)
            with session() as s:
                q.worker_heartbeat(s, self.id, "stopped", None)
            self._restore_signals(handlers)
        return done

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum: int, frame: Any) -> None:
            self._stop.set()
            for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not interrupt the cleanup
                signal.signal(sig, signal.SIG_IGN)
            raise WorkerStopping(signal.Signals(signum).name)

        return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _restore_signals(handlers: dict[int, Any]) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def _queue_empty(self) -> bool:
        """Nothing queued and nothing in flight: a running job may still come back if its worker died."""
        with session(write=False) as s:
            return not q.has_open_jobs(s, self.study_id, self.id)

    # --- heartbeat ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._beat()
            except SQLAlchemyError as exc:  # a locked, full or read-only database: beat again next time
                print(f"worker {self.id}: heartbeat failed, retrying: {str(exc).splitlines()[0]}", file=sys.stderr,
                      flush=True)

    def _beat(self) -> None:
        with self._lock:
            current = self._current
        with session() as s:
            q.worker_heartbeat(s, self.id, "busy" if current else "idle", current.job_id if current else None)
            keep = q.extend_lease(s, current.job_id, self.id, self.lease_s) if current else True
        if current and not keep and not current.cancelled:
            current.cancelled = True  # cancelled study (or lost lease): stop the child now
            if current.pid:
                stop_process_group(current.pid)

    # --- one job -------------------------------------------------------------------------------

    def _run_one(self) -> int:
        with measurement_lock():
            with session() as s:
                job = q.claim_job(s, self.id, self.lease_s, self.study_id)
                if job is None:
                    return 0
                payload, cell, study_meta = self._payload(s, job)
            with self._lock:
                self._current = _Current(job.id)
            try:
                self._execute(job.id, payload, cell, study_meta)
            except WorkerStopping:
                with session() as s:
                    q.requeue_job(s, job.id, self.id)
                raise
            finally:
                with self._lock:
                    self._current = None
        return 1

    def _payload(self, s: Any, job: Job) -> tuple[dict[str, Any], Cell, dict[str, Any]]:
        study: Study = job.study
        dataset = study.dataset_id and s.get(q.Dataset, study.dataset_id)
        cell = Cell(job.cell, job.variant, tuple(job.chain), job.runtime, job.batch_size)
        payload = {
            "model": study.model.artifact,
            "settings": study.settings,
            "study_dir": str(study_dir(study.id)),
            "data": str(blobs.path_of(dataset.sha256)) if dataset else None,
            "cell": cell.to_json(),
            "memory_limit_mb": study.settings.get("memory_limit_mb"),
        }
        progress = q.study_progress(s, study.id)
        meta = {"reference": study.reference, "model_id": study.model_id, "study_id": study.id,
                "timeout_s": float(study.settings.get("timeout_s", 600)), "total": sum(progress.values()),
                "position": sum(n for status, n in progress.items() if status in q.FINAL_STATUSES)}
        return payload, cell, meta

    def _spawned(self, pid: int) -> None:
        with self._lock:
            if self._current is not None:
                self._current.pid = pid

    def _progress(self, job_id: int, cell: Cell) -> Any:
        def report(phase: str, fraction: float) -> None:
            self.events.progress(cell, phase, fraction)
            now = time.monotonic()
            if phase != self._last_phase or now - self._last_progress >= PROGRESS_EVERY_S:
                self._last_phase, self._last_progress = phase, now
                with session() as s:
                    q.set_progress(s, job_id, self.id, phase, fraction)

        return report

    def _execute(self, job_id: int, payload: dict[str, Any], cell: Cell, meta: dict[str, Any]) -> None:
        self.events.started(cell, meta["position"], meta["total"])
        folder = Path(payload["study_dir"])
        missing = _missing_model(payload["model"])
        if missing:
            self._record(job_id, cell, Outcome("failed", error=missing, error_type="ModelFileMissing"), meta)
            return
        reference = meta["reference"] or self._ensure_reference(job_id, meta["study_id"], payload, cell, folder,
                                                                meta["timeout_s"])
        if reference.get("error"):
            outcome = Outcome("failed", error=reference["error"], error_type="ReferenceFailed")
        else:
            outcome = run_child("cell", payload, meta["timeout_s"], folder / "logs" / f"cell-{cell.index:04d}.log",
                                self._progress(job_id, cell), on_spawn=self._spawned)
        with self._lock:
            cancelled = self._current is not None and self._current.cancelled
        if cancelled and outcome.status != "ok":
            outcome = Outcome("cancelled", error="the study was cancelled while this cell ran")
        self._record(job_id, cell, outcome, meta)

    def _ensure_reference(self, job_id: int, study_id: int, payload: dict[str, Any], cell: Cell, folder: Path,
                          timeout_s: float) -> dict[str, Any]:
        """The study's fp32 reference outputs, computed once (a file lock guards against two workers)."""
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".reference.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            with session(write=False) as s:
                stored = s.get(Study, study_id)
                reference = stored.reference if stored else None
            if reference:
                return reference
            outcome = run_child("reference", payload, timeout_s, folder / "logs" / "reference.log",
                                self._progress(job_id, cell), on_spawn=self._spawned)
            if outcome.status == "ok" and outcome.result is not None:
                reference = outcome.result
            else:
                reference = {"error": f"the fp32 reference outputs could not be computed "
                                      f"({outcome.status}: {outcome.error})"}
            with session() as s:
                study = s.get(Study, study_id)
                if study is not None:
                    study.reference = reference
            return reference

    def _record(self, job_id: int, cell: Cell, outcome: Outcome, meta: dict[str, Any]) -> None:
        from engine.measure.environment import collect

        samples = None
        result = outcome.result
        if outcome.status == "ok" and result is not None:
            result = dict(result)
            samples = np.asarray(result.pop("samples_ms"), dtype=np.float32)
            result["wall_s"] = outcome.elapsed_s
        with session() as s:
            env_id = variant_id = None
            if result is not None:
                if self._environment is None:
                    self._environment = collect()  # the machine and libraries: the same for every job
                threads = result.get("settings", {}).get("threads")
                env_id = q.record_environment(s, {**self._environment, "threads": threads})
                if result.get("variant_path") or cell.variant == "baseline":
                    variant_id = q.record_variant(s, meta["model_id"], cell.variant,
                                                  result.get("target", ""),
                                                  result.get("variant_path"), int(result["model_size_mb"] * 2**20))
            stored = q.finish_job(s, job_id, self.id, outcome.status, result=result, samples=samples,
                                  error_type=outcome.error_type, error=outcome.error, traceback=outcome.traceback,
                                  environment_id=env_id, variant_id=variant_id)
            job = s.get(Job, job_id, populate_existing=True)
            row = q.result_dict(job, job.result) if job is not None else {}
        if stored is not None and stored != q.QUEUED:
            self.events.finished(cell, row, meta["position"], meta["total"])


def _missing_model(artifact: dict[str, Any]) -> str | None:
    """Why the study's model cannot be loaded before any child tries (a loader would blame the path's form)."""
    path = Path(artifact["path"])
    if path.exists():
        return None
    return f"the model's file is missing from the data folder ({path}): upload it again"


def ensure_local_worker() -> int | None:
    """Start one background worker when none has a live heartbeat; return its pid (None if one runs).

    The dashboard calls this on start. A file lock and a pid file keep two sessions from starting two
    workers while the first is still importing.
    """
    import subprocess
    import sys

    if os.environ.get("PARETOSCOPE_NO_AUTO_WORKER") == "1":
        return None
    folder = sub_dir("locks")
    with open(folder / "auto-worker.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with session(write=False) as s:
            if q.live_workers(s, within_s=max(3 * HEARTBEAT_S, 15.0), general=True):
                return None
        pid_file = folder / "auto-worker.pid"
        if pid_file.is_file() and _alive(pid_file.read_text()):
            return None  # started moments ago and still starting up
        log = open(sub_dir("logs") / "worker.log", "ab")
        root = Path(__file__).resolve().parents[1]
        process = subprocess.Popen([sys.executable, "-m", "engine", "worker"], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(root),
                                   env=child_env(root))
        log.close()
        pid_file.write_text(str(process.pid))
        return process.pid


def _alive(pid_text: str) -> bool:
    """A running (not zombie) process: a worker we started but never reaped stays a zombie."""
    import psutil

    try:
        return psutil.Process(int(pid_text)).status() != psutil.STATUS_ZOMBIE
    except (ValueError, psutil.Error):
        return False


def local_worker_starting() -> bool:
    """A worker this dashboard started is alive but has not sent its first heartbeat yet."""
    pid_file = sub_dir("locks") / "auto-worker.pid"
    return pid_file.is_file() and _alive(pid_file.read_text())
