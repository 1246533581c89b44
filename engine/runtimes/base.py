"""Runtime registry and the session lifecycle: `with runtime.load(variant) as s: s.run(s.prepare(feeds))`."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import numpy as np

from engine.config import BadValue, Config, check_types, describe, param, to_text
from engine.errors import Unavailable, UserError
from engine.measure.devices import cuda_index
from engine.measure.profile import OpTime
from engine.variants import Variant


DEFAULT_CUDA_DEVICE = "cuda:0"


@dataclass(frozen=True)
class RuntimeOptions(Config):
    """Base of a runtime's options (`--option RUNTIME.KEY=VALUE`): each field has a default and a help text
    (engine.config.param); a subclass checks its values in __post_init__ after calling this one."""

    def __post_init__(self) -> None:
        check_types(self)  # stored JSON or code may hand any value

    @property
    def cuda_device(self) -> str | None:
        """The CUDA device (cuda:N) a GPU runtime runs on; None for a CPU runtime."""
        return None


def tf32_option() -> Any:
    """Every GPU runtime's `tf32` option (declared last by each, so that listings end with it)."""
    return param(False, "allow TF32 math for fp32 matmuls and convolutions; fp32 means fp32 unless asked")


@dataclass(frozen=True)
class CudaOptions(RuntimeOptions):
    """What every GPU runtime takes: its device (each also declares `tf32: bool = tf32_option()`)."""

    device: str = param(DEFAULT_CUDA_DEVICE, "the CUDA device, e.g. cuda:1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if cuda_index(self.device) is None:
            raise BadValue("device", self.device, "cuda or cuda:N")

    @property
    def cuda_device(self) -> str | None:
        return self.device

    @property
    def device_index(self) -> int:
        """N of cuda:N."""
        return cuda_index(self.device) or 0  # `or 0` for mypy: __post_init__ checked it


OptionsT = TypeVar("OptionsT", bound=RuntimeOptions)


@dataclass(frozen=True)
class RuntimeSettings(Generic[OptionsT]):
    """Settings every runtime honours alike (threads), its own typed options, and the cell's input shapes."""

    threads: int
    options: OptionsT
    # set by the engine for each cell (TensorRT builds its engine for these shapes); never a user's option
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")

    def to_json(self) -> dict[str, Any]:
        return {"threads": self.threads, **self.options.to_json()}


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

    def profile_ops(self, prepared: Any, runs: int) -> list[OpTime]:
        """Per-op times of `runs` calls on `prepared`, from the framework's profiler, after the timing."""
        raise Unavailable("this runtime has no per-op profiler")


class Runtime(ABC, Generic[OptionsT]):
    """A registered runtime: what it consumes, which device it needs, its options, and how to load a variant."""

    id: ClassVar[str]
    consumes: ClassVar[str]  # "torch", "torchscript", "onnx" or "tensorflow"
    device: ClassVar[str] = "cpu"
    summary: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules, checked without importing them
    # the options a study may give this runtime (`--option RUNTIME.KEY=VALUE`): the OptionsT of Runtime[OptionsT]
    Options: ClassVar[type[RuntimeOptions]] = RuntimeOptions

    def __init__(self, settings: RuntimeSettings[OptionsT]) -> None:
        if type(settings.options) is not self.Options:
            raise TypeError(f"{self.id} takes {self.Options.__name__}, not {type(settings.options).__name__}")
        self.settings = settings

    @classmethod
    def options_from_json(cls, data: Mapping[str, Any]) -> RuntimeOptions:
        """The options from their stored form (`{name: typed value}`); a UserError names a bad key or value."""
        for name in data:
            cls.check_option_name(name)
        try:
            return cls.Options.from_json(data)
        except (ValueError, TypeError) as exc:
            raise cls.invalid_option(exc) from exc

    @classmethod
    def check_option_name(cls, name: str, where: str = "") -> None:
        if name not in cls.Options.field_names():
            known = ", ".join(sorted(cls.Options.field_names())) or "none"
            raise UserError(f"{where}{cls.id} has no option '{name}' (its options: {known})")

    @classmethod
    def invalid_option(cls, exc: ValueError | TypeError) -> UserError:
        """A value the Options refused, as one line naming the runtime, the option, the value and what it takes."""
        if isinstance(exc, BadValue):
            return UserError(f"runtime option {cls.id}.{exc.name}={to_text(exc.value)} is not valid; "
                             f"it takes {exc.takes}")
        return UserError(f"runtime options of {cls.id}: {exc}")

    @classmethod
    def create(cls, threads: int, options: Mapping[str, Any] | None = None, *,
               input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Self:
        """This runtime with the stored form of its options (`{name: value}`, defaults for the rest)."""
        typed = cast(OptionsT, cls.options_from_json(options or {}))  # an instance of cls.Options: __init__ checks
        return cls(RuntimeSettings(threads, typed, dict(input_shapes or {})))

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

    def profile(self, session: Session, variant: Variant, feeds: dict[str, np.ndarray], runs: int) -> list[OpTime]:
        """Per-op times of `runs` calls on `feeds` from this runtime's own profiler, after the cell's timing. The
        default profiles the loaded session; a runtime whose profiler is switched on at load opens another."""
        return session.profile_ops(session.prepare(feeds), runs)


REGISTRY: dict[str, type[Runtime[Any]]] = {}


def parse_runtime_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`RUNTIME.KEY=VALUE` items (the CLI's --option, the dashboard's lines) into each runtime's stored options
    (the given keys, typed), read by the runtime's Options so that a typo is an error, not an ignored setting."""
    texts: dict[str, dict[str, str]] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        runtime, dot, name = key.strip().partition(".")
        if not eq or not dot or not runtime or not name or not raw.strip():
            raise UserError(f"runtime option '{item}' must look like RUNTIME.KEY=VALUE, "
                            "e.g. onnxruntime.graph_optimization_level=basic")
        get(runtime).check_option_name(name, f"runtime option '{item}': ")
        texts.setdefault(runtime, {})[name] = raw.strip()
    options: dict[str, dict[str, Any]] = {}
    for runtime, values in texts.items():
        cls = get(runtime)
        try:
            parsed = cls.Options.parse(values).to_json()
        except (ValueError, TypeError) as exc:
            raise cls.invalid_option(exc) from exc
        options[runtime] = {name: parsed[name] for name in values}
    return options


def check_runtime_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Stored or programmatic settings: every runtime known, every key one of its options, every value valid."""
    for runtime, values in options.items():
        get(runtime).options_from_json(values)


def register(cls: type[Runtime[Any]]) -> type[Runtime[Any]]:
    if cls.id in REGISTRY:
        raise ValueError(f"runtime '{cls.id}' is registered twice")
    REGISTRY[cls.id] = cls
    return cls


def get(runtime_id: str) -> type[Runtime[Any]]:
    if runtime_id not in REGISTRY:
        raise UserError(f"unknown runtime '{runtime_id}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[runtime_id]


def availability() -> list[dict[str, Any]]:
    """Every registered runtime with `id`, `available`, `reason`, what it consumes, its device and its options
    (name: help text)."""
    rows = []
    for cls in REGISTRY.values():
        ok, reason = cls.available()
        rows.append({"id": cls.id, "available": ok, "reason": reason, "consumes": cls.consumes,
                     "device": cls.device, "summary": cls.summary, "options": describe(cls.Options)})
    return rows
