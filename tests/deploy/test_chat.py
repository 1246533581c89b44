"""The generative FastAPI bundle: a tiny Llama's generation study deployed through the CLI, its OpenAI-compatible
server run standalone (streaming and not, both endpoints, one-line refusals, metrics) and its Gradio chat."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.__main__ import main
from engine.deploy.bundle import load_deploy_cell
from engine.deploy.write import write_bundle
from tests.deploy.conftest import GenStudy
from tests.deploy.test_deploy import DEADLINE_S, _free_port, _health, _wait

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the sea."}]
# the tiny tokenizer has no chat template: the server sends the transcript, as its README says
TRANSCRIPT = "system: Be brief.\nuser: Tell me about the sea.\nassistant:"
UI_TRANSCRIPT = "user: Tell me about the sea.\nassistant:"  # the Gradio chat's first turn: no system message
PROMPT = "The sea is"
MAX_TOKENS = 10


@pytest.fixture
def data_dir(gen_study: GenStudy, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Overrides the per-test empty data folder: these tests read the generation study's."""
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(gen_study.folder))
    monkeypatch.setenv("PARETOSCOPE_NO_AUTO_WORKER", "1")
    return gen_study.folder


def _greedy(lm: Any, tokenizer: Any, text: str, max_new: int) -> tuple[str, int, int]:
    """transformers' own greedy generate() in this process: (text, prompt tokens, new tokens)."""
    import torch

    ids = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        out = lm.generate(**ids, max_new_tokens=max_new, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), ids["input_ids"].shape[1], len(new)


def _sse(response: httpx.Response) -> list[Any]:
    """The events of a streamed reply, in order ("[DONE]" as the string)."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line
    return events


def test_generative_bundle_streams_like_generate(gen_study: GenStudy, data_dir: Path, tmp_path: Path) -> None:
    from engine.artifacts import Artifact
    from engine.generation.cell import load_generator
    from engine.optimizations import parse_chain
    from storage.db import session
    from storage.queue import get_study

    # the baseline cell as an int8-dynamic one (measuring that variant here would double the study's time): the
    # bundle holds the fp32 folder and the server quantizes it again, as the benchmark did
    baseline = load_deploy_cell(gen_study.study, gen_study.cells[("baseline", "torch")])
    deployed = replace(baseline, cell=replace(baseline.cell, variant="int8-dynamic", variant_path=None))
    out = tmp_path / "bundle"
    notes = write_bundle(deployed, "fastapi", out)
    assert any("applies int8-dynamic again at load time" in n for n in notes)
    assert any("'role: content' transcript" in n for n in notes)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"serve.py", "chat.py", "bundle.json", "requirements.txt", "Dockerfile", "README.md",
            "model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= files
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["quantization"] == {"id": "int8-dynamic", "per_channel": True, "exclude": []}
    for name in ("serve.py", "chat.py", "bundle.json", "README.md"):
        text = (out / name).read_text()
        assert str(data_dir) not in text and "from engine" not in text and "import engine" not in text, name
    requirements = (out / "requirements.txt").read_text()
    assert "transformers==" in requirements and "gradio" in requirements and "torchao" not in requirements

    # the engine's own variant, as the cell measured it: int8-dynamic applied to the fp32 folder
    with session(write=False) as s:
        study = get_study(s, gen_study.study)
        assert study is not None
        model = Artifact.from_json(study.model.artifact)
    lm, tokenizer = load_generator(model, parse_chain("int8-dynamic"))
    chat_text, chat_prompt, _ = _greedy(lm, tokenizer, TRANSCRIPT, MAX_TOKENS)
    completion_text, prompt_tokens, new_tokens = _greedy(lm, tokenizer, PROMPT, MAX_TOKENS)
    ui_text, _, _ = _greedy(lm, tokenizer, UI_TRANSCRIPT, MAX_TOKENS)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # standalone: with `engine` unimportable, as where the bundle runs
    launcher = ("import runpy, sys; sys.modules['engine'] = None; sys.path.insert(0, '.'); "
                "sys.argv = ['serve.py', *sys.argv[1:]]; runpy.run_path('serve.py', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", launcher, "--port", str(port), "--threads", "1"], cwd=out,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: True if _health(url) == 200 else None, "the model to load")
        body = {"model": manifest["served_model_name"], "messages": CHAT, "max_tokens": MAX_TOKENS,
                "temperature": 0}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=DEADLINE_S) as streamed:
            assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
            events = _sse(streamed)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
        # token by token, not one piece at the end: a chunk per token ("" while a character is split across tokens)
        assert len(pieces) > 1 and sum(map(bool, pieces)) > 1 and all(isinstance(p, str) for p in pieces), pieces
        assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}

        whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=DEADLINE_S).json()
        assert whole["object"] == "chat.completion"
        assert whole["choices"][0]["message"] == {"role": "assistant", "content": "".join(pieces)}
        assert "".join(pieces) == chat_text
        assert whole["usage"] == {"prompt_tokens": chat_prompt, "completion_tokens": MAX_TOKENS,
                                  "total_tokens": chat_prompt + MAX_TOKENS}

        completion = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                                               "temperature": 0}, timeout=DEADLINE_S).json()
        assert completion["object"] == "text_completion"
        assert completion["choices"][0]["text"] == completion_text
        assert completion["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                                       "total_tokens": prompt_tokens + new_tokens}
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == [manifest["served_model_name"]]

        positions = 64 - chat_prompt
        bad = {
            "messages is missing": ("chat", {"max_tokens": 4}),
            "messages must be a non-empty list": ("chat", {"messages": []}),
            "messages[0].role must be one of": ("chat", {"messages": [{"role": "robot", "content": "hi"}]}),
            "max_tokens must be a positive integer, got 0": ("chat", {"messages": CHAT, "max_tokens": 0}),
            "max_tokens must be a positive integer, got -3": ("completions", {"prompt": PROMPT, "max_tokens": -3}),
            f"max_tokens 1000 and the prompt's {chat_prompt} tokens exceed the model's 64 positions "
            f"(max_position_embeddings); ask for at most {positions}": ("chat", {"messages": CHAT,
                                                                                 "max_tokens": 1000}),
            "prompt is missing": ("completions", {"max_tokens": 4}),
            "temperature must be a number from 0 to 2": ("completions", {"prompt": PROMPT, "temperature": -1}),
        }
        for reason, (endpoint, payload) in bad.items():
            path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
            reply = httpx.post(f"{url}{path}", json=payload, timeout=10)
            assert reply.status_code == 422, (reason, reply.text)
            detail = reply.json()["detail"]
            assert detail.startswith(reason) and "\n" not in detail, (reason, detail)
            assert reply.json()["error"]["message"] == detail

        _chat_ui_replies(out, url, ui_text)

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'chat_requests_total{code="200",endpoint="chat"} 3.0' in metrics  # streamed, whole, the Gradio chat
        assert 'chat_requests_total{code="200",endpoint="completions"} 1.0' in metrics
        assert f'chat_errors_total{{kind="input"}} {float(len(bad))}' in metrics
        assert "chat_ttft_seconds_count 4.0" in metrics and "chat_tokens_per_second_count 4.0" in metrics
        proc.terminate()
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read() if proc.stdout else ""
    assert "'role: content' transcript" in log and "Application shutdown complete" in log, log


def _chat_ui_replies(bundle: Path, url: str, expected: str) -> None:
    """The bundle's chat.py, imported as a module: its Gradio app runs, and a request through gradio_client gets
    the server's greedy reply."""
    from gradio_client import Client

    spec = importlib.util.spec_from_file_location("bundle_chat", bundle / "chat.py")
    assert spec is not None and spec.loader is not None
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    demo = chat.build(url)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        reply = client.predict(CHAT[1]["content"], MAX_TOKENS, 0.0, api_name="/chat")
        client.close()
    finally:
        demo.close()
    assert reply == expected


