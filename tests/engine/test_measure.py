"""Measurement: the latency loop (with a sleeping fake session), statistics, fidelity, environment and devices."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.measure import accuracy, devices, environment, latency, memory
from engine.measure.latency import MeasureSettings

ROOT = Path(__file__).resolve().parents[2]


class SleepySession:
    """Stands in for a runtime session: run() sleeps a known time; prepare/fetch are slow and must stay untimed."""

    def __init__(self, run_s: float, sync_s: float = 0.0, fail_at: int | None = None) -> None:
        self.run_s, self.sync_s, self.fail_at = run_s, sync_s, fail_at
        self.runs = self.syncs = self.prepares = self.fetches = 0
        self.gc_enabled_during_runs: list[bool] = []

    def prepare(self, feeds: Any) -> Any:
        self.prepares += 1
        time.sleep(0.05)
        return feeds

    def fetch(self, outputs: Any) -> Any:
        self.fetches += 1
        time.sleep(0.05)
        return outputs

    def run(self, prepared: Any) -> Any:
        self.runs += 1
        self.gc_enabled_during_runs.append(gc.isenabled())
        if self.fail_at is not None and self.runs == self.fail_at:
            raise RuntimeError("inference failed")
        time.sleep(self.run_s)
        return prepared

    def synchronize(self) -> None:
        self.syncs += 1
        time.sleep(self.sync_s)


# --- the latency loop -------------------------------------------------------------------------


def test_warmup_and_minimum_iterations_are_honoured() -> None:
    session = SleepySession(0.001)
    samples = latency.measure(session, {}, MeasureSettings(warmup=3, iterations=7, min_seconds=0))
    assert samples.dtype == np.float64 and samples.shape == (7,)
    assert session.runs == session.syncs == 10  # warm-up runs are not samples
    assert session.prepares == session.fetches == 0  # input preparation and output conversion stay outside


def test_minimum_seconds_extends_the_run() -> None:
    session = SleepySession(0.005)
    start = time.perf_counter()
    samples = latency.measure(session, {}, MeasureSettings(warmup=0, iterations=2, min_seconds=0.06))
    assert time.perf_counter() - start >= 0.06
    assert samples.size >= 5 and session.runs == samples.size  # far more than the 2 iterations asked for
    assert samples.min() >= 5.0 and samples.sum() >= 0.8 * 60  # the time went into run(), as samples


def test_samples_measure_run_and_synchronize_only() -> None:
    session = SleepySession(0.004, sync_s=0.002)
    samples = latency.measure(session, {}, MeasureSettings(warmup=1, iterations=10, min_seconds=0))
    assert samples.min() >= 6.0  # 4 ms run + 2 ms device sync, in milliseconds
    assert np.median(samples) < 20.0  # and nothing like prepare/fetch's 50 ms sleeps


def test_progress_and_garbage_collection() -> None:
    phases: list[tuple[str, float]] = []
    session = SleepySession(0.0)
    assert gc.isenabled()
    latency.measure(session, {}, MeasureSettings(warmup=2, iterations=130, min_seconds=0),
                    lambda phase, fraction: phases.append((phase, fraction)))
    assert phases[0] == ("warming up", 0.0) and phases[-1] == ("measuring", 1.0)
    fractions = [f for p, f in phases if p == "measuring"]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    assert session.gc_enabled_during_runs[:2] == [True, True]  # warm-up
    assert not any(session.gc_enabled_during_runs[2:])  # paused while timing
    assert gc.isenabled()


def test_garbage_collection_is_restored_when_a_run_fails() -> None:
    session = SleepySession(0.0, fail_at=4)
    with pytest.raises(RuntimeError, match="inference failed"):
        latency.measure(session, {}, MeasureSettings(warmup=1, iterations=10, min_seconds=0))
    assert gc.isenabled()


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"warmup": -1}, "warmup=-1"), ({"iterations": 0}, "iterations=0"), ({"min_seconds": -0.5}, "min_seconds=-0.5"),
])
def test_measure_settings_validate(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MeasureSettings(**kwargs)
    assert MeasureSettings() == MeasureSettings(warmup=10, iterations=50, min_seconds=2.0)


def test_measuring_a_real_onnxruntime_session(shared_build, mlp_onnx: Path) -> None:
    from engine.runtimes import get

    _, variant = shared_build(mlp_onnx)
    with get("onnxruntime").create(threads=1).load(variant) as session:
        prepared = session.prepare({"x": np.zeros((1, 16), np.float32)})
        samples = latency.measure(session, prepared, MeasureSettings(warmup=2, iterations=20, min_seconds=0.02))
    assert samples.size >= 20 and (samples > 0).all() and np.median(samples) < 50


# --- statistics -------------------------------------------------------------------------------


def test_summarize_matches_numpy() -> None:
    samples = np.random.default_rng(0).lognormal(0.0, 0.3, 500)
    summary = latency.summarize(samples, batch_size=4)
    lat = summary["latency_ms"]
    for key, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert lat[key] == pytest.approx(np.percentile(samples, q))
    assert lat["mean"] == pytest.approx(samples.mean())
    assert lat["std"] == pytest.approx(samples.std(ddof=1))
    assert (lat["min"], lat["max"]) == (samples.min(), samples.max())
    assert lat["iterations"] == 500
    assert summary["throughput_per_s"] == pytest.approx(4 * 1000 / samples.mean())
    low, high = lat["p50_ci95"]
    assert low <= lat["p50"] <= high
    q25, q75 = np.percentile(samples, [25, 75])
    assert q25 < low and high < q75  # a CI of the median is much narrower than the spread
    json.dumps(summary)  # plain floats, ready for the results JSON


def test_bootstrap_ci_is_deterministic_and_seeded() -> None:
    samples = np.random.default_rng(1).normal(10, 1, 200)
    assert latency.bootstrap_median_ci(samples) == latency.bootstrap_median_ci(samples)
    assert latency.summarize(samples, 1) == latency.summarize(samples, 1)
    assert latency.bootstrap_median_ci(samples, seed=1) != latency.bootstrap_median_ci(samples, seed=2)
    constant = np.full(30, 2.5)
    assert latency.bootstrap_median_ci(constant) == (2.5, 2.5)


def test_summarize_a_single_sample() -> None:
    summary = latency.summarize(np.array([2.0]), batch_size=8)
    assert summary["latency_ms"]["std"] == 0.0 and summary["latency_ms"]["p99"] == 2.0
    assert summary["latency_ms"]["p50_ci95"] == [2.0, 2.0]
    assert summary["throughput_per_s"] == pytest.approx(4000.0)


# --- fidelity and the task metric -------------------------------------------------------------


def _logits(n: int = 50, classes: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, classes)).astype(np.float32)


def test_identical_outputs_are_perfect() -> None:
    ref = [_logits()]
    result = accuracy.fidelity(ref, [ref[0].copy()])
    assert result == {"max_abs": 0.0, "mean_abs": 0.0, "cosine": pytest.approx(1.0), "top1_agreement": 1.0,
                      "pooled_cosine": None}


def test_fidelity_measures_known_differences() -> None:
    ref = _logits()
    out = ref.copy()
    out[3, 1] += 0.5
    result = accuracy.fidelity([ref], [out])
    assert result["max_abs"] == pytest.approx(0.5)
    assert result["mean_abs"] == pytest.approx(0.5 / ref.size)
    assert 0.9 < result["cosine"] < 1.0
    assert accuracy.fidelity([ref], [-ref])["cosine"] == pytest.approx(-1.0)
    assert accuracy.fidelity([ref], [ref * 3])["cosine"] == pytest.approx(1.0)  # scale-free


def test_top1_agreement_counts_changed_predictions() -> None:
    ref = np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (10, 1))
    out = ref.copy()
    out[:3] = [1.0, 0.0, 0.0]
    assert accuracy.fidelity([ref], [out])["top1_agreement"] == pytest.approx(0.7)


@pytest.mark.parametrize("shape", [(6, 8, 4), (6, 1), (6,)])
def test_top1_agreement_is_none_for_non_classifier_outputs(shape: tuple[int, ...]) -> None:
    ref = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    result = accuracy.fidelity([ref], [ref + 0.01])
    assert result["top1_agreement"] is None
    assert result["max_abs"] == pytest.approx(0.01, abs=1e-6) and result["cosine"] > 0.99


def test_fidelity_over_several_outputs() -> None:
    ref = [_logits(8), np.ones((8, 2, 3), np.float32)]
    out = [ref[0].copy(), ref[1] + 0.25]
    result = accuracy.fidelity(ref, out)
    assert result["max_abs"] == pytest.approx(0.25)
    assert result["mean_abs"] == pytest.approx(0.25 * 48 / (32 + 48))
    assert result["top1_agreement"] == 1.0


def test_fidelity_of_zero_outputs_and_of_broken_outputs() -> None:
    zeros = np.zeros((4, 3), np.float32)
    assert accuracy.fidelity([zeros], [zeros])["cosine"] == 1.0
    broken = _logits(4, 3)
    broken[0, 0] = np.nan
    result = accuracy.fidelity([_logits(4, 3)], [broken])
    assert np.isnan(result["max_abs"]) and np.isnan(result["cosine"])  # never reported as a perfect match


def test_fidelity_rejects_mismatched_outputs() -> None:
    with pytest.raises(ValueError, match="2 outputs"):
        accuracy.fidelity([_logits()], [_logits(), _logits()])
    with pytest.raises(ValueError, match="shape"):
        accuracy.fidelity([_logits(50)], [_logits(49)])


def test_task_metric_is_top1_accuracy_against_labels() -> None:
    logits = _logits(40)
    labels = logits.argmax(axis=1)
    labels[:10] = (labels[:10] + 1) % 4
    assert accuracy.task_metric([logits], labels) == {"name": "top1", "value": pytest.approx(0.75)}
    assert accuracy.task_metric([logits], labels.astype(np.uint8)) == {"name": "top1", "value": pytest.approx(0.75)}


@pytest.mark.parametrize("case", ["no labels", "not a classifier", "count", "float labels", "2-d labels"])
def test_task_metric_is_none_where_it_does_not_apply(case: str) -> None:
    labels: Any = np.zeros(40, np.int64)
    outputs = [_logits(40)]
    if case == "no labels":
        labels = None
    elif case == "not a classifier":
        outputs = [np.zeros((40, 6, 4), np.float32)]
    elif case == "count":
        labels = labels[:30]
    elif case == "float labels":
        labels = labels.astype(np.float32)
    else:
        labels = labels.reshape(40, 1)
    assert accuracy.task_metric(outputs, labels) is None


# --- memory, environment, devices -------------------------------------------------------------


def test_host_memory_is_reported_in_mib() -> None:
    peak, current = memory.peak_host_mb(), memory.current_host_mb()
    assert 10 < current < 100_000
    assert peak >= current * 0.9  # the peak (as the kernel counts it) is at least about what is resident now


def test_environment_describes_the_machine() -> None:
    env = environment.collect(threads=3)
    assert env["threads"] == 3
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert env["cores_logical"] >= 1 and (env["cores_physical"] is None or env["cores_physical"] >= 1)
    assert env["memory_gb"] > 0
    libs = env["libraries"]
    assert libs["numpy"] == np.__version__
    assert libs["torch"] and libs["torch"].startswith("2.") and libs["onnxruntime"] and libs["openvino"]
    assert env["git_commit"] is None or (len(env["git_commit"]) == 40 and int(env["git_commit"], 16) >= 0)
    assert isinstance(env["gpus"], list) and (env["gpus"] or env["gpu_reason"])
    json.dumps(env)


def test_environment_does_not_import_heavy_libraries() -> None:
    code = (
        "import json, sys\n"
        "from engine.measure import environment\n"
        "env = environment.collect(2)\n"
        "heavy = ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'transformers', 'onnx')\n"
        "print(json.dumps({'heavy': [m for m in heavy if m in sys.modules], 'torch': env['libraries']['torch']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [] and report["torch"]


@pytest.fixture
def fresh_cuda_devices():  # type: ignore[no-untyped-def]
    devices.cuda_devices.cache_clear()
    yield devices.cuda_devices
    devices.cuda_devices.cache_clear()


def test_no_gpu_is_a_reason_not_a_crash(fresh_cuda_devices) -> None:  # type: ignore[no-untyped-def]
    found, reason = fresh_cuda_devices()
    if found:
        pytest.skip("this machine has an NVIDIA GPU")
    assert found == () and reason and "NVIDIA" in reason


def test_missing_nvml_package_is_a_reason(fresh_cuda_devices, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynvml" else real(name, *a))
    assert fresh_cuda_devices() == ((), "nvidia-ml-py is not installed, so no NVIDIA GPU can be found")


def test_nvml_errors_become_reasons(fresh_cuda_devices, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    found, reason = fresh_cuda_devices()
    assert found == () and reason is not None and reason.startswith("no NVIDIA driver")
