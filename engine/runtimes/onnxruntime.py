"""ONNX Runtime on the CPU, CUDA and TensorRT execution providers; never a silent CPU fallback."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from engine.config import param
from engine.errors import Unavailable
from engine.measure.profile import OpTime
from engine.runtimes.base import CudaOptions, Runtime, RuntimeOptions, Session, register, tf32_option
from engine.variants import Variant

# the shared library of each GPU provider inside the onnxruntime package (Linux names)
_PROVIDER_LIBRARIES = {"CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
                       "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so"}


def _capi_dir() -> Path | None:
    spec = importlib.util.find_spec("onnxruntime")
    return Path(spec.origin).parent / "capi" if spec is not None and spec.origin else None


def ort_cuda_version() -> str | None:
    """The CUDA version this onnxruntime build was compiled for (onnxruntime-gpu), read without importing it."""
    capi = _capi_dir()
    info = capi / "build_and_package_info.py" if capi is not None else None
    if info is None or not info.is_file():
        return None
    match = re.search(r"^cuda_version\s*=\s*['\"]([0-9.]+)['\"]", info.read_text(errors="replace"), re.MULTILINE)
    return match.group(1) if match else None


def cuda_mismatch(ort_cuda: str | None, driver_cuda: str | None) -> str | None:
    """Why a driver cannot run this build: the driver's CUDA version must be at least the build's major."""
    if not ort_cuda or not driver_cuda:
        return None
    try:
        need, have = int(ort_cuda.split(".")[0]), int(driver_cuda.split(".")[0])
    except ValueError:
        return None
    if have >= need:
        return None
    return (f"this onnxruntime-gpu is built for CUDA {ort_cuda} but the NVIDIA driver supports CUDA {driver_cuda}; "
            f"install an onnxruntime-gpu built for CUDA {have} or update the driver")


def library_load_error(path: Path) -> str | None:
    """The dynamic loader's own words when a provider library cannot load (a missing CUDA/cuDNN/TensorRT
    library, usually); None when it loads."""
    shared = path.parent / "libonnxruntime_providers_shared.so"
    try:
        if shared.is_file():
            ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(path))
    except OSError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> str:
    """Let onnxruntime find CUDA and cuDNN from the nvidia-* pip wheels (what `import torch` does for torch).

    Returns what onnxruntime printed while doing so (failures to load), for the reason of an unavailable cell.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu 1.21 and newer
    if preload is None:
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            preload()
        except Exception as exc:  # noqa: BLE001 - a failed preload is a reason, the provider check decides
            print(f"preload_dlls failed: {exc}")
    return printed.getvalue()


def provider_causes(provider: str, preload_output: str) -> list[str]:
    """Why a GPU provider would not start, most specific first: the loader's error for its library, else what
    the preloads could not load; and what this onnxruntime-gpu build needs."""
    capi = _capi_dir()
    library = capi / _PROVIDER_LIBRARIES[provider] if capi is not None and provider in _PROVIDER_LIBRARIES else None
    causes = []
    if library is not None and library.is_file():
        error = library_load_error(library)
        if error:
            causes.append(f"{library.name} cannot load: {error}")
    if not causes:  # the provider library itself loads: what the preload could not find may be the cause
        failed = [line.strip() for line in preload_output.splitlines() if line.strip().startswith("Failed to load")]
        causes.extend(failed[:2])
    built_for = ort_cuda_version()
    if built_for:
        causes.append(f"this onnxruntime-gpu needs CUDA {built_for.split('.')[0]}.x and cuDNN 9 "
                      f"(pip install 'onnxruntime-gpu[cuda,cudnn]', or a torch built for the same CUDA)")
    return causes


def why_provider_inactive(provider: str, active: list[str], preload_output: str) -> str:
    """One line: the provider did not start, and the most specific cause found."""
    why = f"ONNX Runtime did not activate {provider} (active: {', '.join(active) or 'none'})"
    causes = provider_causes(provider, preload_output)
    return why + (": " + "; ".join(causes) if causes else "")


def provider_start_failure(provider: str, exc: BaseException, preload_output: str) -> Exception:
    """Session creation failed with a GPU provider: `unavailable` when its library cannot load (a missing
    CUDA/cuDNN/TensorRT library), else a failure of this cell (a TensorRT build error, out of memory)."""
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    causes = provider_causes(provider, preload_output)
    if any(" cannot load: " in c or c.startswith("Failed to load") for c in causes):
        return Unavailable(f"{provider} could not start: {'; '.join(causes)}")
    return RuntimeError(f"{provider} failed to create the session: {message}")


def tensorrt_version() -> str | None:
    """The version of the `tensorrt` Python package, where installed (read without importing it)."""
    import importlib.metadata

    for name in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13_libs", "tensorrt_cu12_libs"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def load_tensorrt_libraries() -> str:
    """TensorRT's pip wheels keep libnvinfer outside the loader's path; importing `tensorrt` loads it, so the
    TensorRT provider finds it. Returns a line for the reason when that fails."""
    if importlib.util.find_spec("tensorrt") is None:
        return ""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure here is only a hint for the reason
        return f"Failed to load tensorrt: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc}\n"
    return ""


