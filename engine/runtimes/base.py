"""Runtime registry and the session lifecycle: `with runtime.load(variant) as s: s.run(s.prepare(feeds))`."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from engine.errors import UserError
from engine.measure.devices import cuda_index
from engine.variants import Variant


DEFAULT_CUDA_DEVICE = "cuda:0"


@dataclass(frozen=True)
class RuntimeSettings:
    """Settings every runtime honours alike (threads) plus runtime-specific options, all recorded."""

    threads: int
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        for name, value in self.options.items():
            check_option_value(name, value, f"option {name}={value}")

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    @property
    def cuda_device(self) -> str:
        """The `device` option of GPU runtimes (cuda:N), checked when the settings were made."""
        return str(self.options.get("device", DEFAULT_CUDA_DEVICE))

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
    # the settings a study may give this runtime (`--option RUNTIME.KEY=VALUE`), names from OPTIONS
    options: ClassVar[tuple[str, ...]] = ()

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
    def load(self, variant: Variant) -> Session:
        """Load a built variant into a session."""


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


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(allowed)}"
    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _cuda_device(value: Any) -> str | None:
    return None if cuda_index(str(value)) is not None else "cuda or cuda:N"


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "a positive integer"


_TF32 = ("allow TF32 math for fp32 matmuls and convolutions (default false: fp32 means fp32)", _boolean)
_COMPILE_MODE = ("torch.compile's mode (default default)",
                 _choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
# every option a runtime may declare: what it does and what it accepts, the same wherever it is declared
OPTIONS: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "device": ("the CUDA device, e.g. cuda:1 (default cuda:0)", _cuda_device),
    "tf32": _TF32,
    "cuda_graph": ("capture once and replay a CUDA graph (default false)", _boolean),
    "compile_mode": _COMPILE_MODE,
    "freeze": ("torch.jit.freeze the module before timing (default true)", _boolean),
    "graph_optimization_level": ("disable, basic, extended or all (default all)",
                                 _choice("disable", "basic", "extended", "all")),
    "io_binding": ("inputs and outputs stay on the device, copies outside the timed call (default true)", _boolean),
    "inference_precision": ("OpenVINO's INFERENCE_PRECISION_HINT: f32 (default), bf16 or f16",
                            _choice("f32", "bf16", "f16")),
    "workspace_mb": ("TensorRT's workspace limit in MB (default 4096)", _positive_int),
}


def check_option_value(name: str, value: Any, label: str) -> None:
    """A known option's value, wherever settings are made (a user's line, stored settings, code)."""
    if name in OPTIONS:
        wanted = OPTIONS[name][1](value)
        if wanted:
            raise UserError(f"{label} is not valid; it takes {wanted}")


def _check_option(cls: type[Runtime], name: str, value: Any, where: str, internal: bool) -> None:
    if name not in cls.options and not (internal and name in INTERNAL_OPTIONS):
        known = ", ".join(sorted(cls.options)) or "none"
        raise UserError(f"{where}{cls.id} has no option '{name}' (its options: {known})")
    check_option_value(name, value, f"runtime option {cls.id}.{name}={value}")


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
        value = parse_option_value(raw)
        _check_option(get(runtime), name, value, f"runtime option '{item}': ", internal=False)
        options.setdefault(runtime, {})[name] = value
    return options


def check_runtime_options(options: dict[str, dict[str, Any]]) -> None:
    """Stored or programmatic settings: every runtime known, every key declared, every value valid."""
    for runtime, values in options.items():
        cls = get(runtime)
        for name, value in values.items():
            _check_option(cls, name, value, "", internal=True)


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
                     "device": cls.device, "summary": cls.summary,
                     "options": {name: OPTIONS[name][0] for name in cls.options}})
    return rows

