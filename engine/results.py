"""The results contract: what one cell produced, typed, with the codec of the documented results JSON.

Built once in the cell's child process and read as these types by the worker, the CLI and the reports; the JSON
form is the results JSON of docs/architecture.md (additions only). Standard library only: the Hugging Face Space
viewer carries a copy of this file beside the report code that reads it (engine/report/space.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A cell's state: queued or running, then one final status."""

    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    OOM = "oom"
    NOT_APPLICABLE = "n/a"
    UNAVAILABLE = "unavailable"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


# Final statuses of a cell that ran and did not succeed, and of one that could never run here (a row with its
# reason, never work).
FAILED = (Status.FAILED, Status.TIMEOUT, Status.CRASHED, Status.OOM)
SKIPPED = (Status.NOT_APPLICABLE, Status.UNAVAILABLE)
FINAL = tuple(s for s in Status if s.final)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pair(value: Any) -> tuple[float, float] | None:
    if not value or None in value:
        return None
    low, high = value
    return float(low), float(high)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class LatencySummary:
    """Per-call latency in ms over the timed iterations, with the bootstrap 95% interval of the median."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p50_ci95: tuple[float, float] | None = None
    iterations: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["p50_ci95"] = list(self.p50_ci95) if self.p50_ci95 else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LatencySummary | None:
        if not data:
            return None
        return cls(**{k: _float(data.get(k)) for k in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")},
                   p50_ci95=_pair(data.get("p50_ci95")), iterations=_int(data.get("iterations")))


@dataclass(frozen=True)
class Fidelity:
    """The variant's outputs against the fp32 reference's on the same inputs."""

    max_abs: float | None = None
    mean_abs: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    pooled_cosine: float | None = None  # encoders: the cosine of mean-pooled embeddings

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Fidelity | None:
        if not data:
            return None
        return cls(**{f.name: _float(data.get(f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class TaskMetric:
    """The task's own metric where the data has labels (e.g. top-1 accuracy)."""

    name: str
    value: float | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TaskMetric | None:
        return cls(str(data["name"]), _float(data.get("value"))) if data and data.get("name") is not None else None