class OrtSession(Session):
    def __init__(self, session: Any) -> None:
        super().__init__([i.name for i in session.get_inputs()])
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        return {n: np.ascontiguousarray(a) for n, a in feeds.items()}

    def _run(self, prepared: Any) -> Any:
        return self._session.run(self._outputs, prepared)

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) if np.asarray(o).dtype.kind == "f" else np.asarray(o) for o in outputs]

    def end_profiling(self) -> str:
        """Stop a profiling session's profiler; the path of its JSON trace."""
        return str(self._session.end_profiling())


def ort_op_times(trace: Path) -> list[OpTime]:
    """Each node's kernel time in an ONNX Runtime profile trace (Chrome trace JSON): name, op type, provider."""
    import json

    found = []
    for event in json.loads(trace.read_text()):
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = event.get("args") or {}
        found.append(OpTime(name.removesuffix("_kernel_time"), str(args.get("op_name", "?")),
                            str(args.get("provider", "?")).removesuffix("ExecutionProvider"),
                            float(event.get("dur", 0)) / 1e3))
    return found


class OrtBoundSession(OrtSession):
    """GPU providers with I/O binding: inputs live on the device before the timed call, outputs stay there."""

    def __init__(self, session: Any, device_id: int) -> None:
        super().__init__(session)
        self._device_id = device_id

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        import onnxruntime as ort

        binding = self._session.io_binding()
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, "cuda", self._device_id)
        binding.synchronize_inputs()
        return binding

    def _run(self, prepared: Any) -> Any:
        # Run() synchronizes the provider's stream before it returns, so the host clock sees the work
        self._session.run_with_iobinding(prepared)
        return prepared

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        return super()._fetch(outputs.copy_outputs_to_cpu())


@dataclass(frozen=True)
class OrtOptions(RuntimeOptions):
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = param(
        "all", "ONNX Runtime's graph optimizations")


@dataclass(frozen=True)
class OrtGpuOptions(CudaOptions, OrtOptions):  # fields: graph_optimization_level, device, io_binding, tf32
    io_binding: bool = param(True, "inputs and outputs stay on the device, copies outside the timed call")
    tf32: bool = tf32_option()


_OrtOptionsT = TypeVar("_OrtOptionsT", bound=OrtOptions)


