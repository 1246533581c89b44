"""Runtime registry and the session lifecycle: `with runtime.load(variant) as s: s.run(s.prepare(feeds))`."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from engine.errors import UserError


@dataclass(frozen=True)
class RuntimeSettings:
    """Settings every runtime honours alike (threads) plus runtime-specific options, all recorded."""

    threads: int
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    def to_json(self) -> dict[str, Any]:
        return {"threads": self.threads, **self.options}


class Session(ABC):
    """A loaded model. Measurement code calls prepare() and fetch() outside the timed region."""

    def __init__(self, input_names: list[str]) -> None:
        self.input_names = list(input_names)
        self._closed = False
        # what the runtime actually did (providers, precision, compile mode): goes into `settings`
        self.applied: dict[str, Any] = {}

    def prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        """Convert numpy feeds to the runtime's native inputs (outside the timed region)."""
        self._check_open()
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise UserError(f"inputs {missing} are missing; the model takes {self.input_names}")
        return self._prepare({n: feeds[n] for n in self.input_names})

    def run(self, prepared: Any) -> Any:
        """One inference on prepared inputs; the only call inside the timed region."""
        if self._closed:  # one attribute check: negligible next to any inference
            raise RuntimeError("session is closed")
        return self._run(prepared)

    def fetch(self, outputs: Any) -> list[np.ndarray]:
        """Native outputs to float numpy arrays, in output order."""
        return self._fetch(outputs)

    def synchronize(self) -> None:
        """Wait for queued device work; CPU runtimes finish inside run()."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")

    @abstractmethod
    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any: ...

    @abstractmethod
    def _run(self, prepared: Any) -> Any: ...

    @abstractmethod
    def _fetch(self, outputs: Any) -> list[np.ndarray]: ...

    def _close(self) -> None:
        """Release native resources; the default drops nothing."""


class Runtime(ABC):
    """A registered runtime: what it consumes, which device it needs, and how to load a variant."""

    id: ClassVar[str]
    consumes: ClassVar[str]  # "torch", "torchscript" or "onnx"
    device: ClassVar[str] = "cpu"
    summary: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules, checked without importing them
    # the settings a study may give this runtime (`--option RUNTIME.KEY=VALUE`), each with what it does
    options: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings

    @classmethod
    def available(cls) -> tuple[bool, str | None]:
        """(True, None) or (False, why); never imports heavy libraries for CPU runtimes."""
        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                return False, f"the Python package '{module}' is not installed"
        return True, None

    @abstractmethod
    def load(self, variant: Any) -> Session:
        """Load a built variant (engine.optimizations.build.Variant) into a session."""


REGISTRY: dict[str, type[Runtime]] = {}
# set by the engine itself for every cell (the cell's input shapes), never by a user
INTERNAL_OPTIONS = frozenset({"input_shapes"})


def parse_option_value(raw: str) -> Any:
    """`true`/`false` become booleans, integers and decimals numbers; anything else stays text."""
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def _choice(*allowed: str) -> Any:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(allowed)}"
    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _cuda_device(value: Any) -> str | None:
    text = str(value)
    ok = text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())
    return None if ok else "cuda or cuda:N"


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "a positive integer"


# what each option name accepts, the same wherever a runtime declares it
OPTION_VALUES: dict[str, Any] = {
    "graph_optimization_level": _choice("disable", "basic", "extended", "all"),
    "inference_precision": _choice("f32", "bf16", "f16"),
    "compile_mode": _choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "cuda_graph": _boolean, "tf32": _boolean, "io_binding": _boolean, "freeze": _boolean,
    "device": _cuda_device,
    "workspace_mb": _positive_int,
}


def _check_value(runtime: str, name: str, value: Any) -> None:
    check = OPTION_VALUES.get(name)
    wanted = check(value) if check is not None else None
    if wanted:
        raise UserError(f"runtime option {runtime}.{name}={value} is not valid; it takes {wanted}")


def parse_runtime_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`RUNTIME.KEY=VALUE` items (the CLI's --option, the dashboard's lines) into per-runtime settings, each
    checked against the runtime's declared options so that a typo is an error, not a silently ignored setting."""
    options: dict[str, dict[str, Any]] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        runtime, dot, name = key.strip().partition(".")
        if not eq or not dot or not runtime or not name or not raw.strip():
            raise UserError(f"runtime option '{item}' must look like RUNTIME.KEY=VALUE, "
                            "e.g. onnxruntime.graph_optimization_level=basic")
        cls = get(runtime)
        if name not in cls.options:
            known = ", ".join(sorted(cls.options)) or "none"
            raise UserError(f"runtime option '{item}': {runtime} has no option '{name}' (its options: {known})")
        value = parse_option_value(raw)
        _check_value(runtime, name, value)
        options.setdefault(runtime, {})[name] = value
    return options


def check_runtime_options(options: dict[str, dict[str, Any]]) -> None:
    """Stored or programmatic settings: every runtime known, every key declared."""
    for runtime, values in options.items():
        cls = get(runtime)
        unknown = sorted(set(values) - set(cls.options) - INTERNAL_OPTIONS)
        if unknown:
            known = ", ".join(sorted(cls.options)) or "none"
            raise UserError(f"{runtime} has no option {', '.join(repr(u) for u in unknown)} (its options: {known})")
        for name, value in values.items():
            _check_value(runtime, name, value)


def register(cls: type[Runtime]) -> type[Runtime]:
    if cls.id in REGISTRY:
        raise ValueError(f"runtime '{cls.id}' is registered twice")
    REGISTRY[cls.id] = cls
    return cls


def get(runtime_id: str) -> type[Runtime]:
    if runtime_id not in REGISTRY:
        raise UserError(f"unknown runtime '{runtime_id}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[runtime_id]


def availability() -> list[dict[str, Any]]:
    """Every registered runtime with `id`, `available`, `reason`, what it consumes and its device."""
    rows = []
    for cls in REGISTRY.values():
        ok, reason = cls.available()
        rows.append({"id": cls.id, "available": ok, "reason": reason, "consumes": cls.consumes,
                     "device": cls.device, "summary": cls.summary, "options": dict(cls.options)})
    return rows

