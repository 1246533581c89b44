"""Serve a Paretoscope bundle over HTTP: `python serve.py --port 8000 [--max-batch 8 --max-delay-ms 5]`.

GET /healthz (503 until the model is loaded), POST /v1/predict with {"inputs": {NAME: nested lists}} ->
{"outputs": {NAME: nested lists}} (422 with a one-line reason for inputs the model cannot take), GET /metrics
(Prometheus text). Standalone: FastAPI, uvicorn, prometheus-client, numpy and the model's runtime; it is copied
into each FastAPI bundle beside served_model.py and runs where Paretoscope is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.deploy.served_model import InputError, ServedModel, check_inputs, merge, rows, signature, split, to_json

HERE = Path(__file__).resolve().parent
# Tests only: the model loads once this file exists, so /healthz answers 503 for as long as a test needs.
WAIT_FOR_ENV = "PARETOSCOPE_SERVE_LOAD_AFTER"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_MAX_BODY_MB = 64.0


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("serve_requests", "Prediction requests by HTTP status code", ["code"],
                                registry=self.registry)
        self.errors = Counter("serve_errors", "Failed prediction requests by kind (input, too_large, not_ready, "
                              "inference)",
                              ["kind"], registry=self.registry)
        self.latency = Histogram("serve_request_latency_seconds", "Prediction request latency, body read to reply",
                                 registry=self.registry)
        self.batch_size = Histogram("serve_batch_size", "Samples per runtime call (dynamic batching merges "
                                    "concurrent requests)", buckets=BATCH_BUCKETS, registry=self.registry)
        # the batching in force, so a load generator pointed at this server can say what it measured
        self.max_batch = Gauge("serve_max_batch", "Dynamic batching: most samples per runtime call (1: off, or "
                               "refused because axis 0 is not a batch of independent samples)",
                               registry=self.registry)
        self.max_delay = Gauge("serve_max_delay_seconds", "Dynamic batching: how long a request waits for others",
                               registry=self.registry)


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    done: asyncio.Future[dict[str, np.ndarray]]
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = rows(self.feeds)


class Batcher:
    """Dynamic batching: requests wait in a queue up to `max_delay_s` for others, until `max_batch` samples; those
    with one signature (dtypes, shapes past the batch axis) become one runtime call, whose outputs are split back."""

    def __init__(self, infer: Any, max_batch: int, max_delay_s: float) -> None:
        self.infer = infer  # async (feeds) -> outputs: one runtime call, off the event loop
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.carried: deque[_Pending] = deque()  # taken from the queue but over the batch's size: first next time

    async def submit(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pending = _Pending(feeds, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.done

    async def run(self) -> None:
        while True:
            batch = [self.carried.popleft() if self.carried else await self.queue.get()]
            await self._gather(batch)
            groups: dict[Any, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(signature(item.feeds), []).append(item)
            for group in groups.values():
                await self._run(group)

    async def _gather(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        total = batch[0].rows
        while total < self.max_batch:
            if self.carried:
                item = self.carried.popleft()
            else:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return
            if total + item.rows > self.max_batch:
                self.carried.appendleft(item)
                return
            batch.append(item)
            total += item.rows

    async def _run(self, group: list[_Pending]) -> None:
        if len(group) > 1:
            try:
                outputs = await self.infer(merge([item.feeds for item in group]))
            except Exception:  # noqa: BLE001 - one request's values may have failed the call: each runs alone below
                parts = None
            else:
                parts = split(outputs, [item.rows for item in group])
            if parts is not None:
                for item, part in zip(group, parts, strict=True):
                    if not item.done.done():
                        item.done.set_result(part)
                return
        # alone, or after a merged call that failed: each request gets its own outputs or its own error
        for item in group:
            try:
                outputs = await self.infer(item.feeds)
            except Exception as exc:  # noqa: BLE001 - the runtime's error is this request's reply
                if not item.done.done():
                    item.done.set_exception(exc)
                continue
            if not item.done.done():
                item.done.set_result(outputs)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it is over `limit` bytes: by its Content-Length before reading, else counted
    while reading, so a client cannot make the server hold more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, inputs: list[Any]) -> dict[str, np.ndarray]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise InputError("the body is not JSON") from None
    return check_inputs(payload, inputs)


def _reply(outputs: dict[str, np.ndarray]) -> JSONResponse:
    return JSONResponse({"outputs": to_json(outputs)})  # renders the JSON as it is built


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def create_app(folder: str | Path = HERE, *, max_batch: int = 1, max_delay_ms: float = 0.0,
               threads: int | None = None, max_body_mb: float = DEFAULT_MAX_BODY_MB) -> FastAPI:
    """The bundle's app. The model loads in the background at start-up (FastAPI's lifespan); every inference runs
    on one worker thread, one at a time, and parsing, checking and writing JSON on others: never on the event
    loop."""
    folder = Path(folder)
    max_body = int(max_body_mb * 1024 * 1024)
    metrics = Metrics()
    state: dict[str, Any] = {"model": None, "error": None, "batcher": None}
    # one thread: loading and every inference run there, one at a time, and the event loop stays free
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model: ServedModel = state["model"]
        metrics.batch_size.observe(rows(feeds))
        return await asyncio.get_running_loop().run_in_executor(executor, model.run, feeds)

    async def load() -> None:
        gate = os.environ.get(WAIT_FOR_ENV)
        while gate and not Path(gate).exists():
            await asyncio.sleep(0.05)
        try:
            model = await asyncio.get_running_loop().run_in_executor(executor, ServedModel, folder, threads)
        except Exception as exc:  # noqa: BLE001 - /healthz reports why the model did not load
            state["error"] = _one_line(exc)
            print(f"error: the model did not load: {state['error']}", file=sys.stderr, flush=True)
            return
        refusal = None
        if max_batch > 1:
            refusal = await asyncio.get_running_loop().run_in_executor(executor, model.batching_refusal)
        batching = max_batch > 1 and refusal is None
        if refusal is not None:
            print(f"warning: dynamic batching is off, requests run one at a time: {refusal}", file=sys.stderr,
                  flush=True)
        metrics.max_batch.set(max_batch if batching else 1)
        metrics.max_delay.set(max_delay_ms / 1000.0 if batching else 0.0)
        if batching:
            batcher = Batcher(infer, max_batch, max_delay_ms / 1000.0)
            state["batcher"] = batcher
            state["batch_task"] = asyncio.create_task(batcher.run())
        state["model"] = model
        print(f"ready: {model.runtime} model loaded" + (f", dynamic batching up to {max_batch} samples within "
                                                         f"{max_delay_ms:g} ms" if batching else ""), flush=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            for task in (loading, state.get("batch_task")):
                if task is not None:
                    task.cancel()
            executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="Paretoscope model server", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if state["model"] is not None:
            return JSONResponse({"status": "ready"})
        if state["error"] is not None:
            return JSONResponse({"status": "failed", "detail": state["error"]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        start = time.perf_counter()
        response = await _predict(request)
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        return response

    async def _predict(request: Request) -> JSONResponse:
        model: ServedModel | None = state["model"]
        if model is None:
            metrics.errors.labels("not_ready").inc()
            return JSONResponse({"detail": state["error"] or "the model is loading; poll GET /healthz"},
                                status_code=503)
        body = await _read_body(request, max_body)
        if body is None:
            metrics.errors.labels("too_large").inc()
            return JSONResponse({"detail": f"the body is larger than {max_body_mb:g} MB (--max-body-mb); send fewer "
                                 "samples per request"}, status_code=413)
        try:
            # parsing and converting a large body takes tens of milliseconds: on a thread, so /healthz still answers
            feeds = await run_in_threadpool(_parse, body, model.inputs)
        except InputError as exc:
            metrics.errors.labels("input").inc()
            return JSONResponse({"detail": str(exc)}, status_code=422)
        batcher: Batcher | None = state["batcher"]
        try:
            outputs = await batcher.submit(feeds) if batcher is not None else await infer(feeds)
        except Exception as exc:  # noqa: BLE001 - the runtime's refusal is the reply, the server goes on
            metrics.errors.labels("inference").inc()
            return JSONResponse({"detail": _one_line(exc)}, status_code=500)
        return await run_in_threadpool(_reply, outputs)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve this Paretoscope bundle's model over HTTP.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--max-batch", type=int, default=1,
                        help="dynamic batching: merge concurrent requests into calls of up to this many samples "
                             "(default 1: off)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0,
                        help="dynamic batching: how long a request waits for others (default 2 ms)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB,
                        help=f"refuse request bodies larger than this with 413 (default {DEFAULT_MAX_BODY_MB:g} MB)")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request (default off: /metrics counts them, and the lines cost about a "
                             "sixth of the server's CPU per request)")
    parser.add_argument("--threads", type=int, default=None,
                        help="the runtime's intra-op threads (default: what the cell was measured with)")
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.max_delay_ms < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--max-batch and --threads must be at least 1, --max-delay-ms at least 0")
    if args.max_body_mb <= 0:
        parser.error("--max-body-mb must be more than 0")
    app = create_app(HERE, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, threads=args.threads,
                     max_body_mb=args.max_body_mb)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found: with this
    # one the process ends with 0 after that clean shutdown rather than be killed by the re-raised signal
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
