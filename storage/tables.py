"""ORM classes: models, datasets, variants, studies, jobs, results, samples, environments, workers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Job statuses. Final ones never change again (except a retry of crashed/timeout below the limit).
QUEUED, RUNNING = "queued", "running"
FINAL_STATUSES = ("ok", "failed", "timeout", "crashed", "oom", "n/a", "unavailable", "cancelled")
JOB_STATUSES = (QUEUED, RUNNING, *FINAL_STATUSES)
# Final statuses that say a cell ran and did not succeed, and those that say it could never run here (a row with
# its reason, never work). The engine's typed Status (engine/results.py) has the same values: a test holds them equal.
FAILED_STATUSES = ("failed", "timeout", "crashed", "oom")
SKIPPED_STATUSES = ("n/a", "unavailable")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use storage.tables.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite hands a deleted row's id to the next row without AUTOINCREMENT: a link, a report or a log naming
# study 7 would name another study once 7 is deleted (PostgreSQL sequences never reuse ids).
_NEVER_REUSE_IDS: dict[str, Any] = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """An uploaded model, stored once by the sha256 of its bytes."""

    __tablename__ = "models"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    artifact: Mapped[dict[str, Any]] = mapped_column(JSON)  # engine.artifacts.Artifact.to_json()
    # The signed-in person who created it on a shared server (their e-mail); None on one's own machine.
    created_by: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An uploaded .npz of sample / calibration / evaluation inputs."""

    __tablename__ = "datasets"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The signed-in person who created it on a shared server (their e-mail); None on one's own machine.
    created_by: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Variant(Base):
    """A built variant file, cached by (model, chain, target format)."""

    __tablename__ = "variants"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    chain: Mapped[str] = mapped_column(String(500))
    target: Mapped[str] = mapped_column(String(32))
    path: Mapped[str | None] = mapped_column(String(1000))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Environment(Base):
    """The machine and software a result came from; deduplicated by fingerprint."""

    __tablename__ = "environments"
    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    """One model, its variants × runtimes × batch sizes, and how to measure them."""

    __tablename__ = "studies"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    variants: Mapped[list[Any]] = mapped_column(JSON)
    runtimes: Mapped[list[Any]] = mapped_column(JSON)
    batch_sizes: Mapped[list[Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    cancelled: Mapped[bool] = mapped_column(default=False)
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The worker id of the process that runs this study alone (`bench`); general workers leave its jobs be.
    # Indexed: every claim asks which studies are owned, and owned ones are few.
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    # The signed-in person who created it on a shared server (their e-mail); None on one's own machine.
    created_by: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    model: Mapped[Model] = relationship()
    jobs: Mapped[list[Job]] = relationship(back_populates="study", cascade="all, delete-orphan",
                                           passive_deletes=True, order_by="Job.cell")


class Job(Base):
    """One cell of a study, queued for a worker; its status tells how it ended."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_id", "status", "id"), _NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    cell: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(500))
    chain: Mapped[list[Any]] = mapped_column(JSON)
    runtime: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer)
    # The machine kind the cell targets on a Ray cluster (cpu-avx512, gpu-h100); None: any node with its runtime.
    machine: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    # The process group running the job now (its child's, a session of its own), on its worker's host: the
    # worker that requeues the job after a lost lease kills that group first, grandchildren included.
    pgid: Mapped[int | None] = mapped_column(Integer)
    phase: Mapped[str | None] = mapped_column(String(64))
    fraction: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    study: Mapped[Study] = relationship(back_populates="jobs")
    result: Mapped[Result | None] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                 passive_deletes=True)

    @property
    def error_text(self) -> str | None:
        """The results JSON's `error`: the type and message of a failure, the reason of any other end."""
        if self.status in ("ok", QUEUED, RUNNING):
            return None
        if self.error_type and self.status == "failed":
            return f"{self.error_type}: {self.error_message}"
        return self.error_message


class Result(Base):
    """Everything measured for one job, written in the same transaction as the job's final status."""

    __tablename__ = "results"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id", ondelete="SET NULL"))
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id", ondelete="SET NULL"))
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p90_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    mean_ms: Mapped[float | None] = mapped_column(Float)
    std_ms: Mapped[float | None] = mapped_column(Float)
    min_ms: Mapped[float | None] = mapped_column(Float)
    max_ms: Mapped[float | None] = mapped_column(Float)
    throughput_per_s: Mapped[float | None] = mapped_column(Float)
    load_s: Mapped[float | None] = mapped_column(Float)
    first_run_ms: Mapped[float | None] = mapped_column(Float)
    peak_host_mb: Mapped[float | None] = mapped_column(Float)
    peak_device_mb: Mapped[float | None] = mapped_column(Float)
    model_size_mb: Mapped[float | None] = mapped_column(Float)
    fidelity_max_abs: Mapped[float | None] = mapped_column(Float)
    fidelity_mean_abs: Mapped[float | None] = mapped_column(Float)
    fidelity_cosine: Mapped[float | None] = mapped_column(Float)
    top1_agreement: Mapped[float | None] = mapped_column(Float)
    task_name: Mapped[str | None] = mapped_column(String(64))
    task_value: Mapped[float | None] = mapped_column(Float)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    notes: Mapped[list[Any]] = mapped_column(JSON)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)  # CI of the median, iterations, build time, ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")
    samples: Mapped[Samples | None] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Samples(Base):
    """Raw per-iteration latencies of a result: little-endian float32 milliseconds."""

    __tablename__ = "samples"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Worker(Base):
    """A worker process and its heartbeat."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="idle")
    current_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServingRun(Base):
    """One `serve-bench` of a study's cell: the server it drove (a local bundle or a URL) and its batching."""

    __tablename__ = "serving_runs"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    cell: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(16))  # "local" (the cell's bundle started here) or "url"
    url: Mapped[str | None] = mapped_column(String(1000))  # the server's address when target is "url"
    # None: unknown (a server at a URL that does not state them)
    max_batch: Mapped[int | None] = mapped_column(Integer)
    max_delay_ms: Mapped[float | None] = mapped_column(Float)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # duration, windows, warm-up, inputs, machine load
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    levels: Mapped[list[ServingLevel]] = relationship(cascade="all, delete-orphan", passive_deletes=True,
                                                      order_by="ServingLevel.position")


class ServingLevel(Base):
    """One load level of a serving run: a concurrency (closed loop) or an arrival rate (open loop)."""

    __tablename__ = "serving_levels"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("serving_runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))  # "closed" or "open"
    concurrency: Mapped[int | None] = mapped_column(Integer)
    rate_rps: Mapped[float | None] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    throughput_rps: Mapped[float | None] = mapped_column(Float)
    items_per_s: Mapped[float | None] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p90_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    stable: Mapped[bool] = mapped_column()
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)  # windows, batch sizes, mean latency, error examples
