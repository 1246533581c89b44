"""Optimization registry: ids, typed configs, declared capabilities, and chain parsing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.config import Config, to_text
from engine.errors import UserError

# protobuf's limit is 2 GB: above this, ONNX models are written with their weights as external data
LARGE_ONNX_BYTES = 1_500_000_000

# Stages run in this order inside a chain: torch-level passes need the nn.Module and data;
# conversion to the runtime's format happens between the stages; format passes rewrite that format.
Stage = Literal["torch", "convert", "format"]
STAGE_ORDER = {"torch": 0, "convert": 1, "format": 2}


@dataclass(frozen=True)
class OptConfig(Config):
    """Base of every optimization's parameters: frozen, validated, JSON round-tripping (engine.config)."""

    def suffix(self) -> str:
        """The non-default parameters as `k=v,...` for the canonical variant name."""
        defaults = type(self)()
        parts = [
            f"{f.name}={to_text(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        ]
        return ",".join(parts)


@dataclass(frozen=True)
class Optimization:
    """A registered optimization and what it can do, declared as data (no heavy imports)."""

    id: str
    stage: Stage
    config: type[OptConfig]
    formats: frozenset[str]
    summary: str
    # implementations keyed by working format: fn(target, config, context) -> target
    impls: dict[str, Callable[..., Any]] = dataclasses.field(default_factory=dict, compare=False)
    # runtime devices a torch implementation needs (e.g. fp16 eager needs CUDA); empty = any
    torch_devices: frozenset[str] = frozenset()


REGISTRY: dict[str, Optimization] = {}


def register(opt_id: str, *, stage: Stage, config: type[OptConfig], formats: tuple[str, ...], summary: str,
             torch_devices: tuple[str, ...] = ()) -> Optimization:
    if opt_id in REGISTRY:
        raise ValueError(f"optimization '{opt_id}' is registered twice")
    opt = Optimization(opt_id, stage, config, frozenset(formats), summary, torch_devices=frozenset(torch_devices))
    REGISTRY[opt_id] = opt
    return opt


def implementation(opt_id: str, fmt: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering the implementation of `opt_id` for one working format."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        opt = REGISTRY[opt_id]
        if fmt not in opt.formats:
            raise ValueError(f"{opt_id} does not declare format {fmt}")
        opt.impls[fmt] = fn
        return fn

    return wrap


@dataclass(frozen=True)
class Step:
    """One optimization of a chain with its parameters."""

    id: str
    config: OptConfig

    @property
    def opt(self) -> Optimization:
        return REGISTRY[self.id]

    @property
    def name(self) -> str:
        suffix = self.config.suffix()
        return f"{self.id}:{suffix}" if suffix else self.id

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "config": self.config.to_json()}


@dataclass(frozen=True)
class Chain:
    """A variant: optimizations in stage order; the empty chain is the baseline."""

    steps: tuple[Step, ...]
    BASELINE: ClassVar[str] = "baseline"

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.steps) if self.steps else self.BASELINE

    def stage(self, stage: Stage) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.opt.stage == stage)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]


def parse_step(text: str) -> Step:
    """`id` or `id:v1,k=v2` — a bare value fills the first parameter."""
    opt_id, _, params = text.strip().partition(":")
    opt_id = opt_id.strip()
    if opt_id not in REGISTRY:
        raise UserError(f"unknown optimization '{opt_id}'; known: {', '.join(sorted(REGISTRY))}")
    opt = REGISTRY[opt_id]
    names = opt.config.field_names()
    values: dict[str, str] = {}
    for i, item in enumerate(p for p in params.split(",") if p.strip()):
        key, eq, raw = item.partition("=")
        if not eq:
            if i > 0 or not names:
                raise UserError(f"'{text}': write parameters as key=value after the first one")
            key, raw = names[0], item
        key = key.strip()
        if key not in names:
            known = ", ".join(names) or "none"
            raise UserError(f"'{text}': unknown parameter '{key}' for {opt_id} (known: {known})")
        values[key] = raw.strip()
    try:
        config = opt.config.parse(values)
    except (ValueError, TypeError) as exc:  # a value its type or its config's checks refuse, named
        raise UserError(f"'{text}': {exc}") from exc
    return Step(opt_id, config)


def parse_chain(text: str) -> Chain:
    """`prune-structured:0.5+distill+int8-static` → a Chain; `baseline` → the empty chain."""
    text = text.strip()
    if not text:
        raise UserError("an empty variant; use 'baseline' or optimization ids joined with '+'")
    if text == Chain.BASELINE:
        return Chain(())
    steps = tuple(parse_step(part) for part in text.split("+") if part.strip() != Chain.BASELINE)
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise UserError(f"'{text}': an optimization appears twice in the chain")
    ranks = [STAGE_ORDER[s.opt.stage] for s in steps]
    if ranks != sorted(ranks):
        raise UserError(
            f"'{text}': write torch-level passes (pruning, distillation) first, then onnx-export, then "
            "format passes (quantization, fp16)"
        )
    return Chain(steps)


def chain_from_json(data: list[dict[str, Any]]) -> Chain:
    steps = []
    for item in data:
        if item["id"] not in REGISTRY:
            raise UserError(f"unknown optimization '{item['id']}'; known: {', '.join(sorted(REGISTRY))}")
        opt = REGISTRY[item["id"]]
        steps.append(Step(item["id"], opt.config.from_json(item["config"])))
    return Chain(tuple(steps))
