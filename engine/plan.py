"""A study (model, variants, runtimes, batch sizes, settings) expanded into cells, each runnable or not and why."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.data import check_padding
from engine.errors import UserError
from engine.executors.limits import default_memory_limit_mb
from engine.generation.settings import GenerationSettings
from engine.results import Status
from engine.measure.latency import MeasureSettings
from engine.optimizations import parse_chain
from engine.optimizations.base import Chain, chain_from_json
from engine.optimizations.build import not_applicable_reason
from engine.runtimes import REGISTRY as RUNTIMES
from engine.runtimes import get as get_runtime
from engine.specs import InputSpec

DEFAULT_VARIANTS = ("baseline", "int8-dynamic", "fp16")
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_EVAL_SAMPLES = 256


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class StudySettings:
    """How every cell of a study is measured; stored with the study so it can be replayed."""

    measure: MeasureSettings = field(default_factory=MeasureSettings)
    threads: int = field(default_factory=default_threads)
    timeout_s: float = DEFAULT_TIMEOUT_S
    eval_samples: int = DEFAULT_EVAL_SAMPLES
    runtime_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory_limit_mb: float | None = field(default_factory=default_memory_limit_mb)
    # Fraction of each synthesized sequence that is trailing padding (mask 0, the pad id), for those who serve
    # padded batches; 0 is a batch of sequences of one length. A data file's inputs are used as they are.
    padding: float = 0.0
    # the generation scenario (engine/generation/): None for the latency scenario
    generation: GenerationSettings | None = None

    def __post_init__(self) -> None:
        if self.memory_limit_mb is not None and self.memory_limit_mb < 64:
            raise UserError(f"--memory-limit must be at least 64 MB, got {self.memory_limit_mb:g}")
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.timeout_s <= 0:
            raise UserError(f"--timeout must be positive, got {self.timeout_s}")
        if self.eval_samples < 1:
            raise UserError(f"eval samples must be at least 1, got {self.eval_samples}")
        check_padding(self.padding)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["generation"] = self.generation.to_json() if self.generation is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudySettings:
        return cls(
            measure=MeasureSettings(**data["measure"]),
            threads=int(data["threads"]),
            timeout_s=float(data["timeout_s"]),
            eval_samples=int(data["eval_samples"]),
            runtime_options=dict(data.get("runtime_options", {})),
            memory_limit_mb=data.get("memory_limit_mb"),
            padding=float(data.get("padding", 0.0)),  # studies stored before the setting had none
            generation=GenerationSettings.from_json(data.get("generation")),
        )


@dataclass(frozen=True)
class Cell:
    """One variant on one runtime at one batch size; `status` is "pending", "n/a" or "unavailable"."""

    index: int
    variant: str
    chain: tuple[dict[str, Any], ...]
    runtime: str
    batch_size: int
    status: str = "pending"
    reason: str | None = None
    machine: str | None = None  # the machine kind it targets on a Ray cluster (cpu-avx512, gpu-h100)

    @property
    def runnable(self) -> bool:
        return self.status == "pending"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "chain": list(self.chain)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        return cls(**{**data, "chain": tuple(data["chain"])})

    def parsed_chain(self) -> Chain:
        return chain_from_json(list(self.chain))


def split_variants(text: str) -> list[str]:
    """Split `--variants` on commas, keeping `k=v` parameters with their chain:
    `baseline,int8-static:method=entropy,per_channel=false` is two variants, not three."""
    out: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        head = token.split("+")[0].split(":")[0]
        if out and "=" in head and ":" in out[-1].split("+")[-1]:
            out[-1] += "," + token
        else:
            out.append(token)
    return out


def parse_variants(items: list[str]) -> list[Chain]:
    chains = [parse_chain(v) for v in items if v.strip()]
    if not chains:
        raise UserError("no variants given; use e.g. --variants baseline,int8-dynamic")
    seen: set[str] = set()
    unique = []
    for chain in chains:
        if chain.name not in seen:
            seen.add(chain.name)
            unique.append(chain)
    return unique


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--batch-sizes '{text}' must be integers separated by commas, e.g. 1,8") from exc
    if not sizes or any(s < 1 for s in sizes):
        raise UserError(f"--batch-sizes '{text}' must be positive integers, e.g. 1,8")
    return sorted(set(sizes))


def parse_runtimes(items: list[str] | None) -> list[str]:
    """The named runtimes, or every available one when none are named."""
    if not items:
        return [rid for rid, cls in RUNTIMES.items() if cls.available()[0]]
    ids = [r.strip() for r in items if r.strip()]
    for rid in ids:
        get_runtime(rid)
    return list(dict.fromkeys(ids))


def runtimes_for(model_format: str, runtime_ids: list[str]) -> list[str]:
    """Those of the runtimes that run a model of this format at all (its baseline is not n/a there): the default
    when none are named, so that a default study has no row per runtime of another framework. All of them when
    none does (the cells then say why)."""
    fitting = [rid for rid in runtime_ids
               if not_applicable_reason(model_format, Chain(()), get_runtime(rid).consumes,
                                        get_runtime(rid).device) is None]
    return fitting or runtime_ids


def expand(model_format: str, spec: InputSpec, variants: list[Chain], runtimes: list[str],
           batch_sizes: list[int]) -> list[Cell]:
    """Every variant × runtime × batch size, with the reason a cell cannot run where it cannot."""
    availability = {rid: get_runtime(rid).available() for rid in runtimes}
    fixed = spec.fixed_batch
    cells: list[Cell] = []
    for chain in variants:
        for rid in runtimes:
            runtime = get_runtime(rid)
            ok, why = availability[rid]
            for batch in batch_sizes:
                status, reason = "pending", None
                if not ok:
                    status, reason = Status.UNAVAILABLE, why
                else:
                    na = not_applicable_reason(model_format, chain, runtime.consumes, runtime.device)
                    if na is None and fixed is not None and batch != fixed:
                        na = f"the model fixes its batch size to {fixed}; re-export it with a dynamic batch axis"
                    if na is not None:
                        status, reason = Status.NOT_APPLICABLE, na
                cells.append(Cell(len(cells), chain.name, tuple(chain.to_json()), rid, batch, status, reason))
    return cells
