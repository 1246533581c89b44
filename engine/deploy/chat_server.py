"""Serve a Paretoscope generative bundle: an OpenAI-compatible text-generation server, `python serve.py --port 8000`.

POST /v1/chat/completions and POST /v1/completions (`stream: true` answers with server-sent events in OpenAI's chunk
shape, ending with `data: [DONE]`), GET /v1/models, GET /healthz (503 until the model is loaded), GET /metrics
(Prometheus). `ignore_eos: true` (vLLM's field) generates exactly max_tokens tokens; a stream asked with
`stream_options: {"include_usage": true}` ends with a chunk carrying `usage`, as OpenAI's does. Standalone: torch,
transformers, FastAPI, uvicorn and prometheus-client (torchao for an int8-weight-only variant); copied into each
generative FastAPI bundle as serve.py, it runs where Paretoscope is not installed. Generation runs on one worker
thread, one request at a time (others wait their turn); a streaming client that disconnects stops its generation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

HERE = Path(__file__).resolve().parent
MANIFEST = "bundle.json"
# Tests only: the model loads once this file exists, so /healthz answers 503 for as long as a test needs.
WAIT_FOR_ENV = "PARETOSCOPE_SERVE_LOAD_AFTER"
DEFAULT_MAX_TOKENS = 256  # when a request names none (capped by the positions the prompt leaves)
ROLES = ("system", "user", "assistant", "tool", "developer")
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class RequestError(ValueError):
    """A request the server cannot take: the reply is 422 with this one-line reason."""


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("chat_requests", "Generation requests by endpoint and HTTP status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("chat_errors", "Failed generation requests by kind (input, not_ready, generation)",
                              ["kind"], registry=self.registry)
        self.ttft = Histogram("chat_ttft_seconds", "Time to first token: request received (queueing included) to "
                              "its first generated token", buckets=TTFT_BUCKETS, registry=self.registry)
        self.tokens_per_s = Histogram("chat_tokens_per_second", "Decode rate of a generation: tokens after the "
                                      "first per second", buckets=RATE_BUCKETS, registry=self.registry)
        self.tokens = Counter("chat_generated_tokens", "Generated tokens", registry=self.registry)
        self.stopped = Counter("chat_stopped_generations", "Generations stopped because their client disconnected",
                               registry=self.registry)


# --- requests ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    """One request of either endpoint, checked: a prompt (completions) or messages (chat), and how to decode."""

    chat: bool
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    ignore_eos: bool = False  # generate exactly max_tokens tokens (vLLM's field): benchmarks need a fixed length
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def _number(payload: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{key} must be a number from {low:g} to {high:g}, got {json.dumps(value)}")
    return float(value)


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which the text ones are read."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise RequestError(f"{where}.content must be a string (or a list of text parts)")


def parse_request(payload: Any, chat: bool) -> GenerationRequest:
    """The request's fields, checked; RequestError names the first that is wrong."""
    if not isinstance(payload, dict):
        raise RequestError("the body must be a JSON object")
    messages: list[tuple[str, str]] = []
    prompt = ""
    if chat:
        raw = payload.get("messages")
        if raw is None:
            raise RequestError('messages is missing: give a list of {"role": ..., "content": ...} objects')
        if not isinstance(raw, list) or not raw:
            raise RequestError('messages must be a non-empty list of {"role": ..., "content": ...} objects')
        for i, message in enumerate(raw):
            if not isinstance(message, dict):
                raise RequestError(f"messages[{i}] must be an object with role and content")
            role = message.get("role")
            if role not in ROLES:
                raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
            messages.append((str(role), _content(message.get("content"), f"messages[{i}]")))
    else:
        raw = payload.get("prompt")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if raw is None:
            raise RequestError("prompt is missing: give the text to complete")
        if not isinstance(raw, str):
            raise RequestError("prompt must be a string (one prompt per request)")
        prompt = raw
    max_tokens = payload.get("max_completion_tokens" if chat and "max_completion_tokens" in payload
                             else "max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise RequestError(f"max_tokens must be a positive integer, got {json.dumps(max_tokens)}")
    if payload.get("n") not in (None, 1):
        raise RequestError("n must be 1: this server makes one choice per request")
    if payload.get("stop") not in (None, [], ""):
        raise RequestError("stop sequences are not supported by this server; generation stops at the model's "
                           "end-of-sequence token or max_tokens")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {json.dumps(stream)}")
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f"seed must be an integer, got {json.dumps(seed)}")
    ignore_eos = payload.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError(f"ignore_eos must be true or false, got {json.dumps(ignore_eos)}")
    return GenerationRequest(chat=chat, prompt=prompt, messages=tuple(messages), max_tokens=max_tokens,
                             temperature=_number(payload, "temperature", 1.0, 0.0, 2.0),
                             top_p=_number(payload, "top_p", 1.0, 1e-9, 1.0), seed=seed, stream=stream,
                             ignore_eos=ignore_eos, include_usage=_include_usage(payload.get("stream_options"),
                                                                                 stream))


