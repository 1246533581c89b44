"""The worker: claim a queued job, run it in a fresh child with limits, heartbeat, record the end.

Jobs on this machine never overlap: a worker holds the machine's measurement lock (a file lock in
the data folder) from claim to record, so several workers can share a queue without disturbing
each other's timings.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError, SQLAlchemyError

from engine.executors.local import SCRATCH_PREFIX, Outcome, child_env, run_child, stop_process_group
from engine.executors.tasks import Task
from engine.job import REFERENCE_TEMP, cell_task, reference_task
from engine.plan import Cell
from engine.results import CellResult, Status
from storage import blobs, catalogue, queue, views
from storage import results as stored
from storage.db import session
from storage.paths import data_dir, study_dir, sub_dir
from storage.tables import Dataset, Job, Study

LEASE_S = float(os.environ.get("PARETOSCOPE_WORKER_LEASE_S", 30.0))
HEARTBEAT_S = min(5.0, LEASE_S / 3)
IDLE_S = 1.0
# Progress writes to the database are throttled to this interval (phase changes always go through).
PROGRESS_EVERY_S = 1.0
# What a full, read-only, locked or unreachable database raises: waited out and retried, never the worker's end.
DB_FAULTS = (OperationalError, InternalError, InterfaceError)
# The wait after a database fault doubles from the first to the cap; a stop signal cuts it short.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# Temporary files a process leaves in the data folder are removed when a worker starts: those named with their
# maker's pid once it is gone, the others (intake's and the variant builder's staging) once untouched this long.
STALE_S = 3600.0

T = TypeVar("T")


@dataclass
class WorkerEvents:
    """Callbacks for a live view of the worker: a cell starts, reports progress, finishes (its typed result)."""

    started: Callable[[Cell, int, int], None] = lambda cell, i, n: None
    progress: Callable[[Cell, str, float], None] = lambda cell, phase, fraction: None
    finished: Callable[[Cell, CellResult, int, int], None] = lambda cell, row, i, n: None


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
                 events: WorkerEvents | None = None, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S,
                 idle_s: float = IDLE_S) -> None:
        self.id = worker_id or new_worker_id()
        self.study_id = study_id
        self.events = events or WorkerEvents()
        self.lease_s, self.heartbeat_s, self.idle_s = lease_s, heartbeat_s, idle_s
        self._stop = threading.Event()
        self._current: _Current | None = None
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._last_phase = ""
        self._progress_failing = False
        self._environment: dict[str, Any] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self, until_idle: bool = False, max_jobs: int | None = None) -> int:
        """Run jobs until stopped, until the queue is empty (`until_idle`) or `max_jobs` ran.

        A database fault (full disk, read-only file, lost server) never ends it: it is logged, waited out and the
        same step retried (see `_retry`)."""
        handlers = self._install_signals()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        done = 0
        try:
            self._remove_stale_scratch()
            self._retry("registering this worker", self._register)
            beat.start()
            while not self._stop.is_set() and (max_jobs is None or done < max_jobs):
                ran = self._retry("claiming a job", self._next_job)
                done += ran
                if not ran:
                    if until_idle and self._retry("reading the queue", self._queue_empty):
                        break
                    self._stop.wait(self.idle_s)
        except WorkerStopping:
            pass
        finally:
            self._stop.set()
            if beat.ident is not None:
                beat.join(timeout=self.heartbeat_s + 1)
            self._mark_stopped()
            self._restore_signals(handlers)
        return done

    def _register(self) -> None:
        with session() as s:
            queue.register_worker(s, self.id, socket.gethostname(), os.getpid())

    def _mark_stopped(self) -> None:
        try:
            with session() as s:
                queue.worker_heartbeat(s, self.id, "stopped", None)
        except DB_FAULTS as exc:  # the heartbeat's age tells the others soon enough
            self._log(f"could not mark this worker stopped: {_first_line(exc)}")

    def _next_job(self) -> int:
        """Requeue the jobs of dead workers, then claim and run one job; 0 when none was queued."""
        with session() as s:
            queue.requeue_expired(s, self.lease_s)
        return self._run_one()

    def _retry(self, what: str, action: Callable[[], T]) -> T:
        """`action` until the database takes it; each fault is one line on stderr and a wait that doubles up to
        BACKOFF_MAX_S. A stop during the wait raises WorkerStopping (a job in hand goes back to the queue, or
        to its lease's expiry when the database still refuses)."""
        delay = BACKOFF_FIRST_S
        while True:
            try:
                return action()
            except DB_FAULTS as exc:
                self._log(f"{what} failed, retrying in {delay:g} s (free disk space, make the database writable "
                          f"or bring its server back): {_first_line(exc)}")
            if self._stop.wait(delay):
                raise WorkerStopping(f"stopped while {what} kept failing")
            delay = min(2 * delay, BACKOFF_MAX_S)

    def _log(self, message: str) -> None:
        print(f"worker {self.id}: {message}", file=sys.stderr, flush=True)

    def _remove_stale_scratch(self) -> None:
        removed = remove_stale_scratch()
        if removed:
            self._log(f"removed {len(removed)} temporary file(s) or folder(s) that stopped processes left behind")

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
            return not queue.has_open_jobs(s, self.study_id, self.id)

    # --- heartbeat ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._beat()
            except SQLAlchemyError as exc:  # a locked, full or read-only database: beat again next time
                self._log(f"heartbeat failed, retrying: {_first_line(exc)}")

    def _beat(self) -> None:
        with self._lock:
            current = self._current
        with session() as s:
            queue.worker_heartbeat(s, self.id, "busy" if current else "idle", current.job_id if current else None)
            keep = queue.extend_lease(s, current.job_id, self.id, self.lease_s) if current else True
        if current and not keep and not current.cancelled:
            current.cancelled = True  # cancelled study (or lost lease): stop the child now
            if current.pid:
                stop_process_group(current.pid)

    # --- one job -------------------------------------------------------------------------------

    def _run_one(self) -> int:
        with measurement_lock():
            with session() as s:
                job = queue.claim_job(s, self.id, self.lease_s, self.study_id)
                if job is None:
                    return 0
                payload, cell, study_meta = self._payload(s, job)
            with self._lock:
                self._current = _Current(job.id)
            try:
                self._execute(job.id, payload, cell, study_meta)
            except WorkerStopping:
                self._give_back(job.id)
                raise
            finally:
                with self._lock:
                    self._current = None
        return 1

    def _payload(self, s: Any, job: Job) -> tuple[dict[str, Any], Cell, dict[str, Any]]:
        study: Study = job.study
        dataset = study.dataset_id and s.get(Dataset, study.dataset_id)
        cell = Cell(job.cell, job.variant, tuple(job.chain), job.runtime, job.batch_size)
        payload = {
            "model": study.model.artifact,
            "settings": study.settings,
            "study_dir": str(study_dir(study.id)),
            "data": str(blobs.path_of(dataset.sha256)) if dataset else None,
            "cell": cell.to_json(),
            "memory_limit_mb": study.settings.get("memory_limit_mb"),
        }
        base = queue.baseline_job(s, study.id, job.batch_size)
        if base is not None and base.cell != job.cell:  # the cell is timed against it in alternating rounds
            payload["baseline"] = Cell(base.cell, base.variant, tuple(base.chain), base.runtime,
                                       base.batch_size).to_json()
        progress = views.study_progress(s, study.id)
        meta = {"reference": study.reference, "model_id": study.model_id, "study_id": study.id,
                "timeout_s": float(study.settings.get("timeout_s", 600)), "total": sum(progress.values()),
                "position": sum(n for status, n in progress.items() if Status(status).final)}
        return payload, cell, meta

    def _give_back(self, job_id: int) -> None:
        """Requeue the job of a stopping worker; if the database refuses, its lease expires and another requeues it."""
        try:
            with session() as s:
                queue.set_job_process(s, job_id, self.id, None)
                queue.requeue_job(s, job_id, self.id)
        except DB_FAULTS as exc:
            self._log(f"job {job_id} goes back to the queue when its lease expires: {_first_line(exc)}")

    def _run_child(self, task: Task, job_id: int, cell: Cell, payload: dict[str, Any], timeout_s: float,
                   log: Path) -> Outcome:
        try:
            return run_child(task, payload, timeout_s, log, self._progress(job_id, cell), on_spawn=self._spawned)
        finally:
            self._note_group(job_id, None)

    def _spawned(self, pid: int) -> None:
        with self._lock:
            current = self._current
            if current is not None:
                current.pid = pid
        if current is not None:
            self._note_group(current.job_id, pid)  # the child leads a session of its own: its pgid is its pid

    def _note_group(self, job_id: int, pgid: int | None) -> None:
        """Note the job's process group (None: no child now), so a worker requeueing it after a kill -9 of this
        one can kill what the child started; one try: a full database must not hold the child up."""
        try:
            with session() as s:
                queue.set_job_process(s, job_id, self.id, pgid)
        except DB_FAULTS as exc:
            self._log(f"could not note job {job_id}'s process group (a requeue after a crash cannot stop its "
                      f"leftovers): {_first_line(exc)}")

    def _progress(self, job_id: int, cell: Cell) -> Any:
        def report(phase: str, fraction: float) -> None:
            self.events.progress(cell, phase, fraction)
            now = time.monotonic()
            if phase != self._last_phase or now - self._last_progress >= PROGRESS_EVERY_S:
                self._last_phase, self._last_progress = phase, now
                self._save_progress(job_id, phase, fraction)

        return report

    def _save_progress(self, job_id: int, phase: str, fraction: float) -> None:
        """Progress is a hint: while the database fails it is dropped (logged once), and the cell runs on."""
        try:
            with session() as s:
                queue.set_progress(s, job_id, self.id, phase, fraction)
        except DB_FAULTS as exc:
            if not self._progress_failing:
                self._log(f"progress is not saved until the database takes writes again: {_first_line(exc)}")
            self._progress_failing = True
        else:
            self._progress_failing = False

    def _execute(self, job_id: int, payload: dict[str, Any], cell: Cell, meta: dict[str, Any]) -> None:
        self.events.started(cell, meta["position"], meta["total"])
        folder = Path(payload["study_dir"])
        missing = _missing_model(payload["model"])
        if missing:
            self._record(job_id, cell, Outcome(Status.FAILED, error=missing, error_type="ModelFileMissing"), meta)
            return
        refused = _refused_here(payload["model"])
        if refused:  # a shared server's worker never loads code a visitor wrote, whoever queued it
            self._record(job_id, cell, Outcome(Status.FAILED, error=refused, error_type="SharedModeRefused"), meta)
            return
        reference = meta["reference"] or self._ensure_reference(job_id, meta["study_id"], payload, cell, folder,
                                                                meta["timeout_s"])
        if reference.get("error"):
            outcome = Outcome(Status.FAILED, error=reference["error"], error_type="ReferenceFailed")
        else:
            outcome = self._run_child(cell_task, job_id, cell, payload, meta["timeout_s"],
                                      folder / "logs" / f"cell-{cell.index:04d}.log")
        with self._lock:
            cancelled = self._current is not None and self._current.cancelled
        if cancelled and outcome.status != Status.OK:
            outcome = Outcome(Status.CANCELLED, error="the study was cancelled while this cell ran")
        self._record(job_id, cell, outcome, meta)

    def _ensure_reference(self, job_id: int, study_id: int, payload: dict[str, Any], cell: Cell, folder: Path,
                          timeout_s: float) -> dict[str, Any]:
        """The study's fp32 reference outputs, computed once (a file lock guards against two workers)."""
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".reference.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            reference = self._retry("reading the study's reference", lambda: _stored_reference(study_id))
            if reference:
                return reference
            outcome = self._run_child(reference_task, job_id, cell, payload, timeout_s,
                                      folder / "logs" / "reference.log")
            if outcome.status == Status.OK and outcome.result is not None:
                reference = outcome.result
            else:
                reference = {"error": f"the fp32 reference outputs could not be computed "
                                      f"({outcome.status}: {outcome.error})"}
            self._retry("storing the study's reference", lambda: _store_reference(study_id, reference))
            return reference

    def _record(self, job_id: int, cell: Cell, outcome: Outcome, meta: dict[str, Any],
                environment: dict[str, Any] | None = None) -> None:
        """Store the job's end, retried until the database takes it (the job stays running meanwhile).

        `environment`: the machine that ran it when not this one (a Ray node's)."""
        result, samples = _measured(outcome)
        ended, row = self._retry(f"recording the end of job {job_id}",
                                 lambda: self._store_end(job_id, cell, outcome, result, samples, meta, environment))
        if ended is not None and ended != Status.QUEUED and row is not None:
            self.events.finished(cell, row, meta["position"], meta["total"])

    def _store_end(self, job_id: int, cell: Cell, outcome: Outcome, result: CellResult | None,
                   samples: np.ndarray | None, meta: dict[str, Any],
                   environment: dict[str, Any] | None = None) -> tuple[str | None, CellResult | None]:
        from engine.measure.environment import collect, node_record

        with session() as s:
            env_id = variant_id = None
            if result is not None:
                if environment is None and self._environment is None:
                    self._environment = collect()  # the machine and libraries: the same for every job
                machine = environment if environment is not None else self._environment or {}
                threads = (result.settings or {}).get("threads")
                env_id = catalogue.record_environment(s, {**machine, "threads": threads})
                result.extra.setdefault("node", node_record(machine))
                if (result.variant_path or cell.variant == "baseline") and result.model_size_mb is not None:
                    variant_id = catalogue.record_variant(s, meta["model_id"], cell.variant, result.target or "",
                                                          result.variant_path, int(result.model_size_mb * 2**20))
            queue.set_job_process(s, job_id, self.id, None)  # a pgid never outlives the run that noted it
            ended = queue.finish_job(s, job_id, self.id, outcome.status, result=result.to_json() if result else None,
                                     samples=samples, error_type=outcome.error_type, error=outcome.error,
                                     traceback=outcome.traceback, environment_id=env_id, variant_id=variant_id)
            job = s.get(Job, job_id, populate_existing=True)
            row = CellResult.from_json(stored.result_dict(job, job.result)) if job is not None else None
        return ended, row


def _measured(outcome: Outcome) -> tuple[CellResult | None, np.ndarray | None]:
    """What an ok child measured, with the job's whole time in its child, and its raw latency samples apart (they
    go to their own table, not the row)."""
    if outcome.status != Status.OK or outcome.result is None:
        return None, None
    result = CellResult.from_json(outcome.result)
    result.wall_s = outcome.elapsed_s
    samples = np.asarray(result.samples_ms or [], dtype=np.float32)
    result.samples_ms = None
    return result, samples


def _stored_reference(study_id: int) -> dict[str, Any] | None:
    with session(write=False) as s:
        study = s.get(Study, study_id)
        return study.reference if study else None


def _store_reference(study_id: int, reference: dict[str, Any]) -> None:
    with session() as s:
        study = s.get(Study, study_id)
        if study is not None:
            study.reference = reference


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_model(artifact: dict[str, Any]) -> str | None:
    """Why the study's model cannot be loaded before any child tries (a loader would blame the path's form)."""
    path = Path(artifact["path"])
    if path.exists():
        return None
    return f"the model's file is missing from the data folder ({path}): upload it again"


def _refused_here(artifact: dict[str, Any]) -> str | None:
    """Why this worker (in shared mode) will not load the study's model: a format that carries code."""
    from engine.errors import UserError
    from engine.shared import refuse_code_format

    try:
        refuse_code_format(artifact["format"], Path(artifact["path"]).name)
    except UserError as exc:
        return str(exc)
    return None


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
            if queue.live_workers(s, within_s=max(3 * HEARTBEAT_S, 15.0), general=True):
                return None
        pid_file = folder / "auto-worker.pid"
        if pid_file.is_file() and _alive(pid_file.read_text()):
            return None  # started moments ago and still starting up
        log = open(sub_dir("logs") / "worker.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "engine", "worker"], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=child_env())
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


def remove_stale_scratch(max_age_s: float = STALE_S) -> list[Path]:
    """Remove the temporary files and folders that killed processes left in the data folder; return them.

    A name that carries its maker's pid (`tmp/job-<pid>-*`, blobs' `.incoming-<pid>-*`, a study's
    `.reference-<pid>-*`) is stale once that process is gone; intake's and the variant builder's staging folders
    (`models/.*`, `variants/.*`) and the dashboard's staged uploads (`uploads/*`) once nothing in them changed for
    `max_age_s`. A live process's are never touched.
    """
    base = data_dir()
    kinds = ((f"tmp/{SCRATCH_PREFIX}", True), (f"blobs/{blobs.INCOMING}", True), (f"studies/*/{REFERENCE_TEMP}", True),
             ("models/.", False), ("variants/.", False), ("uploads/", False))
    removed = []
    for pattern, has_pid in kinds:
        prefix = pattern.rsplit("/", 1)[1]
        for path in base.glob(f"{pattern}*"):
            pid = _maker_pid(path.name[len(prefix):]) if has_pid else None
            if _stale(path, pid, max_age_s) and _remove(path):
                removed.append(path)
    return removed


def _maker_pid(rest: str) -> int | None:
    """The pid in `<pid>-<random>`; None for a name from before pids were part of it."""
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _stale(path: Path, pid: int | None, max_age_s: float) -> bool:
    try:
        if pid is not None:
            return not _made_by_live_process(pid, path.lstat().st_mtime)
        return time.time() - _newest_mtime(path) > max_age_s
    except FileNotFoundError:  # its maker finished with it meanwhile
        return False


def _made_by_live_process(pid: int, mtime: float) -> bool:
    """The process `pid` runs and is older than the file: a pid reused since (a restarted container counts from 1
    again) names a younger process. Two seconds of slack: a process's start time is known to about a second."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= mtime + 2
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: alive, and its files are not ours to judge
        return True


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # not ours to remove (permissions): leave it, say so
        print(f"could not remove the stale temporary {path} ({exc}); remove it by hand", file=sys.stderr, flush=True)
        return False
    return True
