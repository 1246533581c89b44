"""GPU paths: honest without a GPU here, TensorRT builder logic up to the device, device timing and metrics.

Tests that need a GPU are marked `gpu` and skip with the reason on machines without one.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from engine.errors import Unavailable
from engine.measure import gpu
from engine.measure.devices import cuda_devices
from engine.measure.latency import MeasureSettings, measure
from engine.plan import expand
from engine.optimizations import parse_chain
from engine.runtimes import REGISTRY
from engine.runtimes import tensorrt as trt_runtime
from engine.specs import InputSpec

GPU_RUNTIMES = ("torch-cuda", "torch-compile-cuda", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
HAS_GPU = bool(cuda_devices()[0])
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no NVIDIA GPU here: {cuda_devices()[1]}")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("runtime_id", GPU_RUNTIMES)
def test_gpu_runtimes_are_unavailable_with_a_reason(runtime_id: str) -> None:
    ok, reason = REGISTRY[runtime_id].available()
    assert ok is False
    assert reason and len(reason) > 10


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_plan_marks_gpu_cells_unavailable_not_run_on_cpu() -> None:
    spec = InputSpec.parse("x:float32[B,16]")
    cells = expand("pt2", spec, [parse_chain("baseline"), parse_chain("bf16")], list(GPU_RUNTIMES), [1])
    assert {c.status for c in cells} == {"unavailable"}
    assert all(c.reason for c in cells)


def test_bf16_and_fp16_torch_variants_need_cuda() -> None:
    spec = InputSpec.parse("x:float32[B,16]")
    cells = expand("pt2", spec, [parse_chain("bf16"), parse_chain("fp16")], ["torch"], [1])
    assert [c.status for c in cells] == ["n/a", "n/a"]
    assert all("CUDA" in (c.reason or "") for c in cells)


def test_torch_cuda_load_without_cuda_is_unavailable() -> None:
    runtime = REGISTRY["torch-cuda"].create(threads=1)
    variant = SimpleNamespace(module=None, input_names=["x"])
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device")
    with pytest.raises(Unavailable, match="CUDA"):
        runtime.load(variant)


# --- TensorRT builder, up to the device ------------------------------------------------------------


class FakeTrt:
    """The slice of the TensorRT Python API the builder uses, recording what it is asked."""

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        TF32 = "tf32"

    class ProfilingVerbosity:
        DETAILED = "detailed"

    def __init__(self, version: str, parse_ok: bool = True, build_ok: bool = True) -> None:
        self.__version__ = version
        self.parse_ok, self.build_ok = parse_ok, build_ok
        self.calls: dict[str, Any] = {}
        self.stale_cache: Any = None  # a cache object set_timing_cache refuses (another TensorRT or GPU)
        fake = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                fake.calls["network_flags"] = flags
                inputs = [SimpleNamespace(name="x")]
                return SimpleNamespace(num_inputs=1, get_input=lambda i: inputs[i])

            def create_builder_config(self) -> Any:
                cache = SimpleNamespace(serialize=lambda: b"timing-cache-v2")
                config = SimpleNamespace(
                    set_memory_pool_limit=lambda pool, size: fake.calls.__setitem__("workspace", (pool, size)),
                    create_timing_cache=lambda data: fake.calls.__setitem__("cache_in", data) or (
                        fake.stale_cache if data == b"stale" and fake.stale_cache is not None else cache),
                    set_timing_cache=lambda c, ignore_mismatch: fake.calls.__setitem__(
                        "ignore_mismatch", ignore_mismatch) or c is not fake.stale_cache,
                    add_optimization_profile=lambda p: None,
                    get_timing_cache=lambda: cache,
                    set_flag=lambda flag: fake.calls.__setitem__("precision_flag", flag),
                    clear_flag=lambda flag: fake.calls.__setitem__("cleared", flag),
                )
                fake.calls["config"] = config
                return config

            def create_optimization_profile(self) -> Any:
                return SimpleNamespace(set_shape=lambda name, lo, opt, hi: fake.calls.__setitem__(
                    "profile", (name, lo, opt, hi)))

            def build_serialized_network(self, network: Any, config: Any) -> Any:
                return b"engine-bytes" if fake.build_ok else None

        class OnnxParser:
            num_errors = 1

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                fake.calls["parsed"] = path
                return fake.parse_ok

            def get_error(self, i: int) -> str:
                return "Unsupported ONNX op: FancyOp"

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize(("version", "flags"), [("10.13.0", 1 << 5), ("11.4.1", 0)])
def test_networks_are_strongly_typed_on_tensorrt_10_and_11(version: str, flags: int) -> None:
    assert trt_runtime.network_flags(FakeTrt(version)) == flags


def test_build_engine_fixes_shapes_sets_no_precision_flag_and_persists_the_timing_cache(tmp_path: Path) -> None:
    fake = FakeTrt("11.4.1")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    cache = tmp_path / "trt" / "timing.cache"
    plan = trt_runtime.build_engine(fake, None, onnx_path, {"x": (8, 16)}, 512, cache)
    assert plan == b"engine-bytes"
    assert fake.calls["profile"] == ("x", (8, 16), (8, 16), (8, 16))
    assert fake.calls["workspace"] == ("workspace", 512 * 2**20)
    assert "precision_flag" not in fake.calls  # precision comes from the ONNX
    assert fake.calls["cleared"] == "tf32"  # fp32 layers run in fp32, not TensorRT's default TF32
    assert cache.read_bytes() == b"timing-cache-v2"
    # the engine inspector gets each layer's type, precision and tactic (the profile's "where")
    assert fake.calls["config"].profiling_verbosity == "detailed"
    trt_runtime.build_engine(fake, None, onnx_path, {"x": (8, 16)}, 512, cache)
    assert fake.calls["cache_in"] == b"timing-cache-v2"  # the second build starts from the saved cache
    assert fake.calls["ignore_mismatch"] is False  # a cache from another GPU or TensorRT is never trusted


def test_tf32_is_a_setting_that_keeps_tensorrts_default_and_changes_the_engine(tmp_path: Path) -> None:
    fake = FakeTrt("11.4.0")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    trt_runtime.build_engine(fake, None, onnx_path, {"x": (1, 16)}, 64, tmp_path / "c", tf32=True)
    assert "cleared" not in fake.calls
    key = trt_runtime.engine_key(onnx_path, {"x": (1, 16)}, "11.4", "H100", 64)
    assert key != trt_runtime.engine_key(onnx_path, {"x": (1, 16)}, "11.4", "H100", 64, tf32=True)


def test_a_refused_timing_cache_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    fake = FakeTrt("10.16.1")
    fake.stale_cache = object()
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"stale")
    trt_runtime.build_engine(fake, None, onnx_path, {"x": (1, 16)}, 64, cache)
    assert fake.calls["cache_in"] == b""  # refused, so the build started from an empty cache
    assert cache.read_bytes() == b"timing-cache-v2"


def test_engine_tensor_types_map_to_torch_including_bfloat16() -> None:
    import torch

    def dtype(name: str) -> Any:
        return SimpleNamespace(name=name)

    assert trt_runtime.torch_dtype(torch, dtype("BF16")) == torch.bfloat16  # trt.nptype has no bfloat16
    assert trt_runtime.torch_dtype(torch, dtype("HALF")) == torch.float16
    assert trt_runtime.torch_dtype(torch, dtype("INT64")) == torch.int64
    assert trt_runtime.torch_dtype(torch, "DataType.BOOL") == torch.bool
    with pytest.raises(trt_runtime.TensorRTBuildError, match="INT4"):
        trt_runtime.torch_dtype(torch, dtype("INT4"))


def test_timing_caches_are_per_tensorrt_version_and_gpu() -> None:
    name = trt_runtime.timing_cache_name("10.16.1.11", "NVIDIA H100 80GB HBM3", (9, 0))
    assert name == "timing-10.16.1.11-nvidia-h100-80gb-hbm3-sm90.cache"
    assert name != trt_runtime.timing_cache_name("11.4.0.106", "NVIDIA H100 80GB HBM3", (9, 0))


def test_shape_tensor_inputs_are_refused_with_a_reason(tmp_path: Path) -> None:
    fake = FakeTrt("11.4.0")
    builder = fake.Builder

    class ShapeInputBuilder(builder):  # type: ignore[misc, valid-type]
        def create_network(self, flags: int) -> Any:
            tensor = SimpleNamespace(name="x", is_shape_tensor=True)
            return SimpleNamespace(num_inputs=1, get_input=lambda i: tensor)

    fake.Builder = ShapeInputBuilder
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    with pytest.raises(trt_runtime.TensorRTBuildError, match="shape tensor"):
        trt_runtime.build_engine(fake, None, onnx_path, {"x": (2,)}, 64, tmp_path / "c")


def test_build_engine_reports_parser_and_builder_failures(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    with pytest.raises(trt_runtime.TensorRTBuildError, match="FancyOp"):
        trt_runtime.build_engine(FakeTrt("10.13.0", parse_ok=False), None, onnx_path, {"x": (1, 16)}, 64,
                                 tmp_path / "c")
    with pytest.raises(trt_runtime.TensorRTBuildError, match="could not build"):
        trt_runtime.build_engine(FakeTrt("10.13.0", build_ok=False), None, onnx_path, {"x": (1, 16)}, 64,
                                 tmp_path / "c")
    with pytest.raises(trt_runtime.TensorRTBuildError, match="no shape"):
        trt_runtime.build_engine(FakeTrt("10.13.0"), None, onnx_path, {"y": (1, 16)}, 64, tmp_path / "c")


def test_engine_key_depends_on_model_shapes_version_and_gpu(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    base = trt_runtime.engine_key(onnx_path, {"x": (1, 16)}, "10.13", "H100", 4096)
    assert base == trt_runtime.engine_key(onnx_path, {"x": (1, 16)}, "10.13", "H100", 4096)
    assert base != trt_runtime.engine_key(onnx_path, {"x": (8, 16)}, "10.13", "H100", 4096)
    assert base != trt_runtime.engine_key(onnx_path, {"x": (1, 16)}, "11.4", "H100", 4096)
    assert base != trt_runtime.engine_key(onnx_path, {"x": (1, 16)}, "10.13", "A100", 4096)


# --- device timing and metrics -----------------------------------------------------------------------


class AsyncSession:
    """A device-like session: run() returns at once (the launch), the work's time is only visible to the device
    timer. A harness that timed run()+synchronize() on the host would see microseconds, not 4 ms."""

    def __init__(self, work_ms: float) -> None:
        self.work_ms = work_ms
        self.launches = 0
        self.timed = 0

    def run(self, prepared: Any) -> None:
        self.launches += 1

    def synchronize(self) -> None:
        pass

    def device_timer(self, prepared: Any) -> float:
        self.timed += 1
        self.run(prepared)
        return self.work_ms


def test_device_sessions_are_timed_to_completion_not_launch() -> None:
    session = AsyncSession(4.0)
    samples = measure(session, None, MeasureSettings(warmup=2, iterations=10, min_seconds=0.0))
    assert len(samples) == 10
    assert np.median(samples) >= 3.5  # the 4 ms of work, not the microseconds of the launch
    assert session.timed == 10 and session.launches == 12  # every sample from the device timer, after 2 warm-ups


class FakeNvml:
    def __init__(self, energy: list[float | None], memory: float | None) -> None:
        self._energy = iter(energy)
        self._memory = memory

    def energy_mj(self) -> float | None:
        return next(self._energy)

    def process_memory_mb(self) -> float | None:
        return self._memory


def test_energy_per_inference_and_device_memory() -> None:
    meter = gpu.EnergyMeter(FakeNvml([1000.0, 3000.0], 512.0))  # type: ignore[arg-type]
    meter.start()
    time.sleep(0.05)
    window = meter.stop()
    assert window.energy_mj == 2000.0 and window.mean_power_w is not None and window.mean_power_w > 0
    metrics = gpu.device_metrics(FakeNvml([], 512.0), window, iterations=100, batch_size=4,  # type: ignore[arg-type]
                                 torch_peak_mb=300.0)
    assert metrics["peak_device_mb"] == 512.0
    assert metrics["energy_mj_per_inference"] == 20.0 and metrics["energy_mj_per_item"] == 5.0


def test_unsupported_counters_are_null_never_zero() -> None:
    meter = gpu.EnergyMeter(FakeNvml([None], None))  # type: ignore[arg-type]
    meter.start()
    window = meter.stop()
    metrics = gpu.device_metrics(FakeNvml([], None), window, 10, 1, None)  # type: ignore[arg-type]
    assert metrics["peak_device_mb"] is None
    assert metrics["power_w"] is None and metrics["energy_mj_per_inference"] is None
    assert gpu.open_nvml("cpu") is None


# --- on a real GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_matches_cpu_reference() -> None:
    import torch

    from engine.runtimes import get

    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    variant = SimpleNamespace(module=model, input_names=["x"])
    with get("torch-cuda").create(threads=1).load(variant) as session:
        prepared = session.prepare({"x": x})
        out = session.fetch(session.run(prepared))[0]
        assert session.device_timer(prepared) > 0  # type: ignore[attr-defined]
    assert np.abs(out - reference).max() / np.abs(reference).max() < 1e-3


# --- ONNX Runtime GPU providers, up to the device ------------------------------------------------------


def test_a_driver_older_than_the_onnxruntime_build_is_a_reason() -> None:
    from engine.runtimes import onnxruntime as ort_runtime

    why = ort_runtime.cuda_mismatch("13.0", "12.8")
    assert why and "CUDA 13.0" in why and "CUDA 12.8" in why
    assert ort_runtime.cuda_mismatch("12.4", "13.0") is None  # newer drivers run older builds
    assert ort_runtime.cuda_mismatch(None, "12.8") is None  # a CPU build says nothing


def test_a_cpu_onnxruntime_build_has_no_cuda_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.runtimes import onnxruntime as ort_runtime

    (tmp_path / "build_and_package_info.py").write_text("package_name = 'onnxruntime'\n__version__ = '1.32.0'\n")
    monkeypatch.setattr(ort_runtime, "_capi_dir", lambda: tmp_path)
    assert ort_runtime.ort_cuda_version() is None


def test_a_provider_that_did_not_start_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime falls back to the CPU when a provider library cannot load; the reason names the loader's error."""
    from engine.runtimes import onnxruntime as ort_runtime

    capi = tmp_path / "capi"
    capi.mkdir()
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"not a shared library")
    (capi / "build_and_package_info.py").write_text("package_name = 'onnxruntime-gpu'\ncuda_version = '13.0'\n")
    monkeypatch.setattr(ort_runtime, "_capi_dir", lambda: capi)
    assert ort_runtime.ort_cuda_version() == "13.0"
    why = ort_runtime.why_provider_inactive("CUDAExecutionProvider", ["CPUExecutionProvider"],
                                            "Failed to load libcudart.so.13: not found\n")
    assert why.startswith("ONNX Runtime did not activate CUDAExecutionProvider (active: CPUExecutionProvider)")
    assert "libonnxruntime_providers_cuda.so cannot load" in why and "CUDA 13.x" in why
    assert "\n" not in why


