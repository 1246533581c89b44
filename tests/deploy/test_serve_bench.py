"""`python -m engine serve-bench`: a real bundle started and driven at two levels, with and without dynamic batching;
the load generator's open loop and stability rule; a URL where nothing answers; the Serving views.

Timings are never asserted (CI runs on two busy cores): only the structure and the counts."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.__main__ import main
from engine.deploy import loadgen
from tests.deploy.conftest import Seeded
from tests.deploy.test_deploy import cell_of

LEVEL_KEYS = {"mode", "concurrency", "rate_rps", "duration_s", "batch_size", "requests", "errors", "throughput_rps",
              "items_per_s", "latency_ms", "stable", "windows", "batch_sizes", "mean_batch", "error_examples",
              "client_cpu_ms"}


def _serve_bench(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["serve-bench", *args], out=out)
    return code, out.getvalue()


def test_serve_bench_drives_a_started_bundle_and_stores_its_levels(seeded: Seeded, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    from engine.report.html import study_html
    from engine.report.source import load_report

    cell = cell_of(seeded.study, "onnxruntime")
    common = [str(seeded.study), "--cell", str(cell), "--concurrency", "1,4", "--duration", "1", "--windows", "3",
              "--warmup", "4"]
    plain, batched = tmp_path / "plain.json", tmp_path / "batched.json"
    code, text = _serve_bench(*common, "--rate", "20", "--json", str(plain))  # and an open loop
    assert code == 0, text
    # a long delay: each batch waits for all 4 in-flight requests, so the server's calls carry 4 samples
    code, text = _serve_bench(*common, "--max-batch", "4", "--max-delay-ms", "1000", "--json", str(batched))
    assert code == 0, text
    assert "c=1" in text and "c=4" in text and "stored" in text  # the batched run's table

    runs = [json.loads(plain.read_text()), json.loads(batched.read_text())]
    assert [(r["target"], r["max_batch"], r["max_delay_ms"]) for r in runs] == [("local", 1, 0.0),
                                                                                ("local", 4, 1000.0)]
    assert [(lv["mode"], lv["concurrency"], lv["rate_rps"]) for lv in runs[0]["levels"]] == [
        ("closed", 1, None), ("closed", 4, None), ("open", None, 20.0)]
    assert [(lv["mode"], lv["concurrency"]) for lv in runs[1]["levels"]] == [("closed", 1), ("closed", 4)]
    for run in runs:
        assert run["cell"] == cell and run["study"] == seeded.study
        for level in run["levels"]:
            assert set(level) == LEVEL_KEYS
            assert level["errors"] == 0 and level["requests"] > 0, level
            assert isinstance(level["stable"], bool) and len(level["windows"]) == 3
            assert set(level["latency_ms"]) >= {"p50", "p90", "p99"}
            assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
            assert level["batch_sizes"]  # the server's runtime calls in this level, from its /metrics
    assert set(runs[0]["levels"][1]["batch_sizes"]) == {"1"}  # no batching: one sample per call
    assert any(key != "1" for key in runs[1]["levels"][1]["batch_sizes"]), runs[1]["levels"][1]
    assert not list((data_dir / "tmp").glob("serve-bench-*")), "the scratch bundle was left behind"

    stored = load_report(seeded.study)["serving"]
    assert [r["id"] for r in stored][-2:] == [runs[0]["id"], runs[1]["id"]]
    back = stored[-1]
    assert back["max_batch"] == 4 and back["levels"][1]["batch_sizes"] == runs[1]["levels"][1]["batch_sizes"]
    assert back["levels"][0]["latency_ms"]["p99"] == pytest.approx(runs[1]["levels"][0]["latency_ms"]["p99"])

    html = study_html(load_report(seeded.study))
    assert "<h2>Serving</h2>" in html and f'id="chart-serving-{cell}"' in html and "batch ≤ 4 within 1000 ms" in html

    at = visit_serving_page()
    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    assert len(specs) == 1 and specs[0]["layout"]["title"]["text"].startswith(f"Serving cell {cell}:")
    names = {trace["name"] for trace in specs[0]["data"]}
    assert {f"run {runs[0]['id']}: no batching · p50", f"run {runs[1]['id']}: batch ≤ 4 within 1000 ms · p99"} <= names
    assert not at.info


def visit_serving_page() -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=60).run()
    at.switch_page("pages/serving.py").run()
    assert not at.exception, at.exception
    return at


def test_serve_bench_errors_are_one_line(seeded: Seeded, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cases = {
        ("--url", f"http://127.0.0.1:{port}"): "nothing answers at http://127.0.0.1:",
        ("--cell", str(cell_of(seeded.study, "torch"))): "is n/a",
        ("--cell", "99"): "pick one with --cell",
        ("--concurrency", "0"): "--concurrency levels must be at least 1",
        ("--url", "http://x:1", "--max-batch", "4"): "a server at --url batches as it was started",
        ("--max-delay-ms", "5"): "add --max-batch N",
    }
    for args, expected in cases.items():
        code, _ = _serve_bench(str(seeded.study), "--duration", "1", *args)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and err.count("\n") == 1, (args, err)
    code, _ = _serve_bench("999999", "--duration", "1")
    assert code == 2 and "no study with id 999999" in capsys.readouterr().err


def test_a_server_whose_model_does_not_load_is_a_one_line_error(seeded: Seeded, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    from dataclasses import replace

    from engine.deploy.bundle import load_deploy_cell
    from engine.deploy.serve_bench import local_server
    from engine.errors import UserError

    deployed = load_deploy_cell(seeded.study, cell_of(seeded.study, "onnxruntime"))
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    deployed = replace(deployed, cell=replace(deployed.cell, variant_path=str(broken)))
    with pytest.raises(UserError) as caught, local_server(deployed, 1, 0.0):
        pass
    message = str(caught.value)
    assert message.startswith("the server's model did not load:") and "\n" not in message, message
    assert not list((data_dir / "tmp").glob("serve-bench-*")), "the scratch bundle was left behind"


# --- the load generator ------------------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when the server double works or the generator waits for a later arrival."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, when: float) -> None:
        self.t = max(self.t, when)
        await asyncio.sleep(0)


def _serial_app(clock: FakeClock, service_s: float, fail: bool = False) -> Any:
    """An ASGI server double that answers one request at a time, each taking `service_s` of the fake clock."""
    lock = asyncio.Lock()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        async with lock:
            await asyncio.sleep(0)
            clock.t += service_s
        status = 500 if fail else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"no" if fail else b"{}"})

    return app


async def _post(client: httpx.AsyncClient) -> str | None:
    reply = await client.post("/v1/predict", content=b"{}")
    return None if reply.status_code == 200 else f"HTTP {reply.status_code}"


def test_open_loop_measures_latency_from_the_intended_start() -> None:
    """Ten arrivals 10 ms apart at a server that takes 100 ms each, one connection: later requests wait for the
    earlier ones, and that wait is in their latency (it is not in the time from their actual send)."""
    clock = FakeClock()

    async def run() -> list[loadgen.Record]:
        transport = httpx.ASGITransport(app=_serial_app(clock, 0.1))
        async with httpx.AsyncClient(transport=transport, base_url="http://double") as client:
            return await loadgen.open_loop(lambda: _post(client), [i * 0.01 for i in range(10)], max_outstanding=1,
                                           clock=clock)

    records = sorted(asyncio.run(run()), key=lambda r: r.intended)
    assert len(records) == 10 and all(r.ok for r in records)
    assert [r.intended for r in records] == pytest.approx([i * 0.01 for i in range(10)])
    for i, record in enumerate(records):
        # its own service time (the first one's may take in the generator's step to the next arrival)
        assert 0.1 - 1e-9 <= record.end - record.sent <= 0.11 + 1e-9
        assert record.latency_s >= 0.1 * (i + 1) - 0.01 * i - 1e-9  # ... plus the wait behind the i before it
    assert records[-1].latency_s > 8 * (records[-1].end - records[-1].sent)
    level = loadgen.summarize(records, mode="open", concurrency=None, rate_rps=100.0, start=0.0, duration_s=0.1,
                              batch_size=1, window_count=3)
    assert level.latency_ms["p99"] is not None and level.latency_ms["p99"] > 900  # ms: queueing is not hidden


def test_a_level_where_every_request_fails_is_counted_not_raised() -> None:
    clock = FakeClock()

    async def run() -> list[loadgen.Record]:
        transport = httpx.ASGITransport(app=_serial_app(clock, 0.01, fail=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://double") as client:
            return await loadgen.closed_loop(lambda: _post(client), 2, 0.1, clock=clock)

    records = asyncio.run(run())
    level = loadgen.summarize(records, mode="closed", concurrency=2, rate_rps=None, start=0.0, duration_s=0.1,
                              batch_size=4, window_count=3)
    assert level.requests == level.errors > 0 and level.throughput_rps == 0.0
    assert level.latency_ms["p50"] is None and not level.stable and level.error_examples == ["HTTP 500"]


def test_poisson_arrivals_are_seeded_and_near_the_rate() -> None:
    first = loadgen.poisson_arrivals(200.0, 5.0, seed=3)
    assert first == loadgen.poisson_arrivals(200.0, 5.0, seed=3)
    assert 800 < len(first) < 1200 and first == sorted(first) and first[-1] < 5.0


def test_stability_rule_on_synthetic_windows() -> None:
    W = loadgen.Window
    assert loadgen.is_stable([W(50, 90.0), W(100, 10.0), W(104, 10.5), W(96, 10.2)])  # a slow first window
    assert not loadgen.is_stable([W(100, 10.0), W(100, 10.0), W(115, 10.0)])  # throughput 15% apart
    assert not loadgen.is_stable([W(100, 10.0), W(100, 10.0), W(100, 11.5)])  # p99 15% apart
    assert loadgen.is_stable([W(100, 10.0), W(110, 10.0), W(105, 11.0)])  # exactly 10%: stable
    assert not loadgen.is_stable([W(100, 10.0), W(100, 10.0)])  # fewer than 3 windows
    assert not loadgen.is_stable([W(100, 10.0), W(0, None), W(100, 10.0)])  # an empty window


def test_windows_split_replies_by_completion_time() -> None:
    records = [loadgen.Record(t, t, t + 0.05, True) for t in (0.0, 0.1, 0.2, 0.3, 0.4)] + [
        loadgen.Record(0.5, 0.5, 0.55, False, "HTTP 500")]
    series = loadgen.windows(records, 0.0, 0.6, 3)
    assert [w.throughput_rps for w in series] == pytest.approx([10.0, 10.0, 5.0])
    assert all(w.p99_ms == pytest.approx(50.0) for w in series)


def test_batch_sizes_come_from_the_histograms_difference() -> None:
    before = loadgen.parse_metrics(
        'serve_batch_size_bucket{le="1.0"} 5.0\nserve_batch_size_bucket{le="2.0"} 5.0\n'
        'serve_batch_size_bucket{le="4.0"} 5.0\nserve_batch_size_bucket{le="+Inf"} 5.0\n'
        "serve_batch_size_count 5.0\nserve_batch_size_sum 5.0\nserve_max_batch 4.0\nserve_max_delay_seconds 0.05\n")
    after = loadgen.parse_metrics(
        '# HELP x\nserve_batch_size_bucket{le="1.0"} 7.0\nserve_batch_size_bucket{le="2.0"} 8.0\n'
        'serve_batch_size_bucket{le="4.0"} 12.0\nserve_batch_size_bucket{le="+Inf"} 12.0\n'
        "serve_batch_size_count 12.0\nserve_batch_size_sum 31.0\n")
    calls, mean = loadgen.batch_sizes_between(loadgen.batch_histogram(before), loadgen.batch_histogram(after))
    assert calls == {"1": 2, "2": 1, "3-4": 4} and mean == pytest.approx(26 / 7)
    assert loadgen.batching_settings(before) == (4, pytest.approx(50.0))
    assert loadgen.batching_settings(after) == (None, None)  # a server that does not say: unknown
    assert loadgen.batch_sizes_between(None, loadgen.batch_histogram(after)) == (None, None)