def _include_usage(options: Any, stream: bool) -> bool:
    """stream_options, checked as OpenAI checks it: an object of booleans, with a stream; include_usage is the one
    this server acts on (others, like vLLM's continuous_usage_stats, are accepted and not acted on)."""
    if options is None:
        return False
    if not isinstance(options, dict) or not all(isinstance(v, bool) for k, v in options.items()
                                                if k != "include_usage"):
        raise RequestError(f'stream_options must be an object of booleans like {{"include_usage": true}}, got '
                           f"{json.dumps(options)[:100]}")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError(f"stream_options.include_usage must be true or false, got {json.dumps(include)}")
    if not stream:
        raise RequestError("stream_options is only allowed with stream: true")
    return include


# --- the model -----------------------------------------------------------------------------------------------------


def _quantize(model: Any, step: dict[str, Any] | None) -> Any:
    """The variant's quantization, applied again to the fp32 weights as the benchmark applied it (quantized torch
    modules are not saved as safetensors, so the bundle holds the fp32 folder and the recipe)."""
    import torch

    if not step:
        return model
    if step["id"] == "int8-dynamic":
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        qconfig = per_channel_dynamic_qconfig if step.get("per_channel", True) else default_dynamic_qconfig
        exclude = set(step.get("exclude") or ())
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        spec: dict[Any, Any] = ({n: qconfig for n in names if n not in exclude} if exclude
                                else {torch.nn.Linear: qconfig})
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)
    if step["id"] == "int8-weight-only":
        import torchao.quantization as ao

        ao.quantize_(model, ao.Int8WeightOnlyConfig())
        return model
    raise ValueError(f"bundle.json names a quantization this server does not know: {step['id']}")


class TextDelta:
    """Decodes generated ids as they come, into the text each adds (a byte-level token can end inside a character:
    its text waits for the token that completes it, so the pieces join into exactly the text of all the ids)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self) -> str:
        text = self.decode(self.ids)
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += delta
        return delta


class _Streamer:
    """What transformers' generate() calls with each new token (its first call carries the prompt: skipped)."""

    def __init__(self, push: Callable[[int], None]) -> None:
        self.push = push
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.push(int(token))

    def end(self) -> None:
        pass


