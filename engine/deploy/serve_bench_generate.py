"""`serve-bench` of a generation cell: its streaming OpenAI-compatible server measured as vLLM's benchmark_serving
measures one.

Each request is a streamed `/v1/completions` of the cell's prompt length (the bundled prompt text through the model's
tokenizer, decoded to text) asking for exactly the cell's new tokens (greedy, `ignore_eos`, usage in the stream).
Per request: TTFT (send to the first token's chunk), ITL (gaps between token chunks), TPOT ((e2e - TTFT) /
(output tokens - 1), the tokens the server counted in its usage: this server sends a chunk per token, other
servers may merge tokens into a chunk) and e2e. Per level: their percentiles, output tokens/s, and goodput against
`--ttft-ms` and `--tpot-ms`. TTFT and e2e count from the request's send, as vLLM's do; the level's `latency_ms`
(loadgen's) counts an open loop's requests from their intended start. serve_bench.py starts the server (or checks
`--url`) and stores the run this module measures.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from engine.deploy.loadgen import (
    MonotonicClock,
    Record,
    closed_loop,
    level_span,
    open_loop,
    percentiles_ms,
    poisson_arrivals,
    summarize,
    warm_up,
)
from engine.errors import UserError
from engine.report.serving import level_label

ENDPOINT = "/v1/completions"
# a level stores each request's numbers, up to this many (the percentiles are over every request)
PER_REQUEST_KEPT = 5_000


# --- per request and per level: pure functions --------------------------------------------------------------


@dataclass(frozen=True)
class StreamTiming:
    """One streamed request: when it was sent, when each token's chunk arrived, when the stream ended (all on
    one monotonic clock, seconds), and the tokens the server counted in its usage."""

    sent: float
    chunks: tuple[float, ...]
    end: float
    output_tokens: int
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class RequestMetrics:
    ttft_s: float
    tpot_s: float | None  # None: a single output token has no time per output token
    itl_s: tuple[float, ...]
    e2e_s: float
    output_tokens: int


def request_metrics(timing: StreamTiming) -> RequestMetrics:
    """TTFT, TPOT, ITL and e2e of one streamed request; ValueError when no chunk carried a token."""
    if not timing.chunks:
        raise ValueError("a stream without a token has no time to first token")
    ttft = timing.chunks[0] - timing.sent
    e2e = timing.end - timing.sent
    itl = tuple(b - a for a, b in zip(timing.chunks, timing.chunks[1:], strict=False))
    tpot = (e2e - ttft) / (timing.output_tokens - 1) if timing.output_tokens > 1 else None
    return RequestMetrics(ttft, tpot, itl, e2e, timing.output_tokens)


def meets(metrics: RequestMetrics, ttft_ms: float | None, tpot_ms: float | None) -> bool:
    """Whether a request met every target given (None: that target does not apply; a single-token request has no
    TPOT to miss, as vLLM counts it)."""
    return ((ttft_ms is None or metrics.ttft_s * 1000.0 <= ttft_ms)
            and (tpot_ms is None or metrics.tpot_s is None or metrics.tpot_s * 1000.0 <= tpot_ms))


def goodput(metrics: Sequence[RequestMetrics], ttft_ms: float | None, tpot_ms: float | None,
            span_s: float, attempted: int | None = None) -> tuple[float | None, float | None]:
    """(requests/s that met the targets, the fraction of the level's requests that did: a failed request met
    none); (None, None) without a target: goodput is defined by its targets, and none was given. `attempted`: the
    level's requests, failed ones included (default: the completed ones)."""
    if ttft_ms is None and tpot_ms is None:
        return None, None
    good = sum(meets(m, ttft_ms, tpot_ms) for m in metrics)
    total = len(metrics) if attempted is None else attempted
    return good / span_s if span_s > 0 else 0.0, good / total if total else None


