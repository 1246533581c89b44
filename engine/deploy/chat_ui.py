"""A Gradio chat with a generative bundle's server: `python chat.py --server http://127.0.0.1:8000 [--port 7860]`.

It sends the conversation to the server's streaming `POST /v1/chat/completions` and shows the reply as it grows.
Standalone (gradio and httpx); copied into each generative FastAPI bundle as chat.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

# no usage reports to Gradio's servers from a bundle that may run where nothing outside is reachable
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
TIMEOUT_S = 600.0  # a long reply on a slow CPU streams for minutes


def _text(content: Any) -> str:
    """A history message's text (Gradio may hold a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def stream_reply(server: str, message: str, history: list[dict[str, Any]], max_tokens: int,
                 temperature: float) -> Iterator[str]:
    """The assistant's reply so far, after each piece the server streams."""
    messages = [{"role": m["role"], "content": _text(m["content"])} for m in history
                if m.get("role") in ("user", "assistant", "system")]
    messages.append({"role": "user", "content": message})
    body = {"messages": messages, "max_tokens": int(max_tokens), "temperature": float(temperature), "stream": True}
    reply = ""
    with httpx.stream("POST", f"{server.rstrip('/')}/v1/chat/completions", json=body, timeout=TIMEOUT_S) as response:
        if response.status_code != 200:
            response.read()
            try:
                detail = response.json().get("detail") or response.text
            except ValueError:
                detail = response.text
            raise gr.Error(f"the server answered {response.status_code}: {detail}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise gr.Error(f"the server stopped: {chunk['error'].get('message')}")
            reply += chunk["choices"][0]["delta"].get("content") or ""
            yield reply


def build(server: str = DEFAULT_SERVER, title: str | None = None) -> gr.ChatInterface:
    """The chat app: a ChatInterface streaming from `server`, with max tokens and temperature under the box."""

    def respond(message: str, history: list[dict[str, Any]], max_tokens: int, temperature: float) -> Iterator[str]:
        yield from stream_reply(server, message, history, max_tokens, temperature)

    return gr.ChatInterface(
        respond, title=title or "Paretoscope chat", description=f"Talking to {server}",
        additional_inputs=[gr.Slider(1, 4096, value=128, step=1, label="max tokens"),
                           gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0: greedy)")],
        api_name="chat", analytics_enabled=False)  # a client calls it as predict(message, ..., api_name="/chat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Gradio chat with this bundle's server (python serve.py).")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"the server's URL (default {DEFAULT_SERVER})")
    parser.add_argument("--host", default="127.0.0.1", help="address the chat listens on (0.0.0.0 for every one)")
    parser.add_argument("--port", type=int, default=7860, help="the chat's port (default 7860)")
    args = parser.parse_args(argv)
    build(args.server).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
