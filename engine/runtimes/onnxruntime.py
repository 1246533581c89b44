"""ONNX Runtime on the CPU, CUDA and TensorRT execution providers; never a silent CPU fallback."""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np

from engine.errors import Unavailable, UserError
from engine.runtimes.base import Runtime, Session, register

_LEVELS = ("disable", "basic", "extended", "all")


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


class _OrtRuntime(Runtime):
    consumes = "onnx"
    requires = ("onnxruntime",)
    provider: ClassVar[str]

    @classmethod
    def available(cls) -> tuple[bool, str | None]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "the Python package 'onnxruntime' is not installed"
        if cls.provider == "CPUExecutionProvider":
            return True, None
        from engine.measure.devices import cuda_devices

        gpus, why = cuda_devices()
        if not gpus:
            return False, why
        import onnxruntime

        if cls.provider not in onnxruntime.get_available_providers():
            return False, (f"{cls.provider} is not in this onnxruntime build "
                           f"({onnxruntime.__version__}); install onnxruntime-gpu from requirements-gpu.txt")
        return True, None

    def _provider_options(self) -> dict[str, Any]:
        if self.provider == "CPUExecutionProvider":
            return {}
        options: dict[str, Any] = {"device_id": int(self.settings.option("device_id", 0))}
        if self.provider == "TensorrtExecutionProvider":
            from engine.paths import sub_dir

            # engines and timing caches persist in the data folder: the first cell pays the build
            cache = sub_dir("tensorrt", "ort-cache")
            options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)})
        return options

    def load(self, variant: Any) -> Session:
        import onnxruntime as ort

        level = str(self.settings.option("graph_optimization_level", "all"))
        if level not in _LEVELS:
            raise UserError(f"graph_optimization_level={level} is not one of {', '.join(_LEVELS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers: list[Any] = [(self.provider, self._provider_options())]
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # for ops the GPU provider lacks; checked below
        session = ort.InferenceSession(str(variant.path), sess_options=options, providers=providers)
        active = session.get_providers()
        if not active or active[0] != self.provider:
            raise Unavailable(f"ONNX Runtime did not activate {self.provider} (active: {', '.join(active)})")
        gpu = self.provider != "CPUExecutionProvider"
        io_binding = gpu and bool(self.settings.option("io_binding", True))
        device_id = int(self.settings.option("device_id", 0))
        wrapped = OrtBoundSession(session, device_id) if io_binding else OrtSession(session)
        applied = session.get_session_options()  # read back what the session took, not what was asked
        wrapped.applied.update({"providers": active, "graph_optimization_level": level,
                                "intra_op_threads": applied.intra_op_num_threads,
                                "inter_op_threads": applied.inter_op_num_threads, "onnxruntime": ort.__version__})
        if gpu:
            wrapped.applied.update({"io_binding": io_binding, "host_device_copies_timed": not io_binding,
                                    "device_id": device_id})
        return wrapped


@register
class OnnxRuntimeCpu(_OrtRuntime):
    id = "onnxruntime"
    provider = "CPUExecutionProvider"
    summary = "ONNX Runtime, CPU execution provider"


@register
class OnnxRuntimeCuda(_OrtRuntime):
    id = "onnxruntime-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"
    summary = "ONNX Runtime, CUDA execution provider"


@register
class OnnxRuntimeTensorRT(_OrtRuntime):
    id = "onnxruntime-tensorrt"
    device = "cuda"
    provider = "TensorrtExecutionProvider"
    summary = "ONNX Runtime, TensorRT execution provider"