def generation_summary(timings: Sequence[StreamTiming], span_s: float, ttft_ms: float | None,
                       tpot_ms: float | None, attempted: int | None = None) -> dict[str, Any]:
    """A level's `generation` JSON from its completed requests over the level's span."""
    metrics = [request_metrics(t) for t in timings]
    tokens = [m.output_tokens for m in metrics]
    rate, fraction = goodput(metrics, ttft_ms, tpot_ms, span_s, attempted)
    kept = metrics[:PER_REQUEST_KEPT]
    return {
        "completed": len(metrics), "span_s": span_s, "output_tokens": sum(tokens),
        "output_tokens_per_s": sum(tokens) / span_s if span_s > 0 else 0.0,
        "output_tokens_per_request": {"min": min(tokens), "max": max(tokens)} if tokens else None,
        "prompt_tokens": sorted({t.prompt_tokens for t in timings if t.prompt_tokens is not None}),
        "ttft_ms": percentiles_ms([m.ttft_s for m in metrics]),
        "tpot_ms": percentiles_ms([m.tpot_s for m in metrics if m.tpot_s is not None]),
        "itl_ms": percentiles_ms([gap for m in metrics for gap in m.itl_s]),
        "e2e_ms": percentiles_ms([m.e2e_s for m in metrics]),
        "targets": {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms}, "goodput_rps": rate, "goodput_fraction": fraction,
        # each completed request, column-wise (as vLLM's saved result keeps them): what the percentiles summarize;
        # the first PER_REQUEST_KEPT of them, so that a long level against a fast server keeps its row small
        "per_request": {"ttft_ms": [m.ttft_s * 1000.0 for m in kept],
                        "tpot_ms": [m.tpot_s * 1000.0 if m.tpot_s is not None else None for m in kept],
                        "e2e_ms": [m.e2e_s * 1000.0 for m in kept], "output_tokens": tokens[:len(kept)]},
        "per_request_kept": len(kept),
    }


# --- the prompt ----------------------------------------------------------------------------------------------


