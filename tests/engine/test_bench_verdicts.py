"""The verdicts of benchmarks/speedups.py and benchmarks/repeatability.py, on result rows made by hand: which
speedup a row stands for (with or without the engine's interval), when runs repeat, which cell meets the target."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import repeatability, speedups
from benchmarks.common import format_speedup, isa_from_flags, speedup_of


def _row(variant: str, runtime: str, p50: float | None, cell: int, status: str = "ok", cosine: float = 1.0,
         pooled: float | None = 1.0, **extra: Any) -> dict[str, Any]:
    return {"cell": cell, "variant": variant, "runtime": runtime, "batch_size": 1, "status": status,
            "latency_ms": {"p50": p50, "p90": p50} if p50 is not None else None, "error": None,
            "accuracy": {"fidelity": {"cosine": cosine, "pooled_cosine": pooled, "max_abs": 0.0}}, **extra}


def test_speedup_is_the_engines_with_its_interval_when_it_divides_by_the_reference() -> None:
    ref = _row("baseline", "torch", 20.0, 0)
    row = _row("int8-static", "onnxruntime", 8.0, 3, speedup_vs_baseline=2.4, baseline_cell=0,
               speedup_ci95=[2.2, 2.6], speedup_method="interleaved", speedup_rounds=5)
    assert speedup_of(row, ref) == {"speedup": 2.4, "ci95": [2.2, 2.6], "method": "interleaved", "rounds": 5}


def test_speedup_without_the_engines_interval_or_against_another_baseline_is_the_p50_ratio() -> None:
    ref = _row("baseline", "torch", 20.0, 0)
    today = _row("int8-static", "onnxruntime", 8.0, 3, speedup_vs_baseline=2.5, baseline_cell=0)
    assert speedup_of(today, ref) == {"speedup": 2.5, "ci95": None, "method": None, "rounds": None}
    other = _row("int8-static", "onnxruntime", 8.0, 3, speedup_vs_baseline=1.5, baseline_cell=2,
                 speedup_ci95=[1.4, 1.6])
    assert speedup_of(other, ref)["speedup"] == 2.5 and speedup_of(other, ref)["ci95"] is None
    assert speedup_of(_row("fp16", "torch", None, 4, status="n/a"), ref)["speedup"] is None


def test_speedup_is_shown_with_its_interval() -> None:
    assert format_speedup(2.1, [1.95, 2.3]) == "2.10× [1.95, 2.30]"
    assert format_speedup(2.1, None) == "2.10×"
    assert format_speedup(None) == "-"


@pytest.mark.parametrize(("flags", "label"), [
    ({"avx2"}, "AVX2 only"), ({"avx2", "avx_vnni"}, "AVX-VNNI"), ({"avx2", "avx512_vnni", "avx_vnni"}, "AVX-512 VNNI"),
    ({"avx2", "avx512_vnni", "amx_int8", "amx_tile"}, "AMX"), ({"avx2", "avx512_vnni", "amx_int8"}, "AVX-512 VNNI"),
    (set(), "no AVX2"),
])
def test_int8_instruction_set_is_named_by_the_strongest_flag(flags: set[str], label: str) -> None:
    assert isa_from_flags(flags)["label"] == label


def test_speedups_target_needs_both_cosines_and_two_times() -> None:
    rows = [_row("baseline", "torch", 20.0, 0),
            _row("int8-static:activation_type=int8", "openvino", 5.0, 1, cosine=0.99, pooled=0.95),  # 4x, pooled low
            _row("int8-static", "onnxruntime", 9.0, 2, cosine=0.987, pooled=0.99)]
    summary = speedups.summarize({"results": rows})
    assert summary["best"]["variant"] == "int8-static" and summary["target_met"]  # 2.22x
    rows[2]["latency_ms"]["p50"] = 11.0  # 1.82x
    assert not speedups.summarize({"results": rows})["target_met"]


def _study(speedup: float, ci: list[float] | None, status: str = "ok") -> dict[str, Any]:
    extra = {} if ci is None else {"speedup_ci95": None}
    base = _row("baseline", "torch", 20.0, 0, speedup_vs_baseline=1.0, baseline_cell=0, **extra)
    cell = _row("int8-dynamic", "onnxruntime", 20.0 / speedup if status == "ok" else None, 1, status=status,
                speedup_vs_baseline=speedup if status == "ok" else None, baseline_cell=0 if status == "ok" else None)
    if ci is not None:
        cell["speedup_ci95"] = ci
    return {"results": [base, cell]}


def test_runs_repeat_when_medians_are_within_ten_percent_and_intervals_overlap() -> None:
    summary = repeatability.summarize([_study(2.0, [1.9, 2.1]), _study(2.15, [2.05, 2.25])])
    reference, cell = summary["cells"]
    assert reference["verdict"] == "reference" and reference["passed"] is None
    assert cell["spread"] == pytest.approx(1.075) and cell["overlap"] and cell["verdict"] == "PASS"
    assert summary["all_pass"] and summary["intervals"]


@pytest.mark.parametrize(("second", "why"), [
    ((2.3, [2.2, 2.4]), "speedups differ"),  # 1.15x apart
    ((2.1, [2.06, 2.14]), "intervals do not overlap"),
])
def test_runs_fail_on_spread_or_on_disjoint_intervals(second: tuple[float, list[float]], why: str) -> None:
    summary = repeatability.summarize([_study(2.0, [1.95, 2.05]), _study(*second)])
    cell = summary["cells"][1]
    assert cell["verdict"] == "FAIL" and why in cell["why"] and not summary["all_pass"]


def test_without_intervals_only_the_medians_are_judged() -> None:
    summary = repeatability.summarize([_study(2.0, None), _study(2.1, None)])
    cell = summary["cells"][1]
    assert cell["overlap"] is None and cell["verdict"] == "PASS" and not summary["intervals"]


def test_a_cell_that_fails_in_one_run_fails_and_one_that_never_runs_is_not_judged() -> None:
    summary = repeatability.summarize([_study(2.0, None), _study(2.0, None, status="failed")])
    assert summary["cells"][1]["verdict"] == "FAIL" and "run 2" in summary["cells"][1]["why"]
    summary = repeatability.summarize([_study(2.0, None, status="n/a"), _study(2.0, None, status="n/a")])
    assert summary["cells"][1]["verdict"] == "n/a" and not summary["all_pass"]  # nothing judged: no pass
