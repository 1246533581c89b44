"""GPU check: every available GPU runtime × variant on a small CNN and a BERT-class encoder, against the CPU fp32
reference; a proof that timings include device synchronization; and one real study through the engine whose
results must carry device memory and energy.

On a machine without an NVIDIA GPU it prints one line saying so and exits 0. Elsewhere it prints a table
(model, runtime, options, variant, relative error, limit, verdict, p50) and writes JSON (default
benchmarks/results/gpu_check.json). Relative error = ||out - ref|| / ||ref|| over every output (the table
also shows max |out - ref| / max |ref|); limits: fp32 < 1e-3, fp16 < 1e-2, bf16 < 2e-2 (bf16 keeps 8 bits of
mantissa to fp16's 11: its rounding unit is 8 times larger; the 6-layer encoder in bf16 is at 8.8e-3 on a CPU).
Rows are printed and the JSON rewritten as they come, so a run cut short still leaves what it measured.
Exit status 1 when a check fails; a runtime that is unavailable is a row with its reason, not a failure.

`--self-test` runs the same machinery on the CPU runtimes with tiny models, so the script itself is tested on
machines without a GPU (tests/engine/test_gpu_check.py). The one-call recipe for a lent GPU machine is in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ENCODER, ROOT, zip_folder

LIMITS = {"baseline": 1e-3, "fp16": 1e-2, "bf16": 2e-2}
VARIANTS = ("baseline", "fp16", "bf16")
# every runtime once with its defaults, and again with each setting that changes how it runs or is timed
GPU_CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("torch-cuda", {}), ("torch-cuda", {"cuda_graph": True}), ("torch-compile-cuda", {}),
    ("onnxruntime-cuda", {}), ("onnxruntime-cuda", {"io_binding": False}), ("onnxruntime-tensorrt", {}),
    ("tensorrt", {}),
)
CPU_CASES: tuple[tuple[str, dict[str, Any]], ...] = (("torch", {}), ("onnxruntime", {}))
# runtimes whose load compiles for minutes: checked last, after the study
COMPILING = {"torch-compile-cuda", "torch-compile"}


def _models(folder: Path, small: bool) -> dict[str, Path]:
    """A CNN saved with torch.export and a MiniLM-shaped BERT encoder as a zipped HF folder (random weights)."""
    import torch
    import transformers

    torch.manual_seed(0)
    width = 8 if small else 32
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
        torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(2 * width, 10),
    ).eval()
    program = torch.export.export(cnn, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    cnn_path = folder / "cnn.pt2"
    torch.export.save(program, str(cnn_path))
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000) \
        if small else ENCODER
    config = transformers.BertConfig(**size)
    transformers.BertModel(config).eval().save_pretrained(str(folder / "encoder"), safe_serialization=True)
    return {"cnn": cnn_path, "encoder": zip_folder(folder / "encoder", folder / "encoder.zip")}


def _relative_error(outputs: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """(norm-wise ||out - ref|| / ||ref||, max |out - ref| / max |ref|) over every output."""
    pairs = [(o.astype(np.float64).ravel(), r.astype(np.float64).ravel()) for o, r in zip(outputs, reference,
                                                                                         strict=True)]
    diff = np.concatenate([o - r for o, r in pairs])
    ref = np.concatenate([r for _, r in pairs])
    return (float(np.linalg.norm(diff) / (np.linalg.norm(ref) or 1.0)),
            float(np.abs(diff).max() / (np.abs(ref).max() or 1.0)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def check_cell(artifact: Any, runtime_id: str, options: dict[str, Any], variant: str,
               inputs: dict[str, np.ndarray], reference: list[np.ndarray], batch: int) -> dict[str, Any]:
    """Build the variant for the runtime, run every input through it, time it; one row, whatever happens."""
    from engine.errors import NotApplicable, Unavailable
    from engine.data import take_batch
    from engine.job import run_batches
    from engine.measure.latency import MeasureSettings, measure
    from engine.optimizations import parse_chain
    from engine.optimizations.build import build_variant, not_applicable_reason
    from engine.runtimes import get
    from engine.variants import BuildContext

    runtime_cls = get(runtime_id)
    row: dict[str, Any] = {"runtime": runtime_id, "options": options, "variant": variant, "limit": LIMITS[variant]}
    chain = parse_chain(variant)
    reason = not_applicable_reason(artifact.format, chain, runtime_cls.consumes, runtime_cls.device)
    if reason:
        return {**row, "status": "n/a", "reason": reason}
    try:
        built = build_variant(artifact, chain, runtime_cls.consumes,
                              BuildContext(artifact.spec, runtime_cls.device))
        runtime = runtime_cls.create(4, options, input_shapes=artifact.spec.shapes(batch))
        start = time.perf_counter()
        with runtime.load(built) as session:
            row["load_s"] = time.perf_counter() - start
            outputs = run_batches(session, inputs, batch)
            prepared = session.prepare(take_batch(inputs, 0, batch))
            samples = measure(session, prepared, MeasureSettings(warmup=10, iterations=50, min_seconds=0.5))
            row["timing"] = session.applied.get("timing", "perf_counter")
            row["applied"] = {k: v for k, v in session.applied.items() if isinstance(v, (str, int, float, bool))}
    except (NotApplicable, Unavailable) as exc:
        return {**row, "status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing path is a row of the report, the check goes on
        return {**row, "status": "failed", "reason": _first_line(exc)}
    error, max_error = _relative_error(outputs, reference)
    return {**row, "status": "ok" if error < LIMITS[variant] else "FAILED", "relative_error": error,
            "max_relative_error": max_error, "p50_ms": float(np.median(samples))}


def synchronization_check() -> dict[str, Any]:
    """A long GPU job: launching returns in microseconds, finishing takes milliseconds; the harness must see
    the milliseconds, with and without CUDA graphs."""
    import torch

    from engine.measure.latency import MeasureSettings, measure
    from engine.runtimes import get
    from engine.variants import Variant

    class Heavy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(20):
                x = torch.tanh(x @ x) * 0.01
            return x

    x = np.random.default_rng(0).standard_normal((1, 2048, 2048)).astype(np.float32)

    variant = Variant("heavy", "torch", None, 0, [], 0.0, False, module=Heavy(), input_names=["x"])

    checks: dict[str, Any] = {}
    for label, options in (("eager", {}), ("cuda_graph", {"cuda_graph": True})):
        with get("torch-cuda").create(1, options).load(variant) as session:
            prepared = session.prepare({"x": x})
            session.run(prepared)
            session.synchronize()
            start = time.perf_counter()
            session.run(prepared)  # launch only
            launch_ms = (time.perf_counter() - start) * 1000
            session.synchronize()
            start = time.perf_counter()
            session.run(prepared)
            session.synchronize()
            wall_ms = (time.perf_counter() - start) * 1000
            samples = measure(session, prepared, MeasureSettings(warmup=3, iterations=10, min_seconds=0.0))
        measured = float(np.median(samples))
        ok = measured > 5 * launch_ms and measured > 0.5 * wall_ms
        checks[label] = {"launch_ms": launch_ms, "wall_ms": wall_ms, "measured_ms": measured,
                         "status": "ok" if ok else "FAILED"}
    return {"status": "ok" if all(c["status"] == "ok" for c in checks.values()) else "FAILED", **checks}


def study_check(model: Path, runtimes: list[str], variants: str, gpu: bool, folder: Path,
                timeout_s: float = 600.0) -> dict[str, Any]:
    """One study through the CLI and the worker's child processes: GPU results must carry device metrics."""
    out = folder / "study.json"
    command = [sys.executable, "-m", "engine", "bench", str(model), "--runtimes", ",".join(runtimes),
               "--variants", variants, "--batch-sizes", "8", "--iterations", "20", "--min-seconds", "0.5",
               "--eval-samples", "32", "--json", str(out)]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "FAILED", "reason": f"the study did not finish in {timeout_s:.0f} s"}
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "FAILED", "reason": f"exit {proc.returncode}: {' | '.join(tail)}"}
    rows = []
    for result in json.loads(out.read_text())["results"]:
        metrics = result.get("device_metrics") or {}
        row = {"runtime": result["runtime"], "variant": result["variant"], "status": result["status"],
               "reason": result.get("error"), "p50_ms": (result.get("latency_ms") or {}).get("p50"),
               "peak_device_mb": result.get("peak_device_mb"), "power_w": metrics.get("power_w"),
               "energy_mj_per_inference": metrics.get("energy_mj_per_inference"),
               "device_memory": metrics.get("device_memory"),
               "training": [n for n in result.get("notes") or [] if n.startswith("distill")],
               # where the time goes, from the runtime's own profiler (TensorRT: IProfiler + engine inspector)
               "top_ops": [(op["op_type"], op["where"], round(op["share"], 3))
                           for op in ((result.get("diagnostics") or {}).get("top_ops") or [])[:3]],
               "profile_error": (result.get("diagnostics") or {}).get("profile_error")}
        if result["status"] == "ok" and gpu and row["peak_device_mb"] is None:
            row["status"], row["reason"] = "FAILED", "an ok GPU result without device memory"
        rows.append(row)
    failed = [r for r in rows if r["status"] in ("FAILED", "failed", "crashed", "timeout")]
    return {"status": "FAILED" if failed or not rows else "ok", "rows": rows}