class _OrtRuntime(Runtime[_OrtOptionsT]):
    consumes = "onnx"
    requires = ("onnxruntime",)
    provider: ClassVar[str]

    @classmethod
    def available(cls) -> tuple[bool, str | None]:
        ok, why = super().available()  # the package itself
        if not ok or cls.provider == "CPUExecutionProvider":
            return ok, why
        from engine.measure.devices import cuda_devices

        gpus, why = cuda_devices()
        if not gpus:
            return False, why
        import onnxruntime

        if cls.provider not in onnxruntime.get_available_providers():
            return False, (f"{cls.provider} is not in this onnxruntime build "
                           f"({onnxruntime.__version__}); install onnxruntime-gpu from requirements-gpu.txt")
        mismatch = cuda_mismatch(ort_cuda_version(), gpus[0].get("cuda_driver"))
        if mismatch:
            return False, mismatch
        return True, None

    def _gpu_options(self) -> OrtGpuOptions:
        options = self.settings.options
        if not isinstance(options, OrtGpuOptions):
            raise TypeError(f"{self.id} runs {self.provider}: its options must be OrtGpuOptions")
        return options

    def _cuda_options(self) -> dict[str, Any]:
        """The CUDA provider's options: the device, and TF32 off unless asked (its default is on)."""
        gpu = self._gpu_options()
        return {"device_id": gpu.device_index, "use_tf32": int(gpu.tf32)}

    def _provider_options(self, variant_name: str) -> dict[str, Any]:
        if self.provider == "CPUExecutionProvider":
            return {}
        cuda = self._cuda_options()
        if self.provider == "CUDAExecutionProvider":
            return cuda
        from engine.measure.devices import cuda_devices
        from storage.paths import sub_dir

        import onnxruntime as ort

        # TensorRT: engines and timing caches persist in the data folder (the first cell pays the build), one
        # folder per GPU model, onnxruntime and TensorRT version: TensorRT's caches are not portable between them
        gpus = {g["index"]: g["name"] for g in cuda_devices()[0]}
        versions = f"{gpus.get(cuda['device_id'], 'gpu')}-ort{ort.__version__}-trt{tensorrt_version() or 'system'}"
        cache = sub_dir("tensorrt", "ort-cache", "".join(c if c.isalnum() else "-" for c in versions).lower())
        options: dict[str, Any] = {"device_id": cuda["device_id"], "trt_engine_cache_enable": True,
                                   "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                                   "trt_timing_cache_path": str(cache)}
        # TensorRT 10 through onnxruntime is weakly typed: a precision runs only when its flag allows it,
        # so the variant's own precision (fp16 weights, int8-static's and int8-nncf's QDQ nodes) turns its flag on
        ops = {step.split(":", 1)[0] for step in variant_name.split("+")} if variant_name else set()
        if "fp16" in ops:
            options["trt_fp16_enable"] = True
        if ops & {"int8-static", "int8-nncf"}:
            options["trt_int8_enable"] = True  # explicit QDQ scales: no calibration table
        return options

    def load(self, variant: Variant) -> Session:
        return self._open(variant)

    def profile(self, session: Session, variant: Variant, feeds: dict[str, np.ndarray], runs: int) -> list[OpTime]:
        """ONNX Runtime's own profiler on a second session of the same settings: each node's kernel time and the
        execution provider that ran it (the timed session never had profiling on)."""
        import tempfile

        from storage.paths import sub_dir

        with tempfile.TemporaryDirectory(prefix="ort-profile-", dir=sub_dir("tmp")) as folder:
            profiled = self._open(variant, profile_prefix=str(Path(folder) / "ort"))
            with profiled:
                prepared = profiled.prepare(feeds)
                for _ in range(runs):
                    profiled.run(prepared)
                    profiled.synchronize()
                trace = Path(profiled.end_profiling())
            return ort_op_times(trace)

    def _open(self, variant: Variant, profile_prefix: str | None = None) -> OrtSession:
        import onnxruntime as ort

        level = self.settings.options.graph_optimization_level
        session_options = ort.SessionOptions()
        if profile_prefix is not None:
            session_options.enable_profiling = True
            session_options.profile_file_prefix = profile_prefix
        session_options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        session_options.intra_op_num_threads = self.settings.threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3
        gpu = self.provider != "CPUExecutionProvider"
        provider_options = self._provider_options(variant.name)
        providers: list[Any] = [(self.provider, provider_options)]
        preloaded = ""
        if gpu:
            if self.provider == "TensorrtExecutionProvider":
                preloaded = load_tensorrt_libraries()
                # what TensorRT cannot take runs on CUDA, as ONNX Runtime advises, rather than on the CPU
                providers.append(("CUDAExecutionProvider", self._cuda_options()))
            providers.append("CPUExecutionProvider")  # for ops no GPU provider has; the first must be active
            preloaded += preload_cuda_libraries()
        try:
            # enable_fallback=0: onnxruntime's Python wrapper would otherwise retry a failing provider on the
            # CPU, at creation and even inside run(), printing a banner: a silent CPU measurement
            session = ort.InferenceSession(str(variant.file), sess_options=session_options, providers=providers,
                                           enable_fallback=0)
        except (RuntimeError, ValueError) as exc:
            if not gpu:
                raise
            raise provider_start_failure(self.provider, exc, preloaded) from exc
        active = session.get_providers()
        if not active or active[0] != self.provider:
            # onnxruntime drops a provider whose library cannot load, with a warning: never measure that
            raise Unavailable(why_provider_inactive(self.provider, active, preloaded))
        io_binding = gpu and self._gpu_options().io_binding
        device_id = provider_options.get("device_id", 0)
        wrapped = OrtBoundSession(session, device_id) if io_binding else OrtSession(session)
        applied = session.get_session_options()  # read back what the session took, not what was asked
        wrapped.applied.update({"providers": active, "graph_optimization_level": level,
                                "intra_op_threads": applied.intra_op_num_threads,
                                "inter_op_threads": applied.inter_op_num_threads, "onnxruntime": ort.__version__})
        if gpu:
            wrapped.applied.update({"io_binding": io_binding, "host_device_copies_timed": not io_binding,
                                    "device": f"cuda:{device_id}", "tf32": self._gpu_options().tf32})
            wrapped.applied.update({k: v for k, v in provider_options.items()
                                    if k in ("trt_fp16_enable", "trt_int8_enable")})
            if self.provider == "TensorrtExecutionProvider":
                wrapped.applied["tensorrt"] = tensorrt_version()
        return wrapped


@register
class OnnxRuntimeCpu(_OrtRuntime[OrtOptions]):
    id = "onnxruntime"
    provider = "CPUExecutionProvider"
    summary = "ONNX Runtime, CPU execution provider"
    Options = OrtOptions


@register
class OnnxRuntimeCuda(_OrtRuntime[OrtGpuOptions]):
    id = "onnxruntime-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"
    summary = "ONNX Runtime, CUDA execution provider"
    Options = OrtGpuOptions


@register
class OnnxRuntimeTensorRT(_OrtRuntime[OrtGpuOptions]):
    id = "onnxruntime-tensorrt"
    device = "cuda"
    provider = "TensorrtExecutionProvider"
    summary = "ONNX Runtime, TensorRT execution provider"
    Options = OrtGpuOptions