class Generator:
    """The bundle's model and tokenizer, loaded as bundle.json says: dtype, quantization, device, threads."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        self.manifest = manifest
        threads = threads or manifest.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        model_dir = str(folder / manifest["model"])
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            manifest.get("dtype", "float32")]
        self.device = manifest.get("device", "cpu")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True,
                                                     use_safetensors=True, trust_remote_code=False)
        model = _quantize(model.eval(), manifest.get("quantization"))
        self.model = model.to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        config = self.model.config
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos) if self.eos else 0)
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids: a chat through the tokenizer's chat template when it has one, else a plain
        "role: content" transcript ending in "assistant:"."""
        if not request.chat:
            return list(self.tokenizer(request.prompt)["input_ids"])
        messages = [{"role": role, "content": content} for role, content in request.messages]
        if self.templated:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(transcript(request.messages))["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def max_new_tokens(self, request: GenerationRequest, prompt_len: int) -> int:
        """max_tokens, or the default; RequestError when the prompt and it exceed the model's positions."""
        room = self.max_positions - prompt_len if self.max_positions else None
        if room is not None and room < 1:
            raise RequestError(f"the prompt's {prompt_len} tokens fill the model's {self.max_positions} positions "
                               "(max_position_embeddings); shorten it")
        if request.max_tokens is None:
            return min(DEFAULT_MAX_TOKENS, room) if room is not None else DEFAULT_MAX_TOKENS
        if room is not None and request.max_tokens > room:
            raise RequestError(f"max_tokens {request.max_tokens} and the prompt's {prompt_len} tokens exceed the "
                               f"model's {self.max_positions} positions (max_position_embeddings); ask for at "
                               f"most {room}")
        return request.max_tokens

    def generate(self, ids: list[int], max_new_tokens: int, request: GenerationRequest, push: Callable[[int], None],
                 stop: threading.Event) -> None:
        """Generate on the calling (worker) thread, pushing each new token; `stop` set ends it at the next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        sampling: dict[str, Any] = ({"do_sample": False} if request.temperature == 0 else
                                    {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p})
        if request.seed is not None:
            torch.manual_seed(request.seed)
        if request.ignore_eos:  # end-of-sequence masked out until max_new_tokens: generation stops only there
            sampling["min_new_tokens"] = max_new_tokens
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor),
                                max_new_tokens=max_new_tokens, pad_token_id=self.pad_id, streamer=_Streamer(push),
                                stopping_criteria=StoppingCriteriaList([Stopped()]), **sampling)


def transcript(messages: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """A chat as plain text for a tokenizer without a chat template."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"


# --- one generation -------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What a request's generation produced, filled in as it streams."""

    prompt_tokens: int
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None

    def finish_reason(self, eos: set[int]) -> str:
        return "stop" if self.tokens and self.tokens[-1] in eos else "length"

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.tokens),
                "total_tokens": self.prompt_tokens + len(self.tokens)}


_DONE = -1