HEADER = (f"{'model':<8} {'runtime':<21} {'options':<18} {'variant':<9} {'status':<11} {'rel err':>9} "
          f"{'max err':>9} {'limit':>6} {'p50 ms':>8}  note")


def _row_line(r: dict[str, Any]) -> str:
    err = f"{r['relative_error']:.2e}" if "relative_error" in r else "-"
    max_err = f"{r['max_relative_error']:.2e}" if "max_relative_error" in r else "-"
    p50 = f"{r['p50_ms']:.3f}" if "p50_ms" in r else "-"
    options = ",".join(f"{k}={v}" for k, v in r.get("options", {}).items()) or "-"
    return (f"{r['model']:<8} {r['runtime']:<21} {options:<18} {r['variant']:<9} {r['status']:<11} {err:>9} "
            f"{max_err:>9} {r['limit']:>6.0e} {p50:>8}  {r.get('reason') or r.get('timing', '')}")


class Report:
    """Rows printed as they come and the JSON rewritten each time: a run cut short keeps what it measured."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        out.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(_row_line(row), flush=True)
        self.save()

    def save(self) -> None:
        self.out.write_text(json.dumps({"rows": self.rows, **self.extra}, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--self-test", action="store_true",
                        help="run the same checks on the CPU runtimes with tiny models (no GPU needed)")
    parser.add_argument("--no-study", action="store_true", help="skip the end-to-end study through the CLI")
    args = parser.parse_args(argv)
    from engine.measure.devices import cuda_devices

    gpus, reason = cuda_devices()
    if not gpus and not args.self_test:
        print(f"gpu_check: no NVIDIA GPU on this machine ({reason}); nothing to check")
        return 0
    from engine.artifacts import intake
    from engine.data import eval_set
    from engine.modules import load_module
    from engine.runtimes import REGISTRY

    cases = CPU_CASES if args.self_test else GPU_CASES
    availability = {rid: REGISTRY[rid].available() for rid, _ in cases}
    report = Report(Path(args.out))
    if gpus:
        print(f"GPU: {gpus[0]['name']} ({gpus[0]['memory_mb']} MB, driver {gpus[0]['driver']}, "
              f"CUDA {gpus[0]['cuda_driver']}, compute {gpus[0]['compute_capability']})", flush=True)
    from engine.measure.environment import collect

    report.extra["environment"] = collect(4)
    print(HEADER, flush=True)
    study: dict[str, Any] = {"status": "skipped", "reason": "--no-study"}
    with tempfile.TemporaryDirectory(prefix="paretoscope-gpu-") as tmp:
        os.environ["PARETOSCOPE_DATA_DIR"] = str(Path(tmp) / "data")
        import torch

        try:
            models = _models(Path(tmp), small=args.self_test)
        except Exception as exc:  # noqa: BLE001 - reported, then the script ends with a failure
            print(f"gpu_check: could not build the test models: {_first_line(exc)}")
            return 1
        prepared: dict[str, tuple[Any, dict[str, np.ndarray], list[np.ndarray]]] = {}
        for model_name, path in models.items():
            try:
                artifact = intake(path, seq_len=32 if args.self_test else 128)
                inputs, _ = eval_set(None, artifact.spec, 16)
                module = load_module(artifact.path, artifact.format, artifact.spec)
                with torch.inference_mode():
                    out = module(*(torch.from_numpy(inputs[n]) for n in artifact.spec.names))
            except Exception as exc:  # noqa: BLE001 - one model failing to load is a row, the other still runs
                report.add({"model": model_name, "runtime": "-", "variant": "-", "status": "failed", "limit": 0.0,
                            "reason": f"intake or CPU reference: {_first_line(exc)}"})
                continue
            reference = [o.float().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
            prepared[model_name] = (artifact, inputs, reference)
        # cheapest and most telling first, so a run cut short by its time limit still answers the most:
        # synchronization, the runtimes that compile nothing, the study, then torch.compile (minutes of inductor)
        if args.self_test:
            sync: dict[str, Any] = {"status": "skipped", "reason": "--self-test runs on the CPU"}
        elif availability.get("torch-cuda", (False, None))[0]:
            try:
                sync = synchronization_check()
            except Exception as exc:  # noqa: BLE001 - a broken check is a failure on the report, not a traceback
                sync = {"status": "FAILED", "reason": _first_line(exc)}
        else:
            sync = {"status": "skipped", "reason": "torch-cuda is unavailable"}
        print(f"synchronization: {json.dumps(sync)}", flush=True)
        report.extra["synchronization"] = sync
        report.save()

        def run_cases(selected: list[tuple[str, dict[str, Any]]]) -> None:
            for rid, options in selected:
                ok, why = availability[rid]
                for model_name, (artifact, inputs, reference) in prepared.items():
                    for variant in VARIANTS:
                        if not ok:
                            report.add({"model": model_name, "runtime": rid, "options": options, "variant": variant,
                                        "status": "unavailable", "reason": why, "limit": LIMITS[variant]})
                            continue
                        report.add({"model": model_name, **check_cell(artifact, rid, options, variant, inputs,
                                                                      reference, args.batch)})

        run_cases([c for c in cases if c[0] not in COMPILING])
        if not args.no_study:
            study_runtimes = [rid for rid, (ok, _) in availability.items() if ok and rid not in COMPILING][:2]
            variants = ("baseline" if args.self_test else "baseline,fp16") + ",prune-structured:0.5+distill:epochs=2"
            study = study_check(models["cnn"], study_runtimes, variants, not args.self_test, Path(tmp)) \
                if study_runtimes else {"status": "skipped", "reason": "no runtime of the check is available"}
            report.extra["study"] = study
            report.save()
        run_cases([c for c in cases if c[0] in COMPILING])
    print(f"study: {study['status']} {study.get('reason') or ''}")
    for r in study.get("rows", []):
        print(f"  {r['runtime']:<21} {r['variant']:<9} {r['status']:<8} p50 {r['p50_ms']} ms, device "
              f"{r['peak_device_mb']} MB, {r['power_w']} W, {r['energy_mj_per_inference']} mJ/inference "
              f"{r['reason'] or ''}")
        for note in r["training"]:
            print(f"    {note}")
        if r.get("top_ops") or r.get("profile_error"):
            print(f"    top ops: {r['top_ops'] or r['profile_error']}")
    report.extra["study"] = study
    report.save()
    print(f"written {args.out}")
    failed = any(r["status"] in ("FAILED", "failed") for r in report.rows) or "FAILED" in (sync["status"],
                                                                                           study["status"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