def test_deploy_refuses_what_the_generative_bundle_cannot_serve(gen_study: GenStudy, data_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    baseline = gen_study.cells[("baseline", "torch")]
    onnx = gen_study.cells[("baseline", "onnxruntime")]
    cases = {
        ("--cell", str(onnx), "--target", "fastapi"): "is n/a (onnxruntime-genai: ",
        ("--cell", str(baseline), "--target", "triton"): "is a generation cell: its bundle is the streaming",
    }
    for args, message in cases.items():
        assert main(["deploy", str(gen_study.study), *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert args[-1] == "triton" or err.rstrip().endswith(f"--cell {baseline}"), err
    # no --cell: the servable cell with the most decode tokens/s whose next-token agreement is at least 0.99
    assert main(["deploy", str(gen_study.study), "--target", "fastapi", "--out", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert manifest["recommended"] is True and manifest["measured_runtime"] == "torch"


def test_a_generation_cell_on_another_runtime_names_the_torch_cell() -> None:
    from engine.deploy.generative_cells import check_servable
    from engine.errors import UserError
    from engine.results import CellResult, Status

    generation = {"generation": {"decode_tokens_per_s": 10.0, "next_token_agreement": 1.0}}
    torch_cell = CellResult("baseline", "torch", 1, Status.OK, cell=0, extra=generation)
    other = CellResult("baseline", "onnxruntime-genai", 1, Status.OK, cell=1, extra=generation)
    pruned = CellResult("prune-structured:0.5", "torch", 1, Status.OK, cell=2, extra=generation)
    with pytest.raises(UserError, match=r"^cell 1 generates on onnxruntime-genai; the generative bundle serves "
                                        r"transformers' generate\(\) on torch or torch-cuda: deploy cell 0 instead "
                                        r"\(baseline on torch, batch 1\): --cell 0$"):
        check_servable([torch_cell, other, pruned], other, "cell 1")
    with pytest.raises(UserError, match=r"prune-structured:0.5 changes the weights.*--cell 0$"):
        check_servable([torch_cell, other, pruned], pruned, "cell 2")
