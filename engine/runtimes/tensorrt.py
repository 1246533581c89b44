"""TensorRT engines built here from the cell's ONNX variant (TensorRT 10 and 11), run with device buffers.

Precision comes from the ONNX itself (the fp16 variant, or int8-static's QDQ nodes): networks are
strongly typed, which TensorRT 11 requires and TensorRT 10 offers, so no fp16/int8 builder flag is set.
Engines and the timing cache persist in the data folder; an engine is never loaded from an upload.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import BadValue, param
from engine.errors import Unavailable
from engine.measure.profile import OpTime
from engine.runtimes.base import CudaOptions, Runtime, Session, register, tf32_option
from engine.runtimes.torch_cuda import torch_cuda_available
from engine.variants import Variant

# trt.DataType member names -> torch dtype names (trt.nptype knows no bfloat16 or fp8; torch does)
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3fn"}


# Bumped when the engines' build settings change (2: detailed profiling verbosity, for the engine inspector).
ENGINE_LAYOUT = 2


def inspector_layers(info: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each engine layer's type and where it ran (precision of its first output, tactic), from the engine
    inspector's JSON; an engine built without detailed verbosity lists names only."""
    found: dict[str, tuple[str, str]] = {}
    for layer in info.get("Layers") or []:
        if isinstance(layer, str):
            found[layer] = ("?", "GPU")
            continue
        outputs = layer.get("Outputs") or []
        precision = outputs[0].get("Format/Datatype") if outputs and isinstance(outputs[0], dict) else None
        where = " · ".join(str(part) for part in ("GPU", precision, layer.get("TacticName")) if part)
        found[str(layer.get("Name"))] = (str(layer.get("LayerType") or layer.get("ParameterType") or "?"), where)
    return found


class TensorRTBuildError(RuntimeError):
    """The ONNX parser or the builder refused the network; the message lists TensorRT's reasons."""


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt: Any) -> int:
    """Creation flags for a strongly typed network: implicit in TensorRT 11, a flag in TensorRT 10."""
    if trt_major(trt) >= 11:
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise TensorRTBuildError(f"TensorRT {trt.__version__} has no strongly typed networks; use TensorRT 10 or 11")
    return 1 << int(flag)


def torch_dtype(torch: Any, trt_dtype: Any) -> Any:
    """The torch dtype of an engine tensor; packed sub-byte types (INT4, FP4) cannot be bound from torch."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if name not in _TORCH_DTYPES:
        raise TensorRTBuildError(f"an engine input or output has TensorRT type {name}, which this runtime cannot "
                                 f"feed or read; keep the model's inputs and outputs float32/float16/bfloat16/int")
    return getattr(torch, _TORCH_DTYPES[name])


def timing_cache_name(trt_version: str, gpu: str, capability: tuple[int, int]) -> str:
    """A timing cache is only valid for one TensorRT version on one kind of GPU: one file each."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu).strip("-").lower()
    return f"timing-{trt_version}-{slug}-sm{capability[0]}{capability[1]}.cache"


