"""The FastAPI bundle of a generation cell: the model's Hugging Face folder, an OpenAI-compatible streaming server
(serve.py, from chat_server.py) and a Gradio chat (chat.py, from chat_ui.py).

The folder is the uploaded fp32 one; a quantized variant's recipe is in bundle.json and the server applies it again
at load time with torch / torchao calls (quantized torch modules are not saved as safetensors). Variants whose
weights differ from the folder's (pruning, distillation) or that only a CUDA build makes (int4) are refused in one
line naming the baseline cell.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from engine.deploy.bundle import DeployCell, pinned, standalone_source
from engine.deploy.generative_cells import DTYPES
from engine.errors import UserError
from engine.results import CellResult

PORT = 8000
CHAT_PORT = 7860
# what the copied server and chat may import besides the standard library and served_model's usual set
_SERVER_IMPORTS = frozenset({"transformers", "torchao"})
_CHAT_IMPORTS = frozenset({"gradio", "httpx"})
SERVER_REQUIREMENTS = ("fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20")
CHAT_REQUIREMENTS = ("gradio>=5", "httpx>=0.27")
_QUANTIZED = ("int8-dynamic", "int8-weight-only")
# the tokenizer and generation files transformers reads beside config.json and the weights
_MODEL_FILES = re.compile(r"(config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|"
                          r"tokenizer.*|special_tokens_map\.json|vocab\.(json|txt)|merges\.txt|.*\.model|"
                          r"chat_template\.(jinja|json)|added_tokens\.json)")


def model_folder(deployed: DeployCell) -> Path:
    """The study's uploaded Hugging Face folder in the data folder; UserError when it is gone."""
    from engine.artifacts import Artifact
    from storage.db import session
    from storage.queue import get_study

    with session(write=False) as s:
        study = get_study(s, deployed.study_id)
        artifact = Artifact.from_json(study.model.artifact) if study is not None else None
    if artifact is None or not (artifact.folder / "config.json").is_file():
        raise UserError(f"the model folder of {deployed.label} is no longer in the data folder; upload the model "
                        "and run the study again, then deploy")
    return artifact.folder


def _manifest(deployed: DeployCell, config: dict[str, Any]) -> dict[str, Any]:
    from engine.optimizations import parse_chain

    steps = parse_chain(deployed.cell.variant).steps
    step = steps[0] if steps else None
    quantization: dict[str, Any] | None = None
    if step is not None and step.id in _QUANTIZED:
        quantization = {"id": step.id}
        if step.id == "int8-dynamic":
            # the engine quantizes a wrapper that holds the transformers model as `model`: its names start "model."
            exclude = [name.removeprefix("model.") for name in getattr(step.config, "exclude", ())]
            quantization.update(per_channel=bool(getattr(step.config, "per_channel", True)), exclude=exclude)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(deployed.model_name).stem}-{deployed.cell.variant}").strip("-")
    return {**deployed.provenance("fastapi"), "kind": "generation", "runtime": "transformers", "model": "model",
            "dtype": DTYPES[step.id if step else ""], "quantization": quantization,
            "device": "cuda" if deployed.gpu else "cpu", "threads": deployed.threads, "served_model_name": name,
            "max_position_embeddings": config.get("max_position_embeddings"),
            "measured": _measured(deployed.cell)}


def _measured(cell: CellResult) -> dict[str, Any]:
    g = cell.extra.get("generation") or {}
    return {key: g.get(key) for key in ("prompt_len", "new_tokens", "ttft_ms", "tpot_ms", "decode_tokens_per_s",
                                        "perplexity", "next_token_agreement")}


