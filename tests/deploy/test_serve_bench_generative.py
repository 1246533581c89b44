"""`serve-bench` of a generation cell: the tiny Llama's generative bundle started and driven at concurrency 1 and 2
as vLLM's benchmark_serving drives a server; the per-request metrics, goodput and the stream's reading as pure
functions; the server's one-line refusals of bad ignore_eos and stream_options.

Timings are never compared with wall-clock thresholds (CI runs on two busy cores): only their relations."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.__main__ import main
from engine.deploy import serve_bench_generate as gen
from tests.deploy.conftest import GenStudy
from tests.deploy.test_chat import data_dir  # noqa: F401 - the generation study's data folder, as test_chat reads it

PROMPT_LEN, NEW_TOKENS = 8, 2  # the generation study's cells (conftest's gen_study)


def _serve_bench(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["serve-bench", *args], out=out)
    return code, out.getvalue()


def _check_levels(run: dict[str, Any]) -> None:
    """What holds for every level whatever the machine's speed: exact token counts, and the metrics' relations."""
    for level in run["levels"]:
        g = level["generation"]
        assert level["errors"] == 0 and level["requests"] > 0 and g["completed"] == level["requests"], level
        per = g["per_request"]
        assert per["output_tokens"] == [NEW_TOKENS] * g["completed"]  # ignore_eos: exactly new_tokens each
        assert g["prompt_tokens"] == [PROMPT_LEN]  # the server counted the cell's prompt length
        for ttft, tpot, e2e, n in zip(per["ttft_ms"], per["tpot_ms"], per["e2e_ms"], per["output_tokens"],
                                      strict=True):
            assert 0 < ttft < e2e
            assert tpot == pytest.approx((e2e - ttft) / (n - 1))
        assert g["output_tokens_per_s"] == pytest.approx(g["completed"] * NEW_TOKENS / g["span_s"])
        assert g["output_tokens_per_s"] == pytest.approx(level["throughput_rps"] * NEW_TOKENS)
        assert g["span_s"] >= run["settings"]["duration_s"]
        for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
            assert g[key]["p50"] <= g[key]["p90"] <= g[key]["p99"], (key, g[key])
        assert g["ttft_ms"]["p99"] <= g["e2e_ms"]["max"]


def test_serve_bench_measures_a_generation_cell(gen_study: GenStudy, data_dir: Path, tmp_path: Path,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from engine.deploy.bundle import load_deploy_cell
    from engine.deploy.serve_bench import local_server
    from engine.report.html import study_html
    from engine.report.source import load_report

    cell = gen_study.cells[("baseline", "torch")]
    common = [str(gen_study.study), "--cell", str(cell), "--duration", "1", "--windows", "3", "--warmup", "1"]
    impossible = tmp_path / "impossible.json"
    # the user's path: serve-bench starts the cell's generative bundle; a TTFT target of 1 µs no request meets
    code, text = _serve_bench(*common, "--concurrency", "1,2", "--ttft-ms", "0.001", "--json", str(impossible))
    assert code == 0, text
    assert "TTFT p50" in text and "TPOT p99" in text and "goodput" in text and "stored" in text, text
    assert "c=1" in text and "c=2" in text and "note:" not in text, text
    run = json.loads(impossible.read_text())
    assert run["settings"]["scenario"] == "generate" and run["target"] == "local" and run["max_batch"] == 1
    assert (run["settings"]["prompt_len"], run["settings"]["prompt_tokens"], run["settings"]["new_tokens"]) == (
        PROMPT_LEN, PROMPT_LEN, NEW_TOKENS)
    assert run["settings"]["targets"] == {"ttft_ms": 0.001, "tpot_ms": None} and run["settings"]["notes"] == []
    assert [(lv["mode"], lv["concurrency"]) for lv in run["levels"]] == [("closed", 1), ("closed", 2)]
    _check_levels(run)
    for level in run["levels"]:
        assert level["generation"]["goodput_rps"] == 0.0 and level["generation"]["goodput_fraction"] == 0.0
    assert not list((data_dir / "tmp").glob("serve-bench-*")), "the scratch bundle was left behind"

    # a server already running (--url), generous targets: every request meets them; and its refusals
    deployed = load_deploy_cell(gen_study.study, cell)
    generous = tmp_path / "generous.json"
    with local_server(deployed, 1, 0.0, batching=False) as url:
        code, text = _serve_bench(*common, "--url", url, "--concurrency", "1", "--ttft-ms", "1e6", "--tpot-ms", "1e6",
                                  "--json", str(generous))
        assert code == 0, text
        _refusals(url)
        code, text = _serve_bench(*common, "--url", url, "--concurrency", "1")  # no target: no goodput
        assert code == 0 and "goodput not computed: give --ttft-ms and/or --tpot-ms" in text, text
    second = json.loads(generous.read_text())
    assert second["target"] == "url" and second["max_batch"] is None
    _check_levels(second)
    level = second["levels"][0]
    assert level["generation"]["goodput_rps"] == pytest.approx(level["throughput_rps"])
    assert level["generation"]["goodput_fraction"] == 1.0

    # stored, and read back through storage with the generation fields
    stored = load_report(gen_study.study)["serving"]
    back = {r["id"]: r for r in stored}
    assert back[run["id"]]["settings"]["scenario"] == "generate"
    for original in (run, second):
        for got, want in zip(back[original["id"]]["levels"], original["levels"], strict=True):
            assert got["generation"] == want["generation"]
            assert got["throughput_rps"] == pytest.approx(want["throughput_rps"])
    html = study_html(load_report(gen_study.study))
    assert "TTFT p50 ms" in html and "goodput req/s" in html and f'id="chart-serving-{cell}"' in html

    # a generation cell refuses batching options and a single-pass cell refuses the targets, each in one line
    capsys.readouterr()
    for args, expected in {("--max-batch", "4"): "the generative server runs one generation at a time",
                           ("--ttft-ms", "0"): "--ttft-ms is a goodput target in milliseconds: a number above 0",
                           ("--tpot-ms", "nan"): "--tpot-ms is a goodput target"}.items():
        code, _ = _serve_bench(*common, *args)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and err.count("\n") == 1, (args, err)


def _refusals(url: str) -> None:
    """The server's 422s for ignore_eos and stream_options, each reason one line."""
    base = {"prompt": "The sea is", "max_tokens": 2}
    bad = {
        "ignore_eos must be true or false, got \"yes\"": {**base, "ignore_eos": "yes"},
        'stream_options must be an object of booleans like {"include_usage": true}, got [true]': {
            **base, "stream": True, "stream_options": [True]},
        "stream_options.include_usage must be true or false, got 1": {
            **base, "stream": True, "stream_options": {"include_usage": 1}},
        "stream_options is only allowed with stream: true": {**base, "stream_options": {"include_usage": True}},
    }
    for reason, payload in bad.items():
        reply = httpx.post(f"{url}/v1/completions", json=payload, timeout=30)
        assert reply.status_code == 422, (reason, reply.text)
        assert reply.json()["detail"] == reason, reply.json()
    # a whole (not streamed) reply with ignore_eos: exactly max_tokens tokens
    reply = httpx.post(f"{url}/v1/completions", json={**base, "max_tokens": 5, "ignore_eos": True, "temperature": 0},
                       timeout=30)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5, reply.text
    # streamed: a chunk per token (some may carry "" while a character is split), then the finish and usage chunks;
    # other boolean stream_options (vLLM's continuous_usage_stats) are accepted
    reply = httpx.post(f"{url}/v1/completions", json={
        **base, "max_tokens": 5, "ignore_eos": True, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": False}}, timeout=30)
    events = [json.loads(line.removeprefix("data: ")) for line in reply.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert reply.status_code == 200, reply.text
    assert sum(c["finish_reason"] is None for e in events for c in e["choices"]) == 5
    assert events[-1]["usage"]["completion_tokens"] == 5 and events[-2]["choices"][0]["finish_reason"] == "length"


# --- pure functions --------------------------------------------------------------------------------------------


def test_request_metrics_from_chunk_times() -> None:
    # four tokens in three chunks: one chunk held two tokens (TPOT counts tokens, ITL counts chunks)
    m = gen.request_metrics(gen.StreamTiming(sent=10.0, chunks=(10.5, 10.6, 10.8), end=10.9, output_tokens=4))
    assert m.ttft_s == pytest.approx(0.5) and m.e2e_s == pytest.approx(0.9)
    assert m.itl_s == pytest.approx((0.1, 0.2)) and m.tpot_s == pytest.approx(0.4 / 3)
    one = gen.request_metrics(gen.StreamTiming(sent=0.0, chunks=(0.2,), end=0.25, output_tokens=1))
    assert one.tpot_s is None and one.itl_s == ()
    with pytest.raises(ValueError, match="no time to first token"):
        gen.request_metrics(gen.StreamTiming(sent=0.0, chunks=(), end=1.0, output_tokens=3))


def test_goodput_counts_requests_that_meet_every_given_target() -> None:
    fast = gen.RequestMetrics(ttft_s=0.1, tpot_s=0.01, itl_s=(), e2e_s=0.2, output_tokens=11)
    slow_first = gen.RequestMetrics(ttft_s=0.3, tpot_s=0.01, itl_s=(), e2e_s=0.4, output_tokens=11)
    slow_decode = gen.RequestMetrics(ttft_s=0.1, tpot_s=0.05, itl_s=(), e2e_s=0.6, output_tokens=11)
    single = gen.RequestMetrics(ttft_s=0.1, tpot_s=None, itl_s=(), e2e_s=0.1, output_tokens=1)
    every = [fast, slow_first, slow_decode, single]
    assert gen.goodput(every, None, None, 2.0) == (None, None)  # no target: not computed, not invented
    assert gen.goodput(every, 200.0, None, 2.0) == (1.5, 0.75)
    assert gen.goodput(every, None, 20.0, 2.0) == (1.5, 0.75)  # a single token has no TPOT to miss
    assert gen.goodput(every, 200.0, 20.0, 2.0) == (1.0, 0.5)
    assert gen.goodput(every, 0.001, None, 2.0) == (0.0, 0.0)
    assert gen.goodput([], 200.0, None, 2.0) == (0.0, None)
    # the fraction is of the level's requests: two more that failed met no target
    assert gen.goodput(every, 200.0, None, 2.0, attempted=6) == (1.5, 0.5)


def test_generation_summary_and_its_printed_row() -> None:
    timings = [gen.StreamTiming(0.0, (0.1, 0.2), 0.3, 3, 8), gen.StreamTiming(0.3, (0.5, 0.6, 0.7), 0.8, 3, 8)]
    g = gen.generation_summary(timings, span_s=2.0, ttft_ms=None, tpot_ms=None)
    assert g["output_tokens"] == 6 and g["output_tokens_per_s"] == pytest.approx(3.0)
    assert g["prompt_tokens"] == [8] and g["output_tokens_per_request"] == {"min": 3, "max": 3}
    assert g["ttft_ms"]["p50"] == pytest.approx(150.0) and g["tpot_ms"]["max"] == pytest.approx(150.0)
    assert sorted(g["itl_ms"].values())[0] == pytest.approx(100.0)
    assert g["goodput_rps"] is None and g["goodput_fraction"] is None
    level = {"mode": "closed", "concurrency": 2, "rate_rps": None, "requests": 2, "errors": 0, "throughput_rps": 1.0,
             "generation": g}
    row = gen.format_level(level)
    assert row.startswith("c=2") and row.rstrip().endswith("-"), row  # no goodput without targets
    g = gen.generation_summary(timings, span_s=2.0, ttft_ms=120.0, tpot_ms=None)
    assert gen.format_level({**level, "generation": g}).rstrip().endswith("0.50 req/s (50%)")
    assert g["per_request"]["ttft_ms"] == pytest.approx([100.0, 200.0]) and g["per_request_kept"] == 2


def test_a_long_level_keeps_its_first_requests_numbers_and_summarizes_every_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "PER_REQUEST_KEPT", 3)
    timings = [gen.StreamTiming(float(i), (i + 0.01 * (i + 1), i + 0.5), i + 0.6, 2) for i in range(10)]
    g = gen.generation_summary(timings, span_s=10.0, ttft_ms=1000.0, tpot_ms=None)
    assert g["per_request_kept"] == 3 and g["completed"] == 10 and g["output_tokens"] == 20
    assert all(len(column) == 3 for column in g["per_request"].values())
    assert g["ttft_ms"]["max"] == pytest.approx(100.0)  # the 10th request's TTFT: the percentiles see every one


def _sse_app(events: list[str], status: int = 200) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for data in events:
            await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def _stream(events: list[str], status: int = 200) -> tuple[str | None, list[gen.StreamTiming]]:
    async def run() -> tuple[str | None, list[gen.StreamTiming]]:
        sink: list[gen.StreamTiming] = []
        transport = httpx.ASGITransport(app=_sse_app(events, status))
        async with httpx.AsyncClient(transport=transport, base_url="http://double") as client:
            return await gen.stream_once(client, b"{}", sink), sink

    return asyncio.run(run())


def test_a_stream_counts_the_servers_tokens_not_its_chunks() -> None:
    chunk = lambda text, finish=None: json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}})
    # five tokens: an empty chunk (a token whose character is split) is a token's chunk, another server's chunk
    # holds two tokens; the finish chunk and the usage chunk are no token's
    error, sink = _stream([chunk(""), chunk("a"), chunk("bc"), chunk("d"), chunk("", "length"), usage, "[DONE]"])
    assert error is None and len(sink) == 1
    assert len(sink[0].chunks) == 4 and sink[0].output_tokens == 5 and sink[0].prompt_tokens == 8
    error, sink = _stream([chunk("a"), "[DONE]"])
    assert error is not None and "no usage" in error and not sink
    error, sink = _stream([json.dumps({"error": {"message": "RuntimeError: boom\n  at line 2"}}), "[DONE]"])
    assert error == "the stream ended with an error: RuntimeError: boom at line 2" and not sink  # one line
    error, sink = _stream([json.dumps({"error": "overloaded"}), "[DONE]"])
    assert error == "the stream ended with an error: overloaded" and not sink
    error, _ = _stream([], status=422)
    assert error is not None and error.startswith("HTTP 422")
