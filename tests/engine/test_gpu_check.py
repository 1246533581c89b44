"""benchmarks/gpu_check.py is run on a lent GPU machine in one go, with no second chance: its machinery is tested
here on the CPU runtimes (`--self-test`), so only the GPU paths themselves can fail there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from engine.measure.devices import cuda_devices

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(bool(cuda_devices()[0]), reason="this machine has a GPU: the check would run for real")
def test_without_a_gpu_it_says_so_in_one_line_and_succeeds(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    assert _load().main(["--out", str(tmp_path / "x.json")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu_check: no NVIDIA GPU")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_self_test_runs_every_step_on_the_cpu_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(tmp_path / "data"))  # the script sets its own; restored after
    out = tmp_path / "gpu_check.json"
    assert _load().main(["--self-test", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["model"], r["runtime"], r["variant"]): r for r in report["rows"]}
    for model in ("cnn", "encoder"):
        for runtime in ("torch", "onnxruntime"):
            row = rows[(model, runtime, "baseline")]
            assert row["status"] == "ok" and row["relative_error"] < 1e-3 and row["p50_ms"] > 0
        assert rows[(model, "onnxruntime", "fp16")]["status"] == "ok"  # fp16 ONNX runs on the CPU provider
        assert rows[(model, "torch", "fp16")]["status"] == "n/a"  # torch half precision needs CUDA
    assert report["study"]["status"] == "ok"
    assert {r["runtime"] for r in report["study"]["rows"]} == {"torch", "onnxruntime"}
    distilled = [r for r in report["study"]["rows"] if "distill" in r["variant"]]
    assert distilled and all(r["status"] == "ok" for r in distilled)
    assert any(" on cpu in " in note for r in distilled for note in r["training"])  # where it trained is reported
    assert all(r["peak_device_mb"] is None for r in report["study"]["rows"])  # CPU cells have no device memory
    table = capsys.readouterr().out
    assert "cnn      torch" in table and "study: ok" in table


def test_a_failing_path_is_a_row_not_a_crash(tmp_path: Path) -> None:
    gpu_check = _load()
    from engine.specs import InputSpec

    class Broken:
        format = "onnx"
        spec = InputSpec.parse("x:float32[B,4]")
        path = tmp_path / "missing.onnx"

    row = gpu_check.check_cell(Broken(), "onnxruntime", {}, "baseline", {}, [], 2)
    assert row["status"] == "failed" and row["reason"]