def write(deployed: DeployCell, folder: Path) -> list[str]:
    """Lay out the generative bundle in `folder`; returns the notes to show."""
    source = model_folder(deployed)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    (folder / "model").mkdir()
    for path in sorted(source.iterdir()):
        if path.is_file() and _MODEL_FILES.fullmatch(path.name):
            shutil.copyfile(path, folder / "model" / path.name)
    manifest = _manifest(deployed, config)
    (folder / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (folder / "serve.py").write_text(standalone_source("chat_server", allowed=_SERVER_IMPORTS), encoding="utf-8")
    (folder / "chat.py").write_text(standalone_source("chat_ui", allowed=_CHAT_IMPORTS), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join(requirements(deployed, manifest)) + "\n", encoding="utf-8")
    (folder / "Dockerfile").write_text(dockerfile(deployed), encoding="utf-8")
    notes = serving_notes(deployed, manifest, templated=_has_chat_template(source))
    (folder / "README.md").write_text(readme(deployed, manifest, notes), encoding="utf-8")
    return notes


def _has_chat_template(source: Path) -> bool:
    if any((source / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        return bool(json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def requirements(deployed: DeployCell, manifest: dict[str, Any]) -> list[str]:
    torch = pinned("torch", deployed.libraries)
    lines = [torch] if deployed.gpu else ["--extra-index-url https://download.pytorch.org/whl/cpu", torch]
    lines += [pinned("transformers", deployed.libraries), pinned("tokenizers", deployed.libraries),
              pinned("safetensors", deployed.libraries)]
    if (manifest.get("quantization") or {}).get("id") == "int8-weight-only":
        lines.append(pinned("torchao", deployed.libraries))
    lines += [*SERVER_REQUIREMENTS, "# chat.py (the Gradio chat) only", *CHAT_REQUIREMENTS]
    return lines


def serving_notes(deployed: DeployCell, manifest: dict[str, Any], templated: bool) -> list[str]:
    notes = []
    quantization = manifest.get("quantization")
    if quantization:
        call = ("torch.ao.quantization.quantize_dynamic" if quantization["id"] == "int8-dynamic"
                else "torchao.quantization.quantize_")
        notes.append(f"model/ holds the fp32 weights; serve.py applies {quantization['id']} again at load time "
                     f"({call}), as the benchmark did")
    if manifest["dtype"] != "float32":
        notes.append(f"serve.py loads the weights in {manifest['dtype']} on the GPU, as the cell ran")
    if not templated:
        notes.append("the tokenizer has no chat template: /v1/chat/completions sends a chat as a plain "
                     "'role: content' transcript ending in 'assistant:'")
    if deployed.gpu:
        notes.append("the cell ran on a GPU: run the server where an NVIDIA driver and CUDA are present "
                     "(docker run --gpus all ...)")
    return notes


def dockerfile(deployed: DeployCell) -> str:
    gpu = ("# the cell ran on a GPU: use a CUDA base image and docker run --gpus all\n" if deployed.gpu else "")
    return (f"{gpu}FROM python:3.11-slim\n"
            "WORKDIR /app\n"
            "COPY requirements.txt .\n"
            "RUN pip install --no-cache-dir -r requirements.txt\n"
            "COPY . .\n"
            "ENV HF_HUB_OFFLINE=1\n"
            f"EXPOSE {PORT}\n"
            "# SIGTERM (docker stop) finishes the requests in flight, then exits 0\n"
            f'CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "{PORT}"]\n')


def readme(deployed: DeployCell, manifest: dict[str, Any], notes: list[str]) -> str:
    cell = deployed.cell
    m = manifest["measured"]
    rate = m.get("decode_tokens_per_s")
    ttft = (m.get("ttft_ms") or {}).get("p50")
    measured = (f"TTFT p50 {ttft:.1f} ms, {rate:.1f} decode tokens/s at batch {cell.batch_size}, prompt "
                f"{m.get('prompt_len')} tokens" if isinstance(rate, float) and isinstance(ttft, float)
                else "no generation timing recorded")
    name = manifest["served_model_name"]
    why = "the recommended cell" if deployed.recommended else "the chosen cell"
    return f"""# {deployed.model_name}: {cell.variant} generating on {cell.runtime}

An OpenAI-compatible text-generation server for {why} of Paretoscope study {deployed.study_id}
({deployed.study_name}): cell {cell.cell}, **{cell.variant}** measured on **{cell.runtime}** ({measured}).
{"".join(f"{chr(10)}> Note: {n}.{chr(10)}" for n in notes)}
## Run

```bash
pip install -r requirements.txt
python serve.py --port {PORT}                                   # add --host 0.0.0.0 to listen on every interface
python chat.py --server http://127.0.0.1:{PORT} --port {CHAT_PORT}      # a Gradio chat with it, in a browser
```

or with Docker: `docker build -t {name.lower()} . && docker run -p {PORT}:{PORT} {name.lower()}`.

## Call

```bash
curl -s localhost:{PORT}/healthz                     # 503 while the model loads, 200 once ready
curl -s localhost:{PORT}/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 32, "temperature": 0}}'
curl -sN localhost:{PORT}/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 32, "stream": true}}'
curl -s localhost:{PORT}/v1/completions -H 'Content-Type: application/json' \\
  -d '{{"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}}'
curl -s localhost:{PORT}/v1/models
curl -s localhost:{PORT}/metrics                     # Prometheus: requests, errors, TTFT, tokens/s
```

OpenAI's clients work with `base_url="http://localhost:{PORT}/v1"` and model `{name}`. Requests take `max_tokens`
(default {256}, at most what the model's {manifest.get("max_position_embeddings") or "?"} positions leave after the
prompt), `temperature` (0: greedy; default 1), `top_p`, `seed`, `ignore_eos` (`true`: exactly `max_tokens` tokens,
as vLLM's field) and `stream`; with `stream: true` the reply is server-sent events, `data: {{chunk}}` in OpenAI's
`chat.completion.chunk` shape (`choices[0].delta.content`) and a last `data: [DONE]`; `stream_options:
{{"include_usage": true}}` adds a chunk with the request's `usage` before it. A request the server cannot take (no
messages or prompt, max_tokens not positive or over the positions, `n` other than 1, stop sequences, a field of the
wrong type) gets 422 with a one-line reason in `detail` (and `error.message`).
Generation runs on one worker thread, one request at a time; others wait their turn. A streaming client that
disconnects stops its generation. SIGTERM stops the server cleanly.

## Files

- `serve.py`: the server (torch, transformers, FastAPI, uvicorn, prometheus-client)
- `chat.py`: the Gradio chat (gradio, httpx), a client of the server's streaming endpoint
- `model/`: the model's Hugging Face folder (config, safetensors weights, tokenizer)
- `bundle.json`: how the model loads (dtype, quantization, device) and which cell it is
"""
