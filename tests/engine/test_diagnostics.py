"""Why a cell measured what it did: quantization's coverage of the built variant, the hardware's verdict on its
number format, and `python -m engine explain`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from engine import diagnostics, job
from engine.__main__ import main
from engine.artifacts import intake
from engine.measure import hardware
from engine.measure.latency import MeasureSettings
from engine.optimizations import parse_chain
from engine.plan import Cell, StudySettings
from tests.conftest import _mlp
from tests.engine.test_cli import FAST
from tests.engine.variants import build_onnx


@pytest.mark.parametrize(("chain", "quantized", "left", "named"), [
    ("int8-dynamic", {"MatMul": 2}, {"MatMul": 0}, []),  # the quantizer turns each Gemm into a MatMulInteger
    ("int8-static", {"Gemm": 2}, {"Gemm": 0}, []),  # QDQ: each Gemm reads DequantizeLinear outputs
    ("int8-static:exclude=/0/Gemm", {"Gemm": 1}, {"Gemm": 1}, ["/0/Gemm"]),
])
def test_an_onnx_variants_quantized_and_float_ops_are_counted(mlp_onnx: Path, chain: str, quantized: dict[str, int],
                                                               left: dict[str, int], named: list[str]) -> None:
    variant = build_onnx(mlp_onnx, chain)
    coverage = diagnostics.quantization(variant, [step.id for step in parse_chain(chain).steps])
    assert coverage is not None
    assert (coverage["quantized"], coverage["float"], coverage["float_nodes"]) == (quantized, left, named)
    assert coverage["quantize_nodes"] == sum(quantized.values())  # one per quantized input activation


def test_a_chain_without_int8_has_no_coverage(mlp_onnx: Path) -> None:
    assert diagnostics.quantization(build_onnx(mlp_onnx, "fp16"), ["fp16"]) is None


def test_a_torch_modules_dynamically_quantized_layers_are_counted() -> None:
    import torch

    plain = _mlp()
    assert diagnostics.torch_quantization(plain)["float"] == {"Linear": 2}
    quantized = torch.ao.quantization.quantize_dynamic(_mlp(), {torch.nn.Linear}, dtype=torch.qint8)
    coverage = diagnostics.torch_quantization(quantized)
    assert (coverage["quantized"], coverage["float"]) == ({"Linear": 2}, {"Linear": 0})


@pytest.mark.parametrize(("flags", "int8"), [
    ({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, "AMX"),
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"),
    ({"avx2", "avx_vnni"}, "AVX-VNNI"),
    ({"avx2", "fma"}, "AVX2 only"),
    ({"sse4_2"}, "no AVX2"),
])
def test_the_int8_path_is_read_from_the_cpu_flags(flags: set[str], int8: str) -> None:
    assert hardware.cpu_capabilities(flags)["int8"] == int8


def test_verdicts_say_what_the_hardware_lets_a_format_do() -> None:
    avx2 = hardware.cpu_capabilities({"avx2", "fma", "f16c"})
    assert hardware.verdict(["int8-static"], "cpu", avx2) == (
        "int8 on AVX2 without VNNI: expect at most 1.3x over fp32 (u8 x s8 products go through 16-bit steps)")
    assert "no faster than fp32" in str(hardware.verdict(["fp16"], "cpu", avx2))
    assert "native bf16" in str(hardware.verdict(["bf16"], "cpu", hardware.cpu_capabilities({"avx512_bf16"})))
    assert hardware.verdict(["prune-structured"], "cpu", avx2) is None  # fp32: nothing the format explains
    assert hardware.verdict(["prune-structured", "int8-dynamic"], "cpu", avx2) is not None
    assert "DP4A only" in str(hardware.verdict(["int8-static"], "cuda", compute_capability="6.1"))
    on_ampere = hardware.verdict(["bf16"], "cuda", compute_capability="8.0")
    assert on_ampere == "bf16 on tensor cores (compute capability 8.0)"
    assert "without tensor-core support" in str(hardware.verdict(["bf16"], "cuda", compute_capability="7.5"))
    assert hardware.gpu_precisions("9.0") == ["fp16", "int8", "bf16", "tf32", "fp8"]


def test_a_cells_result_carries_its_diagnostics(tmp_path: Path, mlp_onnx: Path) -> None:
    model = intake(mlp_onnx)
    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.0, rounds=0), threads=1)
    job.compute_reference(tmp_path, model, None, settings, lambda phase, fraction: None)
    chain = parse_chain("int8-static")
    result = job.run_cell(tmp_path, model, Cell(0, chain.name, tuple(chain.to_json()), "onnxruntime", 1), settings,
                          None, lambda phase, fraction: None)
    assert result.diagnostics is not None
    assert result.diagnostics["quantization"]["quantized"] == {"Gemm": 2}
    assert result.diagnostics["hardware"] == hardware.verdict(["int8-static"], "cpu")
    # where the time goes: ONNX Runtime's profiler, per node, after the timing
    top = result.diagnostics["top_ops"]
    assert top and {op["op_type"] for op in top} >= {"QGemm"} and all(op["where"] == "CPU" for op in top)
    assert sum(result.diagnostics["op_types"].values()) == pytest.approx(1.0)
    assert result.diagnostics["profile_overhead_ms"] > 0 and result.diagnostics["profile_runs"] >= 3
    assert 0 < result.diagnostics["quantization"]["qdq_share"] < 1  # the input's QuantizeLinear, not fused


@pytest.fixture
def measured(tmp_path: Path, mlp_onnx: Path) -> Any:
    model = intake(mlp_onnx)
    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=5, min_seconds=0.0, rounds=0), threads=1)
    job.compute_reference(tmp_path, model, None, settings, lambda phase, fraction: None)

    def run(chain_text: str, runtime: str) -> Any:
        chain = parse_chain(chain_text)
        return job.run_cell(tmp_path, model, Cell(0, chain.name, tuple(chain.to_json()), runtime, 1), settings, None,
                            lambda phase, fraction: None)

    return run


def test_the_profile_runs_after_the_timing_and_adds_no_sample(measured: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.measure import latency, memory
    from engine.runtimes.onnxruntime import OnnxRuntimeCpu

    events: list[tuple[str, int]] = []
    timed, profiled, peak = latency.measure, OnnxRuntimeCpu.profile, memory.peak_host_mb

    def peak_read() -> float:
        events.append(("peak memory", 0))
        return peak()

    def measure(*args: Any, **kwargs: Any) -> Any:
        samples = timed(*args, **kwargs)
        events.append(("timed", len(samples)))
        return samples

    def profile(self: Any, *args: Any) -> Any:
        events.append(("profiled", args[-1]))
        return profiled(self, *args)

    monkeypatch.setattr(latency, "measure", measure)
    monkeypatch.setattr(OnnxRuntimeCpu, "profile", profile)
    monkeypatch.setattr(memory, "peak_host_mb", peak_read)
    result = measured("baseline", "onnxruntime")
    # the cell's peak memory is read before the profile's second session exists
    assert [kind for kind, _ in events] == ["timed", "peak memory", "profiled"]
    assert len(result.samples_ms) == events[0][1]  # the profiled calls are none of the timed samples


def test_openvino_names_the_kernel_each_layer_ran(measured: Any) -> None:
    result = measured("int8-static", "openvino")
    top = result.diagnostics["top_ops"]
    assert top and all(op["where"] and op["op_type"] for op in top)
    assert any(op["op_type"].startswith("FullyConnected") for op in top)


def test_a_profiler_that_fails_is_a_note_not_a_failed_cell(measured: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import Unavailable
    from engine.runtimes.onnxruntime import OnnxRuntimeCpu

    def fails(self: Any, *args: Any) -> Any:
        raise Unavailable("no profiler here")

    monkeypatch.setattr(OnnxRuntimeCpu, "profile", fails)
    result = measured("baseline", "onnxruntime")
    assert result.ok and result.diagnostics["top_ops"] is None
    assert result.diagnostics["profile_error"] == "Unavailable: no profiler here"


@pytest.mark.slow
def test_explain_prints_a_cells_diagnostics(tmp_path: Path, mlp_onnx: Path) -> None:
    out = io.StringIO()
    assert main(["bench", str(mlp_onnx), *FAST, "--variants", "baseline,int8-static:exclude=/0/Gemm",
                 "--runtimes", "onnxruntime"], out=out) == 0
    study_id = json.loads(out.getvalue().strip().splitlines()[-1].split()[1].rstrip(":"))
    explained = io.StringIO()
    assert main(["explain", str(study_id), "--cell", "1"], out=explained) == 0
    text = explained.getvalue()
    assert "cell 1: int8-static:exclude=/0/Gemm · onnxruntime" in text
    assert "quantization: Gemm 1 of 2 int8" in text and "left in float: /0/Gemm" in text
    assert "time by op type: " in text and " on CPU: " in text
    assert "layer errors against fp32 (8 samples, 2 layers" in text
    assert "reaching   0.0%  Gemm /0/Gemm" in text  # the layer kept in float adds nothing
    as_json = io.StringIO()
    assert main(["explain", str(study_id), "--cell", "0", "--json"], out=as_json) == 0
    baseline = json.loads(as_json.getvalue())["diagnostics"]
    assert (baseline["quantization"], baseline["hardware"]) == (None, None) and baseline["top_ops"]
    assert main(["explain", str(study_id), "--cell", "9"], out=io.StringIO()) == 2  # one line: pick a cell