def create_app(folder: str | Path = HERE, *, threads: int | None = None) -> FastAPI:
    """The bundle's app. The model loads in the background at start-up; generation runs on one worker thread, one
    request at a time, never on the event loop."""
    folder = Path(folder)
    metrics = Metrics()
    state: dict[str, Any] = {"model": None, "error": None}
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
    turn = asyncio.Lock()  # one generation at a time; the others wait here in arrival order

    async def load() -> None:
        gate = os.environ.get(WAIT_FOR_ENV)
        while gate and not Path(gate).exists():
            await asyncio.sleep(0.05)
        try:
            model = await asyncio.get_running_loop().run_in_executor(executor, Generator, folder, threads)
        except Exception as exc:  # noqa: BLE001 - /healthz reports why the model did not load
            state["error"] = _one_line(exc)
            print(f"error: the model did not load: {state['error']}", file=sys.stderr, flush=True)
            return
        state["model"] = model
        print(f"ready: {model.manifest.get('variant', 'the model')} loaded on {model.device}"
              + ("" if model.templated else "; the tokenizer has no chat template: chats are sent as a "
                 "'role: content' transcript"), flush=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            loading.cancel()
            executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="Paretoscope generation server", lifespan=lifespan)

    async def tokens(model: Generator, ids: list[int], request: GenerationRequest, run: Generation,
                     started: float) -> AsyncIterator[str]:
        """The text each generated token adds, as generate() makes it on the worker thread."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int] = asyncio.Queue()
        stop = threading.Event()
        delta = TextDelta(model.decode)

        def push(token: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, token)

        def work() -> None:
            try:
                model.generate(ids, run.max_new_tokens, request, push, stop)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        async with turn:
            job = loop.run_in_executor(executor, work)
            try:
                while (token := await queue.get()) != _DONE:
                    now = time.perf_counter()
                    if run.first_at is None:
                        run.first_at = now
                        metrics.ttft.observe(now - started)
                    run.last_at = now
                    run.tokens.append(token)
                    metrics.tokens.inc()
                    # a chunk per token, as OpenAI's and vLLM's servers send (its text is "" while a character is
                    # split across tokens): a client times every token, the first one included
                    yield delta.add(token)
                await job  # generate()'s own error, if it raised
                if text := delta.finish():
                    yield text
                if len(run.tokens) > 1 and run.first_at is not None and run.last_at is not None \
                        and run.last_at > run.first_at:
                    metrics.tokens_per_s.observe((len(run.tokens) - 1) / (run.last_at - run.first_at))
            finally:
                if not job.done():  # the client went away (the response was cancelled): stop its generation
                    stop.set()
                    metrics.stopped.inc()

    def prepare(payload: Any, chat: bool) -> tuple[Generator, GenerationRequest, list[int], Generation]:
        model: Generator | None = state["model"]
        if model is None:
            raise _NotReady(state["error"] or "the model is loading; poll GET /healthz")
        request = parse_request(payload, chat)
        ids = model.prompt_ids(request)
        return model, request, ids, Generation(len(ids), model.max_new_tokens(request, len(ids)))

    async def endpoint(raw: Request, chat: bool) -> Response:
        started = time.perf_counter()
        name = "chat" if chat else "completions"
        try:
            try:
                payload = await raw.json()
            except ValueError:
                raise RequestError("the body is not JSON") from None
            model, request, ids, run = prepare(payload, chat)
        except RequestError as exc:
            return _refuse(metrics, name, "input", 422, str(exc))
        except _NotReady as exc:
            return _refuse(metrics, name, "not_ready", 503, str(exc))
        reply = _Reply(chat, model.manifest.get("served_model_name", "model"))
        if request.stream:
            metrics.requests.labels(name, "200").inc()
            return StreamingResponse(_sse(reply, tokens(model, ids, request, run, started), run, model, metrics,
                                          request.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text = "".join([piece async for piece in tokens(model, ids, request, run, started)])
        except Exception as exc:  # noqa: BLE001 - generate()'s failure is the reply, the server goes on
            return _refuse(metrics, name, "generation", 500, _one_line(exc))
        metrics.requests.labels(name, "200").inc()
        return JSONResponse(reply.whole(text, run.finish_reason(model.eos), run.usage()))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await endpoint(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await endpoint(request, chat=False)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        model: Generator | None = state["model"]
        name = model.manifest.get("served_model_name", "model") if model is not None else _name_of(folder)
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                         "owned_by": "paretoscope"}]})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if state["model"] is not None:
            return JSONResponse({"status": "ready"})
        if state["error"] is not None:
            return JSONResponse({"status": "failed", "detail": state["error"]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _NotReady(Exception):
    pass


def _name_of(folder: Path) -> str:
    try:
        return str(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("served_model_name", "model"))
    except (OSError, ValueError):
        return "model"


def _refuse(metrics: Metrics, endpoint: str, kind: str, code: int, reason: str) -> JSONResponse:
    metrics.errors.labels(kind).inc()
    metrics.requests.labels(endpoint, str(code)).inc()
    kinds = {422: "invalid_request_error", 503: "server_not_ready", 500: "server_error"}
    # `detail` as FastAPI's own errors say it; `error` as OpenAI's clients read it
    return JSONResponse({"detail": reason, "error": {"message": reason, "type": kinds[code], "param": None,
                                                     "code": None}}, status_code=code)


class _Reply:
    """OpenAI's response shapes for one request: chat.completion(.chunk) or text_completion."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        return {**self._head("text_completion"), "usage": usage,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text is not None else {})
            return {**self._head("chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return {**self._head("text_completion"),
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _sse(reply: _Reply, pieces: AsyncIterator[str], run: Generation, model: Generator,
               metrics: Metrics, include_usage: bool = False) -> AsyncIterator[bytes]:
    """Server-sent events: a chunk per piece of text, a last chunk with the finish reason, then [DONE]."""
    if reply.chat:
        yield _event(reply.chunk(None, first=True))
    try:
        async for text in pieces:
            yield _event(reply.chunk(text))
    except Exception as exc:  # noqa: BLE001 - the stream has begun: its error is its last event
        metrics.errors.labels("generation").inc()
        yield _event({"error": {"message": _one_line(exc), "type": "server_error", "param": None, "code": None}})
    else:
        yield _event(reply.chunk(None, finish=run.finish_reason(model.eos)))
        if include_usage:  # OpenAI's shape: no choices, the request's usage
            yield _event({**reply.chunk(None), "choices": [], "usage": run.usage()})
    yield b"data: [DONE]\n\n"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve this Paretoscope bundle's text-generation model over an "
                                                 "OpenAI-compatible HTTP API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's intra-op threads (default: what the cell was measured with)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    app = create_app(HERE, threads=args.threads)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found: with this
    # one the process ends with 0 after that clean shutdown
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
