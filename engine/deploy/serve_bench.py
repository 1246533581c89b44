"""`python -m engine serve-bench STUDY`: a cell's FastAPI bundle (or a server at a URL) measured under load.

Starts the cell's bundle as a user runs it (`python serve.py`, in a scratch folder of the data folder, removed after)
or targets `--url`; drives it with engine/deploy/loadgen.py at each concurrency (closed loop) and each `--rate`
(open loop), with the cell's batch of inputs synthesized as the engine synthesizes them; reads the server's batch
sizes from its /metrics before and after each level; stores the run as serving results of the cell. A generation
cell's streaming server is measured as vLLM's benchmark_serving measures one (serve_bench_generate.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from engine.deploy.loadgen import (
    LevelResult,
    MonotonicClock,
    batch_histogram,
    batch_sizes_between,
    batching_settings,
    closed_loop,
    open_loop,
    parse_metrics,
    poisson_arrivals,
    summarize,
    warm_up,
)
from engine.deploy.generative_cells import is_generation_cell
from engine.errors import UserError
from engine.report.serving import level_label

START_TIMEOUT_S = 120.0  # a server's start imports FastAPI and the runtime, and loads the model: slow on busy cores
STOP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"Uvicorn running on (http://\S+:\d+)")


@dataclass(frozen=True)
class ServeBenchConfig:
    """What `serve-bench` measures: which cell and server, which load levels, for how long each."""

    study_id: int
    cell: int | None = None  # None: the recommended cell, as `deploy` picks it
    url: str | None = None  # a running server; None: start the cell's bundle here
    concurrency: tuple[int, ...] = (1, 4, 16)
    duration_s: float = 10.0
    rates: tuple[float, ...] = ()  # open-loop arrival rates (requests/s), after the closed loops
    max_batch: int | None = None  # the started server's dynamic batching (None: off)
    max_delay_ms: float | None = None
    windows: int = 5  # per level, for the stability rule (the last 3 within 10%)
    warmup: int = 10  # requests before each level, not recorded
    timeout_s: float = 60.0  # per request
    max_outstanding: int = 256  # open loop: connections in flight at most (later requests wait, and that counts)
    seed: int = 0
    ttft_ms: float | None = None  # generation cells: the goodput targets (None: that target does not apply)
    tpot_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.concurrency and not self.rates:
            raise ValueError("give at least one --concurrency level or --rate")
        if any(c < 1 for c in self.concurrency):
            raise ValueError(f"--concurrency levels must be at least 1, got {list(self.concurrency)}")
        if any(not r > 0 for r in self.rates):
            raise ValueError(f"--rate must be above 0 requests/s, got {list(self.rates)}")
        if not self.duration_s > 0:
            raise ValueError(f"--duration must be above 0 seconds, got {self.duration_s:g}")
        if self.windows < 3:
            raise ValueError(f"--windows must be at least 3 (the stability rule compares the last 3), got "
                             f"{self.windows}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_delay_ms is not None and not self.max_delay_ms >= 0:
            raise ValueError(f"--max-delay-ms must be 0 or more, got {self.max_delay_ms:g}")
        if self.max_delay_ms is not None and self.max_batch is None and self.url is None:
            raise ValueError("--max-delay-ms is how long a batch waits: add --max-batch N (N > 1) to batch")
        if self.url is not None and (self.max_batch is not None or self.max_delay_ms is not None):
            raise ValueError("--max-batch and --max-delay-ms set the server serve-bench starts; a server at --url "
                             "batches as it was started (read from its /metrics)")
        for flag, target in (("--ttft-ms", self.ttft_ms), ("--tpot-ms", self.tpot_ms)):
            if target is not None and not (target > 0 and math.isfinite(target)):
                raise ValueError(f"{flag} is a goodput target in milliseconds: a number above 0, got {target:g}")
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"--url must be an http:// or https:// address, got '{self.url}'")

    @property
    def batching(self) -> tuple[int, float]:
        """The started server's --max-batch and --max-delay-ms (1 and 0: off)."""
        max_batch = self.max_batch or 1
        return max_batch, (self.max_delay_ms if self.max_delay_ms is not None else 2.0) if max_batch > 1 else 0.0


# --- the server ----------------------------------------------------------------------------------------------


def _last_lines(log: Path, n: int = 3) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return " | ".join(lines[-n:])[-600:] or "no output"


def _health(url: str) -> tuple[int, str] | None:
    import httpx

    try:
        reply = httpx.get(f"{url}/healthz", timeout=10)
    except httpx.TransportError:
        return None
    try:
        detail = str(reply.json().get("detail") or reply.json().get("status") or "")
    except ValueError:
        detail = reply.text[:200]
    return reply.status_code, detail


