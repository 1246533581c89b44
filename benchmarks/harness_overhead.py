"""Harness overhead: the engine's p50 against a bare perf_counter_ns loop over the same ONNX Runtime session.

Three sizes — a small MLP (~0.1 ms a call), a small CNN (~2 ms) and a BERT-class encoder (MiniLM-L6 shape,
random weights, seq 128) — go through the project's path: intake, build (ONNX), load on `onnxruntime`
through engine.runtimes. Then, in one process, harness rounds (engine.measure.latency.measure + summarize)
alternate with bare rounds timing the same InferenceSession.run call on the same inputs.

Two more cases measure the inputs rather than the loop, on the pretrained all-MiniLM-L6-v2 (its ONNX variant
built the same way): the harness fed what a cell of a study without data and with default settings times (the
first batch of eval_set's synthesized inputs, from the model's InputSpec) against a bare loop fed English text
tokenized by the model's own tokenizer, every sequence filling all 128 positions (`minilm`); and, for
comparison, the harness fed a random 0/1 attention mask and random token types, what the tool synthesized
before (`minilm-random-mask`). Target: harness p50 / bare p50 within 3% for every case but the last.

    .venv/bin/python -m benchmarks.harness_overhead [--rounds 10] [--seconds 0.5] [--threads 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    ENCODER,
    SEQ_LEN,
    command_line,
    data_folder,
    encoder_zip,
    load_state,
    pretrained_encoder_zip,
    table,
    text_inputs,
    write_json,
)

TARGET = 0.03
WARMUP = 10
# Many short rounds rather than a few long ones: load from other processes then lands on both
# kinds of round alike. The overhead per call does not depend on how many calls a round makes.
MIN_ITERATIONS = 20


# What each loop is fed: "same" (both the engine's synthesized inputs), "synthesized-vs-text" (the harness the
# engine's synthesized evaluation inputs, the bare loop tokenized English), "random-mask-vs-text" (the harness a
# random 0/1 mask and token types, as before roles were recognised; the bare loop tokenized English).
SAME, SYNTHESIZED_VS_TEXT, RANDOM_MASK_VS_TEXT = "same", "synthesized-vs-text", "random-mask-vs-text"


@dataclass
class Size:
    name: str
    description: str
    batch: int
    make: Callable[[Path], Path]  # writes the model file into a folder, returns its path
    seq_len: int | None = None
    inputs: str = SAME
    target: bool = True  # whether the ratio is held to TARGET (the before-#13 case shows what it fixed)


def _export(module: Any, example: Any, path: Path) -> Path:
    import torch

    torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def make_mlp(folder: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return _export(mlp.eval(), torch.randn(2, 256), folder / "mlp.onnx")


def make_cnn(folder: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )
    return _export(cnn.eval(), torch.randn(2, 3, 128, 128), folder / "cnn.onnx")


SIZES = {
    "mlp": Size("mlp", "MLP 256-1024-1024-10", 8, make_mlp),
    "cnn": Size("cnn", "CNN 3 convs 32/64/128, 3x128x128", 1, make_cnn),
    "encoder": Size("encoder", "BERT {num_hidden_layers}x{hidden_size}, {num_attention_heads} heads, "
                    "ffn {intermediate_size}".format(**ENCODER) + f", seq {SEQ_LEN}", 1, encoder_zip, SEQ_LEN),
    "minilm": Size("minilm", f"all-MiniLM-L6-v2, seq {SEQ_LEN}: synthesized inputs vs tokenized text", 1,
                   pretrained_encoder_zip, SEQ_LEN, SYNTHESIZED_VS_TEXT),
    "minilm-random-mask": Size("minilm-random-mask", f"all-MiniLM-L6-v2, seq {SEQ_LEN}: random 0/1 mask (before "
                               "#13) vs tokenized text", 1, pretrained_encoder_zip, SEQ_LEN, RANDOM_MASK_VS_TEXT,
                               target=False),
}


def load(size: Size, folder: Path, threads: int) -> tuple[Any, Any, Any, dict[str, str]]:
    """The model through intake and build, loaded on ONNX Runtime; returns (session, the harness's prepared
    inputs, the bare loop's inputs, what each was fed)."""
    from engine.artifacts import intake
    from engine.data import eval_set, synthesis_summary, synthesize, take_batch
    from engine.optimizations import Chain
    from engine.optimizations.build import build_variant
    from engine.plan import StudySettings
    from engine.runtimes import get
    from engine.variants import BuildContext

    model = intake(size.make(folder), seq_len=size.seq_len)
    variant = build_variant(model, Chain(()), "onnx", BuildContext(model.spec))
    session = get("onnxruntime").create(threads).load(variant)
    if size.inputs == SAME:
        prepared = session.prepare(synthesize(model.spec, size.batch))
        same = synthesis_summary(model.spec)
        return session, prepared, prepared, {"harness": same, "bare": same}
    # what a cell of a study without data times, with a study's default settings: compute_reference's
    # evaluation inputs (eval_set without a data file: synthesized), of which run_cell takes the first batch
    settings = StudySettings(threads=threads)
    feeds = take_batch(eval_set(None, model.spec, settings.eval_samples, settings.padding)[0], 0, size.batch)
    harness = synthesis_summary(model.spec, settings.padding)
    if size.inputs == RANDOM_MASK_VS_TEXT:
        rng = np.random.default_rng(0)
        for name in ("attention_mask", "token_type_ids"):
            feeds[name] = rng.integers(0, 2, size=feeds[name].shape).astype(feeds[name].dtype)
        harness += "; then attention_mask and token_type_ids replaced by random 0/1 (as before #13)"
    text = text_inputs(size.batch, SEQ_LEN)
    # realistic means every position a real token: a padded sequence would time a different workload
    if not (text["attention_mask"] == 1).all() or (text["token_type_ids"] != 0).any():
        raise RuntimeError("the tokenized text does not fill every sequence: text_inputs changed?")
    bare = {name: np.ascontiguousarray(text[name], dtype=feeds[name].dtype) for name in session.input_names}
    return session, session.prepare(feeds), bare, {
        "harness": harness,
        "bare": f"English text tokenized by the model's tokenizer: input_ids real tokens filling all {SEQ_LEN} "
                "positions ([CLS] ... [SEP]), attention_mask all ones, token_type_ids zeros"}


def harness_round(session: Any, prepared: Any, seconds: float) -> np.ndarray:
    from engine.measure.latency import MeasureSettings, measure

    return measure(session, prepared, MeasureSettings(WARMUP, MIN_ITERATIONS, seconds))


def bare_round(session: Any, prepared: Any, seconds: float) -> np.ndarray:
    """What someone would write by hand: the runtime's own run() between two perf_counter_ns() calls."""
    # The engine's OrtSession wraps exactly this InferenceSession and output list; time them directly.
    ort_session, outputs = session._session, session._outputs
    for _ in range(WARMUP):
        ort_session.run(outputs, prepared)
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()  # as the harness does: a collection of unrelated objects lands in neither loop's samples
    try:
        deadline = clock() + int(seconds * 1e9)
        while len(samples) < MIN_ITERATIONS or clock() < deadline:
            t0 = clock()
            ort_session.run(outputs, prepared)
            samples.append(clock() - t0)
    finally:
        gc.enable()
    return np.asarray(samples, dtype=np.float64) / 1e6


def compare(size: Size, session: Any, prepared: Any, bare_feeds: Any, fed: dict[str, str], rounds: int,
            seconds: float) -> dict[str, Any]:
    """Alternate harness and bare rounds (order flipped every round, so drift hits both alike)."""
    from engine.measure.latency import summarize

    harness: list[np.ndarray] = []
    bare: list[np.ndarray] = []
    for r in range(rounds):
        order = ("harness", "bare") if r % 2 == 0 else ("bare", "harness")
        for kind in order:
            gc.collect()
            if kind == "harness":
                harness.append(harness_round(session, prepared, seconds))
            else:
                bare.append(bare_round(session, bare_feeds, seconds))
    # the harness's own summary over its pooled samples; the bare loop's median over its own
    harness_p50 = summarize(np.concatenate(harness), size.batch)["latency_ms"]["p50"]
    bare_p50 = float(np.median(np.concatenate(bare)))
    per_round = [float(np.median(h) / np.median(b)) for h, b in zip(harness, bare, strict=True)]
    ratio = harness_p50 / bare_p50
    return {
        "size": size.name, "model": size.description, "batch_size": size.batch, "inputs": size.inputs,
        "harness_inputs": fed["harness"], "bare_inputs": fed["bare"],
        "harness_p50_ms": harness_p50, "bare_p50_ms": bare_p50, "ratio": ratio,
        "within_target": abs(ratio - 1.0) <= TARGET, "held_to_target": size.target,
        "round_ratios": per_round,
        "harness_round_p50_ms": [float(np.median(h)) for h in harness],
        "bare_round_p50_ms": [float(np.median(b)) for b in bare],
        "harness_iterations": int(sum(h.size for h in harness)), "bare_iterations": int(sum(b.size for b in bare)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--rounds", type=int, default=10, help="harness/bare round pairs per size (default 10)")
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum seconds per round (default 0.5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--data-dir", help="keep the engine's data folder here (default: a scratch folder)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/harness_overhead.json)")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown or args.rounds < 1 or args.seconds <= 0 or args.threads < 1:
        parser.error(f"unknown sizes {unknown}" if unknown else "--rounds, --seconds and --threads must be positive")

    from engine.measure.environment import collect

    started = time.monotonic()
    load_before = load_state()
    results = []
    with data_folder(args.data_dir) as folder:
        sources = folder / "benchmark-models"
        sources.mkdir(exist_ok=True)
        for name in names:
            size = SIZES[name]
            print(f"{name}: building and loading {size.description} ...", flush=True)
            try:
                session, prepared, bare_feeds, fed = load(size, sources, args.threads)
            except ImportError as exc:  # the pretrained model's package (requirements-dev.txt) is not installed
                print(f"{name}: skipped ({exc})", flush=True)
                continue
            with session:
                results.append(compare(size, session, prepared, bare_feeds, fed, args.rounds, args.seconds))
            row = results[-1]
            print(f"{name}: harness p50 {row['harness_p50_ms']:.4f} ms, bare p50 {row['bare_p50_ms']:.4f} ms, "
                  f"ratio {row['ratio']:.4f}", flush=True)
    load_after = load_state()

    print()
    print(table(
        ["size", "model", "batch", "harness p50 ms", "bare p50 ms", "ratio", "round ratios median [min..max]",
         "within 3%"],
        [[r["size"], r["model"], r["batch_size"], f"{r['harness_p50_ms']:.4f}", f"{r['bare_p50_ms']:.4f}",
          f"{r['ratio']:.4f}",
          f"{np.median(r['round_ratios']):.3f} [{min(r['round_ratios']):.3f}..{max(r['round_ratios']):.3f}]",
          ("yes" if r["within_target"] else "NO") + ("" if r["held_to_target"] else " (not held: before #13)")]
         for r in results],
    ))
    print(f"\nonnxruntime, {args.threads} threads, {args.rounds} alternating round pairs of >= {args.seconds:g} s; "
          f"{load_before} before, {load_after} after")
    payload = {
        "benchmark": "harness_overhead",
        "target": {"max_abs_ratio_minus_1": TARGET},
        "all_within_target": all(r["within_target"] for r in results if r["held_to_target"]),
        "settings": {"runtime": "onnxruntime", "threads": args.threads, "rounds": args.rounds,
                     "min_seconds_per_round": args.seconds, "warmup": WARMUP, "min_iterations": MIN_ITERATIONS},
        "results": results,
        "machine_load": {"before": load_before, "after": load_after},
        "environment": collect(args.threads),
        "command": command_line(),
        "wall_s": time.monotonic() - started,
    }
    path = write_json(payload, args.out, "harness_overhead")
    print(f"results JSON written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
