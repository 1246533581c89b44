"""Interleaved rounds: drift cancels, the interval is the median's, the partner process and its failures."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import job
from engine.artifacts import intake
from engine.executors.partner import Partner, PartnerError
from engine.measure import rounds
from engine.measure.latency import MeasureSettings
from engine.plan import Cell, StudySettings
from engine.report.speedups import add_speedups
from engine.results import CellResult, Status


class DriftingMachine:
    """Two blocks' timings on a machine that slows down by 5% per block: the cell costs 1 unit, the baseline 2."""

    def __init__(self) -> None:
        self.blocks = 0

    def block(self, cost: float) -> np.ndarray:
        self.blocks += 1
        return np.full(5, cost * 1.05**self.blocks)


def test_rounds_cancel_a_drift_that_separate_timings_take_for_a_speedup() -> None:
    machine = DriftingMachine()
    paired = rounds.run_rounds(lambda: machine.block(1.0), lambda: machine.block(2.0), 10, baseline_cell=0,
                               iterations=(5, 5))
    # alternating blocks: each round's ratio is off by one block's drift, and the order flips every round
    assert paired.ratios[0] == pytest.approx(2 * 1.05) and paired.ratios[1] == pytest.approx(2 / 1.05)
    assert paired.speedup == pytest.approx(2.0, rel=0.05)
    low, high = paired.ci95 or (0, 0)
    assert low <= 2.0 <= high
    # the same machine timed as two separate windows (cell, then baseline 10 blocks later) reads 3.3x
    late = DriftingMachine()
    cell = np.concatenate([late.block(1.0) for _ in range(10)])
    base = np.concatenate([late.block(2.0) for _ in range(10)])
    assert np.median(base) / np.median(cell) > 3.0


def test_median_interval_is_the_order_statistics_of_a_95_percent_binomial_interval() -> None:
    values = list(range(1, 11))  # n = 10: the 2nd and 9th order statistics (coverage 97.9%)
    assert rounds.median_interval(values) == (2.0, 9.0)
    assert rounds.median_interval(list(range(1, 7))) == (1.0, 6.0)  # n = 6: the extremes (96.9%)
    assert rounds.median_interval(list(range(1, 6))) is None  # n = 5: no pair covers 95%


def test_block_sizes_follow_the_call_time_within_bounds() -> None:
    assert rounds.block_iterations(1.0, 0.2) == 200
    assert rounds.block_iterations(500.0, 0.2) == rounds.MIN_BLOCK_ITERATIONS
    assert rounds.block_iterations(0.0, 0.2) == rounds.MIN_BLOCK_ITERATIONS
    assert rounds.block_iterations(1e-6, 10.0) == rounds.MAX_BLOCK_ITERATIONS


@pytest.mark.parametrize("value", [-1, 3, 5, 1001])
def test_rounds_setting_is_zero_or_enough_for_an_interval(value: int) -> None:
    with pytest.raises(ValueError, match=f"rounds={value}"):
        MeasureSettings(rounds=value)


def _row(cell: int, variant: str, p50: float, ci: list[float], paired: dict[str, Any] | None = None) -> CellResult:
    return CellResult.from_json({"cell": cell, "variant": variant, "runtime": "onnxruntime", "status": "ok",
                                 "batch_size": 1, "paired": paired, "latency_ms": {"p50": p50, "p50_ci95": ci}})


def test_speedups_use_the_rounds_against_the_baseline_they_were_timed_with() -> None:
    rows = [
        _row(0, "baseline", 10.0, [9.0, 11.0]),
        _row(1, "int8", 4.0, [3.9, 4.1], {"baseline_cell": 0, "speedup": 2.4, "ci95": [2.2, 2.6], "rounds": 10}),
        _row(2, "fp16", 5.0, [4.0, 6.0], {"baseline_cell": 7, "speedup": 9.9, "ci95": [9, 11], "rounds": 10}),
        CellResult(cell=3, variant="x", runtime="onnxruntime", status=Status.FAILED, batch_size=1),
    ]
    add_speedups(rows)
    base, paired, other_base, failed = rows
    assert (base.speedup_vs_baseline, base.speedup_ci95, base.speedup_method) == (1.0, (1.0, 1.0), "baseline")
    assert (paired.speedup_vs_baseline, paired.speedup_ci95) == (2.4, (2.2, 2.6))
    assert (paired.speedup_method, paired.speedup_rounds) == ("interleaved", 10)
    # timed against another baseline cell (one that failed later): the ratio of the separate p50s
    assert other_base.speedup_method == "separate"
    assert other_base.speedup_vs_baseline == pytest.approx(2.0)
    assert other_base.speedup_ci95 == pytest.approx((9.0 / 6.0, 11.0 / 4.0))
    assert failed.speedup_vs_baseline is None and failed.speedup_method is None
    assert all(row.baseline_cell == (None if row is failed else 0) for row in rows)


@pytest.fixture
def study(tmp_path: Path, mlp_onnx: Path) -> tuple[Path, Any, StudySettings]:
    model = intake(mlp_onnx)
    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.02, rounds=6),
                             threads=1, timeout_s=120, memory_limit_mb=4096)
    job.compute_reference(tmp_path, model, None, settings, lambda phase, fraction: None)
    return tmp_path, model, settings


def _cell(index: int, variant: str, runtime: str, chain: list[dict[str, Any]] | None = None) -> Cell:
    return Cell(index, variant, tuple(chain or []), runtime, 1)


def test_a_cell_is_timed_against_its_baseline_in_a_partner_process(study: tuple[Path, Any, StudySettings]) -> None:
    folder, model, settings = study
    baseline = _cell(0, "baseline", "onnxruntime")
    result = job.run_cell(folder, model, _cell(1, "baseline", "openvino"), settings, None,
                          lambda phase, fraction: None, baseline)
    paired = result.paired
    assert paired is not None and paired.error is None, paired
    assert paired.baseline_cell == 0 and paired.rounds == 6 and len(paired.ratios) == 6
    assert paired.ci95 is not None and paired.speedup is not None
    low, high = paired.ci95
    assert low <= paired.speedup <= high
    assert paired.baseline_p50_ms and paired.baseline_p50_ms > 0 and paired.cell_p50_ms and paired.cell_p50_ms > 0
    assert result.settings is not None and result.settings["rounds"] == 6  # recorded with the other settings
    # the baseline itself, or a study without rounds, has no partner
    assert job.run_cell(folder, model, baseline, settings, None, lambda p, f: None, baseline).paired is None


def test_a_partner_that_cannot_load_leaves_the_cell_its_own_timings(study: tuple[Path, Any, StudySettings]) -> None:
    folder, model, settings = study
    unavailable = _cell(0, "baseline", "tensorrt")  # no GPU here: the partner reports why and exits
    result = job.run_cell(folder, model, _cell(1, "baseline", "onnxruntime"), settings, None,
                          lambda phase, fraction: None, unavailable)
    assert result.latency_ms is not None and result.latency_ms.p50 and result.latency_ms.p50 > 0
    assert result.paired is not None and result.paired.error and "Unavailable" in result.paired.error
    assert any(note.startswith("speedup from separate timings") for note in result.notes)


def test_a_partner_killed_mid_rounds_is_an_error_not_a_hang(study: tuple[Path, Any, StudySettings]) -> None:
    folder, model, settings = study
    with Partner(folder, model, _cell(0, "baseline", "onnxruntime"), settings, None, 0.01) as partner:
        assert partner.time_block().size == partner.iterations
        process = partner._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(PartnerError, match="exit code -9"):
            partner.time_block()