@dataclass(frozen=True)
class Rounds:
    """The cell timed against its baseline in alternating rounds: the result's `paired` record.

    `error` alone when the baseline's process failed (the cell then keeps its own timings)."""

    baseline_cell: int
    rounds: int | None = None
    speedup: float | None = None
    ci95: tuple[float, float] | None = None
    ratios: tuple[float, ...] = ()
    cell_p50_ms: float | None = None
    baseline_p50_ms: float | None = None
    block_iterations: tuple[int, int] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"baseline_cell": self.baseline_cell, "error": self.error}
        return {"baseline_cell": self.baseline_cell, "rounds": self.rounds, "speedup": self.speedup,
                "ci95": list(self.ci95) if self.ci95 else None, "ratios": list(self.ratios),
                "cell_p50_ms": self.cell_p50_ms, "baseline_p50_ms": self.baseline_p50_ms,
                "block_iterations": list(self.block_iterations) if self.block_iterations else None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Rounds | None:
        if not data:
            return None
        iterations = data.get("block_iterations")
        return cls(baseline_cell=int(data["baseline_cell"]), rounds=_int(data.get("rounds")),
                   speedup=_float(data.get("speedup")), ci95=_pair(data.get("ci95")),
                   ratios=tuple(float(r) for r in data.get("ratios") or ()),
                   cell_p50_ms=_float(data.get("cell_p50_ms")), baseline_p50_ms=_float(data.get("baseline_p50_ms")),
                   block_iterations=(int(iterations[0]), int(iterations[1])) if iterations else None,
                   error=data.get("error"))


@dataclass
class CellResult:
    """One cell of a study: which variant on which runtime at which batch size, how it ended, what it measured.

    Fields that do not apply are None, never invented. Keys of the JSON this version does not know (a newer
    producer's additions) are kept in `extra` and written back as they came."""

    variant: str
    runtime: str
    batch_size: int
    status: Status
    cell: int | None = None
    job_id: int | None = None
    error: str | None = None
    attempts: int | None = None
    latency_ms: LatencySummary | None = None
    throughput_per_s: float | None = None
    load_s: float | None = None
    first_run_ms: float | None = None
    peak_host_mb: float | None = None
    peak_device_mb: float | None = None
    model_size_mb: float | None = None
    fidelity: Fidelity | None = None
    task: TaskMetric | None = None
    settings: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # wave 2 additions
    inputs: dict[str, Any] | None = None  # how the inputs were made (data file or synthesized, roles)
    device_metrics: dict[str, Any] | None = None
    build_s: float | None = None
    train_s: float | None = None
    build_details: dict[str, Any] | None = None
    target: str | None = None  # the format the runtime consumed
    variant_path: str | None = None
    machine_load: dict[str, Any] | None = None
    noise: dict[str, Any] | None = None
    paired: Rounds | None = None
    # why it measured what it did: {"quantization": coverage of the int8 chain or None, "hardware": a verdict or None}
    diagnostics: dict[str, Any] | None = None
    wall_s: float | None = None  # the job's whole time in its child: build, load, time, check
    # from the study's baseline cells, computed where reports are (engine.report.speedups)
    speedup_vs_baseline: float | None = None
    speedup_ci95: tuple[float, float] | None = None
    speedup_method: str | None = None  # "interleaved" (rounds), "separate" (two timings) or "baseline" (1.0)
    speedup_rounds: int | None = None
    baseline_cell: int | None = None
    samples_ms: list[float] | None = None  # raw per-call latencies, only where asked for
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_json(self) -> dict[str, Any]:
        """The results JSON row: every documented key, null where it does not apply."""
        data: dict[str, Any] = {
            "cell": self.cell, "job_id": self.job_id, "variant": self.variant, "runtime": self.runtime,
            "batch_size": self.batch_size, "status": str(self.status), "error": self.error,
            "latency_ms": self.latency_ms.to_json() if self.latency_ms else None,
            "throughput_per_s": self.throughput_per_s, "load_s": self.load_s, "first_run_ms": self.first_run_ms,
            "peak_host_mb": self.peak_host_mb, "peak_device_mb": self.peak_device_mb,
            "model_size_mb": self.model_size_mb,
            "accuracy": {"fidelity": self.fidelity.to_json() if self.fidelity else None,
                         "task": self.task.to_json() if self.task else None},
            "settings": self.settings, "notes": list(self.notes), "attempts": self.attempts,
            "inputs": self.inputs, "device_metrics": self.device_metrics, "build_s": self.build_s,
            "train_s": self.train_s, "build_details": self.build_details, "target": self.target,
            "variant_path": self.variant_path, "machine_load": self.machine_load, "noise": self.noise,
            "paired": self.paired.to_json() if self.paired else None, "diagnostics": self.diagnostics,
            "wall_s": self.wall_s,
            "speedup_vs_baseline": self.speedup_vs_baseline,
            "speedup_ci95": list(self.speedup_ci95) if self.speedup_ci95 else None,
            "speedup_method": self.speedup_method, "speedup_rounds": self.speedup_rounds,
            "baseline_cell": self.baseline_cell,
        }
        if self.samples_ms is not None:
            data["samples_ms"] = list(self.samples_ms)
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        """A results JSON row (from this version, an older one, or a newer one whose additions land in `extra`)."""
        accuracy = data.get("accuracy") or {}
        samples = data.get("samples_ms")
        return cls(
            variant=str(data["variant"]), runtime=str(data["runtime"]), batch_size=int(data["batch_size"]),
            status=Status(data["status"]), cell=_int(data.get("cell")), job_id=_int(data.get("job_id")),
            error=data.get("error"), attempts=_int(data.get("attempts")),
            latency_ms=LatencySummary.from_json(data.get("latency_ms")),
            throughput_per_s=_float(data.get("throughput_per_s")), load_s=_float(data.get("load_s")),
            first_run_ms=_float(data.get("first_run_ms")), peak_host_mb=_float(data.get("peak_host_mb")),
            peak_device_mb=_float(data.get("peak_device_mb")), model_size_mb=_float(data.get("model_size_mb")),
            fidelity=Fidelity.from_json(accuracy.get("fidelity")), task=TaskMetric.from_json(accuracy.get("task")),
            settings=data.get("settings"), notes=list(data.get("notes") or []), inputs=data.get("inputs"),
            device_metrics=data.get("device_metrics"), build_s=_float(data.get("build_s")),
            train_s=_float(data.get("train_s")), build_details=data.get("build_details"), target=data.get("target"),
            variant_path=data.get("variant_path"), machine_load=data.get("machine_load"), noise=data.get("noise"),
            paired=Rounds.from_json(data.get("paired")), diagnostics=data.get("diagnostics"),
            wall_s=_float(data.get("wall_s")),
            speedup_vs_baseline=_float(data.get("speedup_vs_baseline")), speedup_ci95=_pair(data.get("speedup_ci95")),
            speedup_method=data.get("speedup_method"), speedup_rounds=_int(data.get("speedup_rounds")),
            baseline_cell=_int(data.get("baseline_cell")),
            samples_ms=[float(v) for v in samples] if samples is not None else None,
            extra={k: v for k, v in data.items() if k not in _KEYS},
        )


# Every key CellResult.to_json writes (besides `extra`): the rest of a row is kept in `extra`.
_KEYS = frozenset(CellResult(variant="", runtime="", batch_size=1, status=Status.OK, samples_ms=[]).to_json())
