"""The typed results record and its codec: the results JSON round-trips, older rows read, newer keys survive."""

from __future__ import annotations

import json

import pytest

from engine.results import FAILED, FINAL, SKIPPED, CellResult, Fidelity, LatencySummary, Rounds, Status, TaskMetric


def full() -> CellResult:
    return CellResult(
        cell=3, job_id=11, variant="int8-static", runtime="onnxruntime", batch_size=8, status=Status.OK, attempts=1,
        latency_ms=LatencySummary(p50=1.5, p90=1.7, p95=1.8, p99=2.0, mean=1.55, std=0.1, min=1.4, max=2.2,
                                  p50_ci95=(1.45, 1.55), iterations=200),
        throughput_per_s=5161.3, load_s=0.2, first_run_ms=9.0, peak_host_mb=300.0, model_size_mb=1.2,
        fidelity=Fidelity(max_abs=0.01, mean_abs=0.001, cosine=0.999, top1_agreement=1.0, pooled_cosine=0.9995),
        task=TaskMetric("top1", 0.97), settings={"threads": 2}, notes=["a note"],
        inputs={"source": "synthesized", "summary": "inputs synthesized"}, build_s=1.0, target="onnx",
        noise={"noisy": False}, wall_s=4.2,
        paired=Rounds(baseline_cell=0, rounds=10, speedup=2.1, ci95=(2.0, 2.2), ratios=(2.1,) * 10,
                      cell_p50_ms=1.5, baseline_p50_ms=3.1, block_iterations=(20, 10)),
        speedup_vs_baseline=2.1, speedup_ci95=(2.0, 2.2), speedup_method="interleaved", speedup_rounds=10,
        baseline_cell=0, samples_ms=[1.5, 1.6],
    )


def test_a_full_record_round_trips_through_json() -> None:
    record = full()
    assert CellResult.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_the_json_has_every_documented_key_null_where_it_does_not_apply() -> None:
    data = CellResult(variant="fp16", runtime="openvino", batch_size=1, status=Status.NOT_APPLICABLE,
                      error="fp16 has no OpenVINO implementation").to_json()
    for key in ("variant", "runtime", "batch_size", "status", "error", "latency_ms", "throughput_per_s", "load_s",
                "first_run_ms", "peak_host_mb", "peak_device_mb", "model_size_mb", "settings", "notes"):
        assert key in data
    assert data["status"] == "n/a" and data["latency_ms"] is None
    assert data["accuracy"] == {"fidelity": None, "task": None}
    assert "samples_ms" not in data  # only where asked for


def test_an_older_row_reads_with_nulls_and_a_newer_rows_keys_survive() -> None:
    older = {"cell": 0, "variant": "baseline", "runtime": "torch", "batch_size": 1, "status": "ok",
             "latency_ms": {"p50": 2.0}, "accuracy": {"fidelity": {"cosine": 1.0}, "task": None}}
    record = CellResult.from_json(older)
    assert record.latency_ms == LatencySummary(p50=2.0) and record.latency_ms.p50_ci95 is None
    assert record.fidelity == Fidelity(cosine=1.0) and record.paired is None and record.speedup_ci95 is None
    newer = {**older, "generation": {"ttft_ms": {"p50": 12.0}}}  # a key this version does not know
    kept = CellResult.from_json(newer)
    assert kept.extra == {"generation": newer["generation"]} and kept.to_json()["generation"] == newer["generation"]


def test_a_failed_rounds_record_keeps_only_its_error() -> None:
    record = Rounds(baseline_cell=0, error="the baseline's process died")
    assert record.to_json() == {"baseline_cell": 0, "error": "the baseline's process died"}
    assert Rounds.from_json(record.to_json()) == record


def test_status_groups() -> None:
    assert Status("n/a") is Status.NOT_APPLICABLE and Status.OK == "ok"
    assert set(FINAL) == set(Status) - {Status.QUEUED, Status.RUNNING}
    assert not set(FAILED) & set(SKIPPED) and Status.OK not in FAILED and set(FAILED) | set(SKIPPED) < set(FINAL)
    with pytest.raises(ValueError):
        CellResult(variant="x", runtime="y", batch_size=1, status="finished")  # type: ignore[arg-type]
