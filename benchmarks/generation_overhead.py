"""Generation harness overhead: the token clock's decode tokens/s against a bare generate() loop timed by hand.

On the demo decoder (engine/generation/demo.py: a 0.66M-parameter Llama-style model trained offline, its zip in
the data folder), in one process, harness rounds (engine.measure.generation.timed_generation: a LogitsProcessor
stamping every token, decode tokens/s = batch × 1000 / TPOT p50) alternate with bare rounds that time, with
perf_counter around the call and nothing inside it, generate() of the same prompts with max_new_tokens=N and with
max_new_tokens=1: the bare TPOT is (median e2e(N) - median e2e(1)) / (N - 1). Target: within 3%.

    .venv/bin/python -m benchmarks.generation_overhead [--rounds 5] [--generations 5] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

from benchmarks.common import command_line, data_folder, load_state, table, write_json

TARGET = 0.03
PROMPT_LEN = 32
NEW_TOKENS = 64
BATCHES = (1, 4)


def _bare_e2e_ms(lm: Any, ids: Any, mask: Any, new_tokens: int, pad: int) -> float:
    import torch

    from engine.measure.generation import generate_kwargs

    with torch.inference_mode():
        start = time.perf_counter()
        lm.generate(input_ids=ids, attention_mask=mask, **generate_kwargs(new_tokens, pad))
        return (time.perf_counter() - start) * 1e3


def measure(lm: Any, ids: Any, rounds: int, generations: int, pad: int) -> dict[str, Any]:
    import torch

    from engine.measure.generation import summarize, timed_generation

    mask = torch.ones_like(ids)
    batch = int(ids.shape[0])
    for _ in range(2):  # warm-up of both paths
        timed_generation(lm, ids, mask, NEW_TOKENS, pad, "cpu")
        _bare_e2e_ms(lm, ids, mask, 1, pad)
    harness, bare = [], []
    for _ in range(rounds):
        # one generation of each kind in turn: load from other processes lands on all three alike
        timings, full, first = [], [], []
        for _ in range(generations):
            timings.append(timed_generation(lm, ids, mask, NEW_TOKENS, pad, "cpu"))
            full.append(_bare_e2e_ms(lm, ids, mask, NEW_TOKENS, pad))
            first.append(_bare_e2e_ms(lm, ids, mask, 1, pad))
        harness.append(summarize(timings, batch, PROMPT_LEN)["decode_tokens_per_s"])
        bare.append(batch * 1e3 / ((statistics.median(full) - statistics.median(first)) / (NEW_TOKENS - 1)))
    h, b = statistics.median(harness), statistics.median(bare)
    return {"batch": batch, "harness_decode_tokens_per_s": h, "bare_decode_tokens_per_s": b, "ratio": h / b,
            "within_target": abs(h / b - 1) <= TARGET, "harness_rounds": harness, "bare_rounds": bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="data folder to reuse (the demo decoder is trained once there)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/generation_overhead.json)")
    args = parser.parse_args()
    with data_folder(args.keep):
        import torch

        from engine.artifacts import intake
        from engine.generation.cell import causal_lm
        from engine.generation.demo import build_generation_demo
        from engine.generation.prompts import PROMPT_TEXT, TokenSource, bundled_text, load_tokenizer
        from engine.modules import load_module

        torch.set_num_threads(args.threads)
        archive, report = build_generation_demo()
        model = intake(archive)
        lm = causal_lm(load_module(model.path, model.format, model.spec))
        vocab = int(lm.config.vocab_size)
        source = TokenSource(load_tokenizer(model.path), vocab, (1, vocab), bundled_text(PROMPT_TEXT))
        load_before = load_state()
        cases = [measure(lm, torch.from_numpy(source.batch(b, PROMPT_LEN)), args.rounds, args.generations, 0)
                 for b in BATCHES]
    rows = [(c["batch"], f"{c['harness_decode_tokens_per_s']:.1f}", f"{c['bare_decode_tokens_per_s']:.1f}",
             f"{c['ratio']:.3f}", "yes" if c["within_target"] else "NO") for c in cases]
    print(f"demo decoder ({report['parameters']:,} parameters), prompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, "
          f"greedy; {args.threads} threads; {platform.processor() or platform.machine()}")
    print(table(("batch", "harness tok/s", "bare tok/s", "ratio", f"within {TARGET:.0%}"), rows))
    print(f"before: {load_before}; after: {load_state()}")
    path = write_json({"command": command_line(), "load_before": load_before, "load_after": load_state(),
                       "threads": args.threads, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS,
                       "target": TARGET, "model": report, "cases": cases}, args.out, "generation_overhead")
    print(f"JSON written to {path}")


if __name__ == "__main__":
    main()