@contextmanager
def local_server(deployed: Any, max_batch: int, max_delay_ms: float,
                 start_timeout_s: float = START_TIMEOUT_S, batching: bool = True) -> Iterator[str]:
    """The cell's FastAPI bundle written to a scratch folder of the data folder and started as a user starts it;
    yields its URL once /healthz says ready; stops it (SIGTERM) and removes the folder after. `batching` False: a
    server without batching options (the generative bundle's)."""
    from engine.deploy.write import write_bundle
    from storage.paths import sub_dir

    folder = sub_dir("tmp") / f"serve-bench-{uuid.uuid4().hex[:12]}"
    log = folder.with_suffix(".log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        write_bundle(deployed, "fastapi", folder / "bundle")
        with open(log, "wb") as sink:
            options = ["--max-batch", str(max_batch), "--max-delay-ms", f"{max_delay_ms:g}"] if batching else []
            proc = subprocess.Popen([sys.executable, "serve.py", "--host", "127.0.0.1", "--port", "0", *options],
                                    cwd=folder / "bundle", stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        yield _wait_ready(proc, log, start_timeout_s)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
        log.unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> str:
    """The server's URL once it listens (its log says where) and its model is loaded; UserError if it exits,
    its model fails to load, or it takes longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the server did not start (exit code {proc.returncode}): {_last_lines(log)}")
        if url is None:
            found = _LISTENING.search(log.read_text(errors="replace"))
            url = found[1] if found else None
        if url is not None:
            health = _health(url)
            if health is not None and health[0] == 200:
                return url
            if health is not None and "did not load" in _last_lines(log, 5):
                raise UserError(f"the server's model did not load: {health[1] or _last_lines(log)}")
        time.sleep(0.05)
    raise UserError(f"the server was not ready within {timeout_s:g} s: {_last_lines(log)}")


@contextmanager
def target_server(config: ServeBenchConfig, deployed: Any, batching: bool = True) -> Iterator[str]:
    """The URL serve-bench drives: `--url` once it answers ready, else the cell's bundle started here (with the
    config's batching; `batching` False: a server without batching options, the generative bundle's)."""
    if config.url is not None:
        url = config.url.rstrip("/")
        check_url(url)
        yield url
        return
    max_batch, max_delay_ms = config.batching if batching else (1, 0.0)
    with local_server(deployed, max_batch, max_delay_ms, batching=batching) as url:
        yield url


def check_url(url: str) -> None:
    """A server answers at `url` and its model is loaded; else a one-line UserError."""
    health = _health(url)
    if health is None:
        raise UserError(f"nothing answers at {url}: start the bundle's server (python serve.py --port P) or fix --url")
    if health[0] != 200:
        raise UserError(f"the server at {url} is not ready (HTTP {health[0]}: {health[1] or 'no detail'}); wait for "
                        "GET /healthz to answer 200")


# --- the load ------------------------------------------------------------------------------------------------


def request_body(deployed: Any, padding: float = 0.0, seed: int = 0) -> bytes:
    """One request of the cell's batch of inputs, synthesized as the engine synthesizes them, as the bundle's JSON."""
    from engine.data import synthesize

    arrays = synthesize(deployed.spec, deployed.cell.batch_size, seed=seed, padding=padding)
    return json.dumps({"inputs": {name: array.tolist() for name, array in arrays.items()}}).encode()


@dataclass
class Drive:
    """What driving one server measured: its levels, and its batching as its /metrics says (None: unknown)."""

    levels: list[LevelResult]
    max_batch: int | None
    max_delay_ms: float | None


async def drive(url: str, body: bytes, batch_size: int, config: ServeBenchConfig,
                progress: TextIO | None = None) -> Drive:
    """Every level of `config` against the server at `url`, each after a warm-up."""
    import httpx

    clock = MonotonicClock()
    connections = max([*config.concurrency, config.max_outstanding if config.rates else 1])
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=config.timeout_s, limits=limits) as client:

        # built once and sent again and again: building a request costs httpx ~0.1 ms, a tenth of its share of the
        # measured latency on two cores
        request = client.build_request("POST", "/v1/predict", content=body, headers=headers)

        async def send() -> str | None:
            reply = await client.send(request)
            if reply.status_code == 200:
                return None
            return f"HTTP {reply.status_code}: {reply.text[:200]}"

        async def scrape() -> dict[tuple[str, str], float] | None:
            try:
                reply = await client.get("/metrics")
            except httpx.HTTPError:
                return None
            return parse_metrics(reply.text) if reply.status_code == 200 else None

        first = await scrape()
        max_batch, max_delay_ms = batching_settings(first) if first is not None else (None, None)
        levels = []
        plan: list[tuple[str, int | None, float | None]] = [("closed", c, None) for c in config.concurrency]
        plan += [("open", None, r) for r in config.rates]
        for mode, concurrency, rate in plan:
            await warm_up(send, config.warmup, concurrency or 1)
            before = await scrape()
            cpu = time.process_time()
            start = clock.now()
            if mode == "closed":
                assert concurrency is not None
                records = await closed_loop(send, concurrency, config.duration_s, clock)
            else:
                assert rate is not None
                arrivals = poisson_arrivals(rate, config.duration_s, config.seed)
                records = await open_loop(send, arrivals, config.max_outstanding, clock)
            cpu = time.process_time() - cpu
            after = await scrape()
            level = summarize(records, mode=mode, concurrency=concurrency, rate_rps=rate, start=start,
                              duration_s=config.duration_s, batch_size=batch_size, window_count=config.windows)
            level.batch_sizes, level.mean_batch = batch_sizes_between(
                batch_histogram(before) if before else None, batch_histogram(after) if after else None)
            level.client_cpu_ms = cpu * 1000.0 / len(records) if records else None
            levels.append(level)
            if progress is not None:
                print(format_level(level), file=progress, flush=True)
    return Drive(levels, max_batch, max_delay_ms)


# --- the whole run -------------------------------------------------------------------------------------------


def serve_bench(config: ServeBenchConfig, progress: TextIO | None = None) -> dict[str, Any]:
    """Measure the cell's server at every level and store the run; returns the stored run's JSON."""
    from engine.deploy.bundle import deploy_cell
    from engine.report.source import results_json
    from storage import serving
    from storage.db import session

    with session(write=False) as s:
        try:
            report = results_json(s, config.study_id)
        except KeyError:
            raise UserError(f"no study with id {config.study_id}; list them in the dashboard") from None
    deployed = deploy_cell(report, config.cell)
    if is_generation_cell(deployed.cell):
        return _serve_bench_generate(config, deployed, progress)
    if config.ttft_ms is not None or config.tpot_ms is not None:
        raise UserError(f"--ttft-ms and --tpot-ms are goodput targets of a generation cell's server; {deployed.label} "
                        "is not a generation cell: leave them out")
    padding = float((report["study"].get("settings") or {}).get("padding") or 0.0)
    body = request_body(deployed, padding, config.seed)
    load_before = os.getloadavg()
    if progress is not None:
        print(header(), file=progress, flush=True)
    with target_server(config, deployed) as url:
        measured = asyncio.run(drive(url, body, deployed.cell.batch_size, config, progress))
    # the server's own word (1 when a fixed-batch model turned batching off); a started one's options without it
    max_batch, max_delay_ms = (config.batching if config.url is None and measured.max_batch is None
                               else (measured.max_batch, measured.max_delay_ms))
    run = {
        "study": config.study_id, "cell": deployed.cell.cell, "target": "url" if config.url else "local",
        "url": config.url, "max_batch": max_batch, "max_delay_ms": max_delay_ms,
        "settings": {"variant": deployed.cell.variant, "runtime": deployed.cell.runtime,
                     "served_runtime": deployed.served_runtime, "batch_size": deployed.cell.batch_size,
                     "recommended": deployed.recommended, "duration_s": config.duration_s,
                     "windows": config.windows, "warmup": config.warmup, "concurrency": list(config.concurrency),
                     "rates": list(config.rates), "inputs": "synthesized" + (f", padding {padding:g}" if padding
                                                                              else ""),
                     "machine_load": {"before": list(load_before), "after": list(os.getloadavg()),
                                      "cores": os.cpu_count()}},
        "levels": [level.to_json() for level in measured.levels],
    }
    with session() as s:
        run["id"] = serving.add_serving_run(s, run)
    return run


def _serve_bench_generate(config: ServeBenchConfig, deployed: Any, progress: TextIO | None) -> dict[str, Any]:
    """A generation cell's streaming server measured at every level (serve_bench_generate.py), the run stored."""
    from engine.deploy import serve_bench_generate as gen
    from storage import serving
    from storage.db import session

    gen.check_options(config)
    work = gen.workload(deployed)
    load_before = os.getloadavg()
    if progress is not None:
        print(gen.header(), file=progress, flush=True)
    with target_server(config, deployed, batching=False) as url:
        levels = asyncio.run(gen.drive(url, work, config, progress))
    run = gen.run_json(config, deployed, work, levels, load_before, progress)
    with session() as s:
        run["id"] = serving.add_serving_run(s, run)
    return run


# --- the printed table ---------------------------------------------------------------------------------------

_COLUMNS = (("level", 12), ("requests", 8), ("errors", 6), ("req/s", 9), ("items/s", 9), ("p50 ms", 8),
            ("p90 ms", 8), ("p99 ms", 8), ("batches", 18), ("stable", 0))


def header() -> str:
    return "  ".join(name if w == 0 else f"{name:<{w}}" for name, w in _COLUMNS)


def format_level(level: LevelResult) -> str:
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    lat = level.latency_ms
    batches = (" ".join(f"{k}:{v}" for k, v in level.batch_sizes.items()) if level.batch_sizes else
               ("-" if level.batch_sizes is None else "none"))
    stable = "yes" if level.stable else "no (the last 3 windows differ by more than 10%)"
    values = (level_label(level.to_json()), str(level.requests), str(level.errors), num(level.throughput_rps, ".1f"),
              num(level.items_per_s, ".1f"), num(lat["p50"], ".3f"), num(lat["p90"], ".3f"), num(lat["p99"], ".3f"),
              batches, stable)
    return "  ".join(v if w == 0 else f"{v:<{w}}" for v, (_, w) in zip(values, _COLUMNS, strict=True))

