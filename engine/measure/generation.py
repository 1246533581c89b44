"""Timing of text generation: a clock inside generate() that stamps every new token, and its summary.

The clock is a LogitsProcessor: generate() calls it once per new token, right after the forward pass that made
that token's logits. Its first call comes after the prefill (the prompt's forward), so the first stamp is the time
to first token; a streamer would not do, its first call carries the prompt. On a GPU each stamp is a CUDA event
recorded on the stream (the forward has finished on the device when it fires), read after the generation ends; on
a CPU it is perf_counter. Greedy decoding with min_new_tokens = max_new_tokens ignores EOS, so every generation
makes exactly the tokens asked for and cells compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Timed:
    """One generation: the time of each new token since generate() was called, and its end-to-end time (ms)."""

    token_ms: tuple[float, ...]
    e2e_ms: float

    @property
    def ttft_ms(self) -> float:
        return self.token_ms[0]

    @property
    def tpot_ms(self) -> float:
        """Time per output token after the first: (e2e - ttft) / (new tokens - 1)."""
        return (self.e2e_ms - self.ttft_ms) / (len(self.token_ms) - 1)

    @property
    def gaps_ms(self) -> list[float]:
        return [b - a for a, b in zip(self.token_ms, self.token_ms[1:], strict=False)]


def make_clock(device: str) -> Any:
    """A token clock for generate(): CUDA events on a CUDA device, perf_counter elsewhere."""
    from transformers import LogitsProcessor

    class TokenClock(LogitsProcessor):  # type: ignore[misc]  # transformers is untyped here
        def __init__(self) -> None:
            self.cuda = device.startswith("cuda")
            self.marks: list[Any] = []
            self.start_mark: Any = None
            self.end_mark: Any = None

        def _mark(self) -> Any:
            if not self.cuda:
                return time.perf_counter()
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def start(self) -> None:
            self.marks = []
            self.start_mark = self._mark()

        def stop(self) -> Timed:
            self.end_mark = self._mark()
            if self.cuda:
                self.end_mark.synchronize()
                since = [self.start_mark.elapsed_time(m) for m in self.marks]
                e2e = self.start_mark.elapsed_time(self.end_mark)
            else:
                since = [(m - self.start_mark) * 1e3 for m in self.marks]
                e2e = (self.end_mark - self.start_mark) * 1e3
            return Timed(tuple(float(v) for v in since), float(e2e))

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.marks.append(self._mark())
            return scores

    return TokenClock()


def generate_kwargs(new_tokens: int, pad_token_id: int) -> dict[str, Any]:
    """generate()'s arguments for a comparable cell: greedy, exactly `new_tokens` new tokens, EOS ignored."""
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "num_beams": 1,
            "use_cache": True, "pad_token_id": pad_token_id, "temperature": None, "top_p": None, "top_k": None}


def timed_generation(model: Any, input_ids: Any, attention_mask: Any, new_tokens: int, pad_token_id: int,
                     device: str) -> Timed:
    """One greedy generation of `new_tokens` tokens, stamped token by token."""
    import torch
    from transformers import LogitsProcessorList

    clock = make_clock(device)
    with torch.inference_mode():
        clock.start()
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                             logits_processor=LogitsProcessorList([clock]),
                             **generate_kwargs(new_tokens, pad_token_id))
        timed: Timed = clock.stop()
    made = int(out.shape[1]) - int(input_ids.shape[1])
    if made != new_tokens or len(timed.token_ms) != new_tokens:
        raise RuntimeError(f"generate() made {made} tokens with {len(timed.token_ms)} stamps; {new_tokens} were asked")
    return timed


def timed_genai_generation(model: Any, input_ids: np.ndarray, new_tokens: int) -> tuple[Timed, np.ndarray]:
    """One greedy generation of `new_tokens` tokens by onnxruntime-genai's Generator, stamped token by token, and
    the sequences it made ([batch, prompt + new_tokens]).

    The clock starts before the Generator is made (it allocates the KV cache, as generate() does inside).
    append_tokens() runs the prefill; each generate_next_token() picks a token from the latest logits, running the
    model on the previous token first from the second call on, so the first stamp is the time to first token and
    each later one a decode step, as in the LogitsProcessor clock. min_length = max_length ignores EOS.
    """
    import onnxruntime_genai as og

    batch, prompt = input_ids.shape
    params = og.GeneratorParams(model)
    # random_seed: greedy decoding draws nothing, and without a seed each Generator seeds itself from
    # std::random_device, which costs 14 ms of CPU per generation on a virtual machine whose RDSEED is slow
    params.set_search_options(max_length=prompt + new_tokens, min_length=prompt + new_tokens, do_sample=False,
                              num_beams=1, batch_size=batch, random_seed=0)
    tokens = np.ascontiguousarray(input_ids, dtype=np.int32)
    marks: list[float] = []
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)
    for _ in range(new_tokens):
        generator.generate_next_token()
        marks.append(time.perf_counter())
    end = time.perf_counter()
    sequences = np.stack([np.asarray(generator.get_sequence(i)) for i in range(batch)])
    if sequences.shape != (batch, prompt + new_tokens):
        raise RuntimeError(f"onnxruntime-genai made sequences of shape {sequences.shape}; "
                           f"{(batch, prompt + new_tokens)} were asked")
    return Timed(tuple((m - start) * 1e3 for m in marks), (end - start) * 1e3), sequences


def percentiles(values: list[float]) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(array, p)) if values else None
    out["mean"] = float(array.mean()) if values else None
    return out


def summarize(timings: list[Timed], batch_size: int, prompt_len: int) -> dict[str, Any]:
    """The result's `generation` timing keys from the timed generations: percentiles of TTFT, TPOT, inter-token
    latency (every gap of every generation) and end-to-end time; prefill and decode tokens per second from the
    medians (batch × prompt / TTFT, batch × 1000 / TPOT)."""
    ttft = percentiles([t.ttft_ms for t in timings])
    tpot = percentiles([t.tpot_ms for t in timings])
    itl = percentiles([gap for t in timings for gap in t.gaps_ms])
    e2e = percentiles([t.e2e_ms for t in timings])
    ttft_p50, tpot_p50 = ttft["p50"], tpot["p50"]
    return {
        "ttft_ms": ttft, "tpot_ms": tpot, "itl_ms": itl, "e2e_ms": e2e,
        "prefill_tokens_per_s": batch_size * prompt_len / (ttft_p50 / 1e3) if ttft_p50 else None,
        "decode_tokens_per_s": batch_size * 1e3 / tpot_p50 if tpot_p50 else None,
        "generations": len(timings),
        "tokens_stamped": [len(t.token_ms) for t in timings],
    }