def test_when_the_provider_library_loads_the_preload_failures_are_the_reason(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    from engine.runtimes import onnxruntime as ort_runtime

    libm = ctypes.util.find_library("m")
    assert libm
    real = next(Path(d) / libm for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64")
                if (Path(d) / libm).is_file())
    (tmp_path / "libonnxruntime_providers_tensorrt.so").symlink_to(real)  # a library that loads
    monkeypatch.setattr(ort_runtime, "_capi_dir", lambda: tmp_path)
    assert ort_runtime.library_load_error(tmp_path / "libonnxruntime_providers_tensorrt.so") is None
    why = ort_runtime.why_provider_inactive("TensorrtExecutionProvider", ["CPUExecutionProvider"],
                                            "noise\nFailed to load libcudnn.so.9: not found\n")
    assert why.endswith("Failed to load libcudnn.so.9: not found")


def test_tensorrt_provider_precision_flags_follow_the_variant(data_dir: Path) -> None:
    from engine.runtimes import onnxruntime as ort_runtime

    runtime = ort_runtime.OnnxRuntimeTensorRT.create(threads=1)
    baseline = runtime._provider_options("baseline")
    assert "trt_fp16_enable" not in baseline and "trt_int8_enable" not in baseline  # fp32 stays fp32
    assert runtime._provider_options("prune-structured:0.5+fp16")["trt_fp16_enable"] is True
    assert runtime._provider_options("int8-static:method=entropy")["trt_int8_enable"] is True
    assert runtime._provider_options("int8-nncf:smooth_quant=-1.0")["trt_int8_enable"] is True
    cache = Path(baseline["trt_engine_cache_path"])
    assert cache.is_dir() and data_dir in cache.parents and "-ort" in cache.name  # per GPU and ORT version
    assert ort_runtime.OnnxRuntimeCuda.create(threads=1)._provider_options("fp16") == {
        "device_id": 0, "use_tf32": 0}  # fp32 means fp32 unless tf32 is asked for
    tf32 = ort_runtime.OnnxRuntimeCuda.create(1, {"tf32": True})
    assert tf32._provider_options("baseline")["use_tf32"] == 1


def test_a_provider_that_fails_to_start_is_unavailable_only_when_its_library_cannot_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime raises at session creation (its own CPU retry is off): a missing library is `unavailable`,
    anything else (a TensorRT build error, out of memory) is a failure of the cell."""
    from engine.runtimes import onnxruntime as ort_runtime

    (tmp_path / "libonnxruntime_providers_tensorrt.so").write_bytes(b"not a library")
    monkeypatch.setattr(ort_runtime, "_capi_dir", lambda: tmp_path)
    missing = ort_runtime.provider_start_failure("TensorrtExecutionProvider", RuntimeError("EP failed\nmore"), "")
    assert isinstance(missing, Unavailable) and "cannot load" in str(missing)
    (tmp_path / "libonnxruntime_providers_tensorrt.so").unlink()
    broken = ort_runtime.provider_start_failure("TensorrtExecutionProvider",
                                                RuntimeError("TensorRT EP failed to build the engine\ndetail"), "")
    assert isinstance(broken, RuntimeError) and not isinstance(broken, Unavailable)
    assert str(broken) == ("TensorrtExecutionProvider failed to create the session: "
                           "TensorRT EP failed to build the engine")


def test_every_gpu_runtime_takes_its_device_as_cuda_n() -> None:
    """One spelling for all (the worker reads it too, to watch that GPU through NVML)."""
    from engine.errors import UserError
    from engine.runtimes import onnxruntime as ort_runtime

    for runtime_id in GPU_RUNTIMES:
        assert REGISTRY[runtime_id].Options.field_names()[-1] == "tf32"  # and each says whether fp32 may be TF32
        assert "device" in REGISTRY[runtime_id].Options.field_names()
        assert REGISTRY[runtime_id].create(1, {"device": "cuda:2"}).settings.options.cuda_device == "cuda:2"
        with pytest.raises(UserError, match=r"device=cpu is not valid; it takes cuda or cuda:N"):
            REGISTRY[runtime_id].create(1, {"device": "cpu"})  # checked where settings are made, for every runtime
    cuda = ort_runtime.OnnxRuntimeCuda.create(1, {"device": "cuda:1"})
    assert cuda._provider_options("baseline")["device_id"] == 1


def test_the_engine_inspectors_layers_name_their_type_precision_and_tactic() -> None:
    info = {"Layers": [
        {"Name": "/0/Gemm", "LayerType": "CaskGemmMatrixMultiply", "TacticName": "sm90_xmma_gemm_f16",
         "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "Reformatting CopyNode for Input Tensor 0", "LayerType": "Reformat", "Outputs": []},
    ], "Bindings": ["x", "y"]}
    assert trt_runtime.inspector_layers(info) == {
        "/0/Gemm": ("CaskGemmMatrixMultiply", "GPU · Row major linear FP16 format · sm90_xmma_gemm_f16"),
        "Reformatting CopyNode for Input Tensor 0": ("Reformat", "GPU"),
    }
    # an engine built without detailed verbosity lists its layers' names only
    assert trt_runtime.inspector_layers({"Layers": ["conv1", "relu1"]}) == {"conv1": ("?", "GPU"),
                                                                             "relu1": ("?", "GPU")}