def prompt_text(tokenizer: Any, prompt_len: int, text: str) -> tuple[str, int]:
    """Text of `text`'s tokens that the tokenizer (as the server calls it, special tokens included) makes into
    `prompt_len` tokens, or as near as decoding and encoding again allow, shorter before longer (a longer prompt
    could push a cell planned up to the model's positions past them); with the count it makes."""
    special = len(tokenizer("")["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise UserError("the model's tokenizer makes no tokens of the bundled prompt text")
    best: tuple[tuple[bool, int], str, int] | None = None
    take = max(1, prompt_len - special)
    for _ in range(8):  # decoding then encoding again can merge or split tokens at the seams: correct and retry
        chosen = (ids * (take // len(ids) + 1))[:take]
        candidate = str(tokenizer.decode(chosen, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        count = len(tokenizer(candidate)["input_ids"])
        rank = (count > prompt_len, abs(count - prompt_len))
        if best is None or rank < best[0]:
            best = (rank, candidate, count)
        if count == prompt_len:
            break
        take = max(1, take + prompt_len - count)
    assert best is not None
    return best[1], best[2]


@dataclass(frozen=True)
class Workload:
    """What every request of the run asks: its prompt, its length as the client's tokenizer counts it, new tokens."""

    prompt: str
    prompt_len: int
    prompt_tokens: int
    new_tokens: int

    def body(self) -> bytes:
        return json.dumps({"prompt": self.prompt, "max_tokens": self.new_tokens, "temperature": 0,
                           "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()


def workload(deployed: Any) -> Workload:
    """The cell's prompt length and new tokens, and a prompt of that length made of the bundled prompt text."""
    from engine.deploy.generative import model_folder
    from engine.generation.prompts import PROMPT_TEXT, bundled_text, load_tokenizer

    measured = deployed.cell.extra.get("generation") or {}
    settings = deployed.cell.settings or {}
    prompt_len = measured.get("prompt_len") or settings.get("prompt_len")
    new_tokens = measured.get("new_tokens") or settings.get("new_tokens")
    if not isinstance(prompt_len, int) or not isinstance(new_tokens, int):
        raise UserError(f"{deployed.label} has no prompt length or new tokens in its result; run the study again "
                        "with --scenario generate")
    tokenizer = load_tokenizer(model_folder(deployed))
    if tokenizer is None:
        raise UserError(f"the model folder of {deployed.label} has no tokenizer that loads: the server takes text "
                        "prompts; save the tokenizer with the model and upload it again")
    text, count = prompt_text(tokenizer, prompt_len, bundled_text(PROMPT_TEXT))
    return Workload(text, prompt_len, count, new_tokens)


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


# --- the load ------------------------------------------------------------------------------------------------


async def stream_once(client: Any, body: bytes, sink: list[StreamTiming]) -> str | None:
    """One streamed request; its timing goes to `sink` when it succeeds, else a one-line error is returned."""
    sent = time.perf_counter()
    chunks: list[float] = []
    usage: dict[str, Any] | None = None
    async with client.stream("POST", ENDPOINT, content=body, headers={"content-type": "application/json"}) as reply:
        if reply.status_code != 200:
            text = (await reply.aread()).decode(errors="replace")
            return f"HTTP {reply.status_code}: {_one_line(text)}"
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
                message = error.get("message") if isinstance(error, dict) else error
                return f"the stream ended with an error: {_one_line(str(message))}"
            # a chunk per token (its text may be "": a character split across tokens); not the finish chunk
            if any(choice.get("finish_reason") is None for choice in event.get("choices") or []):
                chunks.append(time.perf_counter())
            if event.get("usage"):
                usage = event["usage"]
    end = time.perf_counter()
    if usage is None:
        return "the stream carried no usage: the server does not answer stream_options.include_usage"
    if not chunks:
        return "the stream carried no token"
    sink.append(StreamTiming(sent, tuple(chunks), end, int(usage["completion_tokens"]), usage.get("prompt_tokens")))
    return None


async def drive(url: str, work: Workload, config: Any, progress: TextIO | None = None) -> list[dict[str, Any]]:
    """Every level of `config` against the server at `url`, each after a warm-up: the levels' JSON."""
    import httpx

    clock = MonotonicClock()
    connections = max([*config.concurrency, config.max_outstanding if config.rates else 1])
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    body = work.body()
    levels = []
    async with httpx.AsyncClient(base_url=url, timeout=config.timeout_s, limits=limits) as client:
        plan: list[tuple[str, int | None, float | None]] = [("closed", c, None) for c in config.concurrency]
        plan += [("open", None, r) for r in config.rates]
        for mode, concurrency, rate in plan:
            await warm_up(lambda: stream_once(client, body, []), config.warmup, concurrency or 1)
            timings: list[StreamTiming] = []
            send = functools.partial(stream_once, client, body, timings)
            start = clock.now()
            records: list[Record]
            if mode == "closed":
                assert concurrency is not None
                records = await closed_loop(send, concurrency, config.duration_s, clock)
            else:
                assert rate is not None
                records = await open_loop(send, poisson_arrivals(rate, config.duration_s, config.seed),
                                          config.max_outstanding, clock)
            level = summarize(records, mode=mode, concurrency=concurrency, rate_rps=rate, start=start,
                              duration_s=config.duration_s, batch_size=1, window_count=config.windows)
            generation = generation_summary(timings, level_span(records, start, config.duration_s), config.ttft_ms,
                                            config.tpot_ms, attempted=len(records))
            levels.append({**level.to_json(), "generation": generation})
            if progress is not None:
                print(format_level(levels[-1]), file=progress, flush=True)
    return levels


def check_options(config: Any) -> None:
    """UserError for options that do not apply to a generation cell's server."""
    if config.max_batch is not None or config.max_delay_ms is not None:
        raise UserError("--max-batch and --max-delay-ms batch a single-pass server; the generative server runs one "
                        "generation at a time: leave them out")


def run_json(config: Any, deployed: Any, work: Workload, levels: list[dict[str, Any]],
             load_before: Sequence[float], progress: TextIO | None = None) -> dict[str, Any]:
    """The run as serve-bench stores it: its settings, what it noticed, its levels; says what it noticed."""
    notes = []
    served = {n for level in levels for n in level["generation"]["prompt_tokens"]}
    if served and served != {work.prompt_tokens}:
        notes.append(f"the server counted {', '.join(map(str, sorted(served)))} prompt tokens where the client's "
                     f"tokenizer counts {work.prompt_tokens}")
    if work.prompt_tokens != work.prompt_len:
        notes.append(f"the prompt is {work.prompt_tokens} tokens, not the cell's {work.prompt_len}: the tokenizer "
                     "does not encode its own decoded text to that length")
    counts = [level["generation"]["output_tokens_per_request"] for level in levels]
    if any(c and (c["min"] != work.new_tokens or c["max"] != work.new_tokens) for c in counts):
        notes.append(f"some requests generated other than {work.new_tokens} tokens: the server does not honour "
                     "ignore_eos")
    if progress is not None:
        if config.ttft_ms is None and config.tpot_ms is None:
            print("goodput not computed: give --ttft-ms and/or --tpot-ms, the targets a request must meet",
                  file=progress, flush=True)
        for note in notes:
            print(f"note: {note}", file=progress, flush=True)
    return {
        "study": config.study_id, "cell": deployed.cell.cell, "target": "url" if config.url else "local",
        # the generative server generates one request at a time: no batching of its own (unknown at a --url)
        "url": config.url, "max_batch": None if config.url else 1, "max_delay_ms": None if config.url else 0.0,
        "settings": {"scenario": "generate", "variant": deployed.cell.variant, "runtime": deployed.cell.runtime,
                     "served_runtime": "transformers", "batch_size": deployed.cell.batch_size,
                     "recommended": deployed.recommended, "duration_s": config.duration_s,
                     "windows": config.windows, "warmup": config.warmup, "concurrency": list(config.concurrency),
                     "rates": list(config.rates), "prompt_len": work.prompt_len, "prompt_tokens": work.prompt_tokens,
                     "new_tokens": work.new_tokens, "targets": {"ttft_ms": config.ttft_ms, "tpot_ms": config.tpot_ms},
                     "endpoint": f"{ENDPOINT} (streamed)", "decoding": "greedy, EOS ignored",
                     "inputs": "the bundled prompt text through the model's tokenizer", "notes": notes,
                     "machine_load": {"before": list(load_before), "after": list(os.getloadavg()),
                                      "cores": os.cpu_count()}},
        "levels": levels,
    }


# --- the printed table ---------------------------------------------------------------------------------------

_COLUMNS = (("level", 12), ("requests", 8), ("errors", 6), ("req/s", 8), ("out tok/s", 9), ("TTFT p50", 9),
            ("TTFT p99", 9), ("TPOT p50", 9), ("TPOT p99", 9), ("ITL p99", 9), ("goodput", 0))


def header() -> str:
    return "  ".join(name if w == 0 else f"{name:<{w}}" for name, w in _COLUMNS) + "   (times in ms)"


def format_level(level: dict[str, Any]) -> str:
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, int | float) else "-"

    g = level["generation"]
    good = (f"{g['goodput_rps']:.2f} req/s ({g['goodput_fraction'] * 100:.0f}%)"
            if g["goodput_rps"] is not None and g["goodput_fraction"] is not None else "-")
    values = (level_label(level), str(level["requests"]), str(level["errors"]), num(level["throughput_rps"], ".2f"),
              num(g["output_tokens_per_s"], ".1f"), num(g["ttft_ms"]["p50"], ".2f"), num(g["ttft_ms"]["p99"], ".2f"),
              num(g["tpot_ms"]["p50"], ".2f"), num(g["tpot_ms"]["p99"], ".2f"), num(g["itl_ms"]["p99"], ".2f"), good)
    return "  ".join(v if w == 0 else f"{v:<{w}}" for v, (_, w) in zip(values, _COLUMNS, strict=True))
