"""GPU check: every available GPU runtime × variant on a small CNN and a BERT-class encoder, against the CPU fp32
reference, plus a proof that timings include device synchronization.

On a machine without an NVIDIA GPU it prints one line saying so and exits 0. Elsewhere it prints a table
(runtime, variant, model, relative error, limit, verdict, p50) and writes JSON (default
benchmarks/results/gpu_check.json). Relative error = max |out - ref| / max |ref|; limits: fp32 < 1e-3,
fp16/bf16 < 1e-2. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMITS = {"baseline": 1e-3, "fp16": 1e-2, "bf16": 1e-2}
VARIANTS = ("baseline", "fp16", "bf16")


def _models(folder: Path) -> dict[str, Path]:
    import torch
    import transformers

    from tests.conftest import zip_folder

    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    ).eval()
    program = torch.export.export(cnn, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    cnn_path = folder / "cnn.pt2"
    torch.export.save(program, str(cnn_path))
    config = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, max_position_embeddings=512)
    encoder = transformers.BertModel(config).eval()
    encoder.save_pretrained(str(folder / "encoder"), safe_serialization=True)
    return {"cnn": cnn_path, "encoder": zip_folder(folder / "encoder", folder / "encoder.zip")}


def _relative_error(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    scale = max(float(np.abs(r).max()) for r in reference) or 1.0
    return max(float(np.abs(o.astype(np.float64) - r).max()) for o, r in zip(outputs, reference, strict=True)) / scale


def check_cell(artifact: Any, runtime_id: str, variant: str, inputs: dict[str, np.ndarray],
               reference: list[np.ndarray], batch: int) -> dict[str, Any]:
    from engine.errors import NotApplicable, Unavailable
    from engine.job import run_batches
    from engine.measure.latency import MeasureSettings, measure
    from engine.optimizations import parse_chain
    from engine.optimizations.build import BuildContext, build_variant
    from engine.runtimes import RuntimeSettings, get

    runtime_cls = get(runtime_id)
    row: dict[str, Any] = {"runtime": runtime_id, "variant": variant, "limit": LIMITS[variant]}
    try:
        built = build_variant(artifact, parse_chain(variant), runtime_cls.consumes,
                              BuildContext(artifact.spec, runtime_cls.device))
        options = {"input_shapes": artifact.spec.shapes(batch)}
        with runtime_cls(RuntimeSettings(threads=4, options=options)).load(built) as session:
            outputs = run_batches(session, inputs, batch)
            prepared = session.prepare({k: v[:batch] for k, v in inputs.items()})
            samples = measure(session, prepared, MeasureSettings(warmup=10, iterations=50, min_seconds=0.5))
            row["timing"] = session.applied.get("timing", "perf_counter")
    except (NotApplicable, Unavailable) as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing path is a row of the report, the check goes on
        return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    error = _relative_error(outputs, reference)
    return {**row, "status": "ok" if error < LIMITS[variant] else "FAILED", "relative_error": error,
            "p50_ms": float(np.median(samples))}


def synchronization_check() -> dict[str, Any]:
    """A long GPU job: launching returns in microseconds, finishing takes milliseconds; the harness must see
    the milliseconds."""
    import torch

    from engine.measure.latency import MeasureSettings, measure
    from engine.runtimes import RuntimeSettings, get

    class Heavy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(20):
                x = torch.tanh(x @ x) * 0.01
            return x

    x = np.random.default_rng(0).standard_normal((1, 2048, 2048)).astype(np.float32)

    class V:
        module = Heavy()
        input_names = ["x"]

    with get("torch-cuda")(RuntimeSettings(threads=1)).load(V()) as session:
        prepared = session.prepare({"x": x})
        session.run(prepared)
        session.synchronize()
        start = time.perf_counter()
        session.run(prepared)  # launch only
        launch_ms = (time.perf_counter() - start) * 1000
        session.synchronize()
        samples = measure(session, prepared, MeasureSettings(warmup=3, iterations=10, min_seconds=0.0))
    measured = float(np.median(samples))
    return {"launch_ms": launch_ms, "measured_ms": measured,
            "status": "ok" if measured > 5 * launch_ms else "FAILED"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from engine.measure.devices import cuda_devices

    gpus, reason = cuda_devices()
    if not gpus:
        print(f"gpu_check: no NVIDIA GPU on this machine ({reason}); nothing to check")
        return 0
    from engine.artifacts import intake
    from engine.data import eval_set
    from engine.modules import load_module
    from engine.runtimes import REGISTRY

    runtimes = [rid for rid, cls in REGISTRY.items() if cls.device == "cuda"]
    availability = {rid: REGISTRY[rid].available() for rid in runtimes}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="paretoscope-gpu-") as tmp:
        os.environ["PARETOSCOPE_DATA_DIR"] = str(Path(tmp) / "data")
        import torch

        for model_name, path in _models(Path(tmp)).items():
            artifact = intake(path, seq_len=128 if model_name == "encoder" else None)
            inputs, _ = eval_set(None, artifact.spec, 16)
            module = load_module(artifact.path, artifact.format, artifact.spec)
            with torch.inference_mode():
                out = module(*(torch.from_numpy(inputs[n]) for n in artifact.spec.names))
            reference = [o.float().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
            for rid in runtimes:
                ok, why = availability[rid]
                for variant in VARIANTS:
                    if not ok:
                        rows.append({"model": model_name, "runtime": rid, "variant": variant, "status": "unavailable",
                                     "reason": why, "limit": LIMITS[variant]})
                        continue
                    rows.append({"model": model_name, **check_cell(artifact, rid, variant, inputs, reference,
                                                                   args.batch)})
        sync = synchronization_check() if availability.get("torch-cuda", (False, None))[0] else {
            "status": "skipped", "reason": "torch-cuda is unavailable"}
    print(f"GPU: {gpus[0]['name']} ({gpus[0]['memory_mb']} MB, driver {gpus[0]['driver']}, "
          f"compute {gpus[0]['compute_capability']})")
    print(f"{'model':<8} {'runtime':<21} {'variant':<9} {'status':<11} {'rel err':>9} {'limit':>7} {'p50 ms':>8}  note")
    for r in rows:
        err = f"{r['relative_error']:.2e}" if "relative_error" in r else "-"
        p50 = f"{r['p50_ms']:.3f}" if "p50_ms" in r else "-"
        print(f"{r['model']:<8} {r['runtime']:<21} {r['variant']:<9} {r['status']:<11} {err:>9} {r['limit']:>7.0e} "
              f"{p50:>8}  {r.get('reason', r.get('timing', ''))}")
    print(f"synchronization: {sync}")
    from engine.measure.environment import collect

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "synchronization": sync, "environment": collect(4)},
                                         indent=1, default=str))
    print(f"written {args.out}")
    failed = any(r["status"] in ("FAILED", "failed") for r in rows) or sync.get("status") == "FAILED"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