def engine_key(onnx_path: Path, shapes: dict[str, tuple[int, ...]], trt_version: str, gpu: str,
               workspace_mb: int, tf32: bool = False) -> str:
    """Engines depend on the ONNX bytes, the input shapes, TensorRT's version and the GPU."""
    digest = hashlib.sha256()
    with open(onnx_path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    digest.update(repr((sorted(shapes.items()), trt_version, gpu, workspace_mb, tf32, ENGINE_LAYOUT)).encode())
    return digest.hexdigest()[:32]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def build_engine(trt: Any, logger: Any, onnx_path: Path, shapes: dict[str, tuple[int, ...]], workspace_mb: int,
                 timing_cache: Path, tf32: bool = False) -> bytes:
    """Parse the ONNX, fix every input to the cell's shape, build a serialized engine.

    The timing cache is loaded before and saved after, so later builds on this GPU are faster.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        raise TensorRTBuildError(f"TensorRT's ONNX parser refused the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 2**20)
    if not tf32:  # TensorRT allows TF32 math for fp32 layers by default: fp32 here means fp32 unless asked
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache from another TensorRT or GPU: start afresh rather than trust its timings
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if getattr(tensor, "is_shape_tensor", False):
            raise TensorRTBuildError(f"the input '{tensor.name}' is a shape tensor, which this runtime does not feed")
        if tensor.name not in shapes:
            raise TensorRTBuildError(f"the engine input '{tensor.name}' has no shape in this cell")
        shape = shapes[tensor.name]
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    verbosity = getattr(trt, "ProfilingVerbosity", None)
    if verbosity is not None:  # the engine inspector's layer types, precisions and tactics (no run-time cost)
        config.profiling_verbosity = verbosity.DETAILED
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError("TensorRT could not build an engine for this network (see the cell's log)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class TensorRTSession(Session):
    """One engine and its execution context; buffers are torch CUDA tensors on one stream."""

    def __init__(self, trt: Any, engine: Any, input_names: list[str], device: str) -> None:
        import torch

        super().__init__(input_names)
        self._trt, self._torch, self._engine = trt, torch, engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        self._device = torch.device(device)
        self._stream = torch.cuda.Stream(self._device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._out_buffers: list[Any] = []

    def _dtype(self, name: str) -> Any:
        return torch_dtype(self._torch, self._engine.get_tensor_dtype(name))

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        torch = self._torch
        inputs = []
        for name in self.input_names:
            host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
            tensor = host.to(device=self._device, dtype=self._dtype(name)).contiguous()
            if not self._context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"the engine was built for other shapes than {name}{tuple(tensor.shape)}")
            self._context.set_tensor_address(name, tensor.data_ptr())
            inputs.append(tensor)
        self._out_buffers = []
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=self._dtype(name), device=self._device)
            self._context.set_tensor_address(name, buffer.data_ptr())
            self._out_buffers.append(buffer)
        torch.cuda.synchronize(self._device)
        return inputs  # kept alive: the context holds raw pointers into them

    def _run(self, prepared: Any) -> Any:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return self._out_buffers

    def synchronize(self) -> None:
        self._stream.synchronize()

    def device_timer(self, prepared: Any) -> float:
        self._start.record(self._stream)
        self._run(prepared)
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        self.synchronize()
        return [o.float().cpu().numpy() if o.dtype.is_floating_point else o.cpu().numpy() for o in outputs]

    def peak_allocated_mb(self) -> float:
        return float(self._torch.cuda.max_memory_allocated(self._device)) / 2**20

    def profile_ops(self, prepared: Any, runs: int) -> list[OpTime]:
        """TensorRT's per-layer times (an IProfiler on a second execution context, synchronous execute_v2 calls,
        as trtexec --dumpProfile), each layer named with its type, precision and tactic by the engine inspector."""
        import json

        trt, engine = self._trt, self._engine
        layers = inspector_layers(json.loads(
            engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)))
        times: list[tuple[str, float]] = []

        class LayerTimes(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times.append((layer_name, ms))

        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError("TensorRT could not create a second execution context for the profile")
        profiler = LayerTimes()
        context.profiler = profiler
        inputs = dict(zip(self.input_names, prepared, strict=True))
        outputs = dict(zip(self._outputs, self._out_buffers, strict=True))
        bindings = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name in inputs:
                context.set_input_shape(name, tuple(inputs[name].shape))
            tensor = inputs[name] if name in inputs else outputs[name]
            bindings.append(tensor.data_ptr())
        for _ in range(runs):
            if not context.execute_v2(bindings):
                raise RuntimeError("TensorRT execute_v2 failed during the profile")
        return [OpTime(name, *layers.get(name, ("?", "GPU")), ms) for name, ms in times]


@dataclass(frozen=True)
class TensorRTOptions(CudaOptions):
    workspace_mb: int = param(4096, "TensorRT's workspace limit in MB")
    tf32: bool = tf32_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workspace_mb < 1:
            raise BadValue("workspace_mb", self.workspace_mb, "a positive integer")


@register
class TensorRTRuntime(Runtime[TensorRTOptions]):
    id = "tensorrt"
    consumes = "onnx"
    device = "cuda"
    summary = "TensorRT engine built from the ONNX variant (strongly typed; CUDA events)"
    Options = TensorRTOptions
    requires = ("tensorrt",)

    @classmethod
    def available(cls) -> tuple[bool, str | None]:
        if importlib.util.find_spec("tensorrt") is None:
            return False, "the Python package 'tensorrt' is not installed (requirements-gpu.txt)"
        return torch_cuda_available()

    def load(self, variant: Variant) -> Session:
        import tensorrt as trt
        import torch

        from storage.paths import sub_dir

        if not torch.cuda.is_available():
            raise Unavailable("torch.cuda.is_available() is False: TensorRT needs a CUDA device")
        device = self.settings.options.device
        workspace_mb = self.settings.options.workspace_mb
        tf32 = self.settings.options.tf32
        shapes = {k: tuple(v) for k, v in self.settings.input_shapes.items()}
        if not shapes:
            raise ValueError("the TensorRT runtime needs the cell's input shapes (settings.input_shapes)")
        logger = trt.Logger(trt.Logger.WARNING)
        gpu = torch.cuda.get_device_name(torch.device(device))
        capability = torch.cuda.get_device_capability(torch.device(device))
        folder = sub_dir("tensorrt")
        key = engine_key(variant.file, shapes, trt.__version__, f"{gpu} sm{capability}", workspace_mb, tf32)
        plan_path = folder / "engines" / f"{key}.plan"
        start = time.perf_counter()
        built = not plan_path.is_file()
        if built:
            plan = build_engine(trt, logger, variant.file, shapes, workspace_mb,
                                folder / timing_cache_name(trt.__version__, gpu, capability), tf32)
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(plan_path, plan)
        else:
            plan = plan_path.read_bytes()
        build_s = time.perf_counter() - start
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise TensorRTBuildError("TensorRT could not deserialize the engine it built")
        session = TensorRTSession(trt, engine, variant.input_names, device)
        session.applied.update({"tensorrt": trt.__version__, "gpu": gpu, "strongly_typed": True,
                                "workspace_mb": workspace_mb, "tf32": tf32, "engine_built": built,
                                "engine_build_s": build_s if built else None, "timing": "cuda-events"})
        return session
