"""The FastAPI bundle: serve.py and served_model.py, the model's files, requirements, a Dockerfile and a README."""

from __future__ import annotations

import json
from pathlib import Path

from engine.deploy.bundle import (
    DeployCell,
    example_inputs,
    runtime_requirements,
    standalone_source,
    write_serving_files,
)

PORT = 8000
# lower bounds of what serve.py uses: FastAPI's lifespan, uvicorn's graceful SIGTERM, prometheus-client's registry;
# httptools and uvloop, which uvicorn uses when installed, cut its CPU per request by about a third
SERVER_REQUIREMENTS = ("numpy>=1.24", "fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20", "httptools>=0.6",
                       'uvloop>=0.19; sys_platform != "win32"')


def write(deployed: DeployCell, folder: Path) -> list[str]:
    write_serving_files(deployed, folder, "fastapi")
    (folder / "serve.py").write_text(standalone_source("serve"), encoding="utf-8")
    (folder / "requirements.txt").write_text(
        "\n".join([*runtime_requirements(deployed), *SERVER_REQUIREMENTS]) + "\n", encoding="utf-8")
    (folder / "example.json").write_text(json.dumps(example_inputs(deployed.spec)) + "\n", encoding="utf-8")
    (folder / "Dockerfile").write_text(dockerfile(deployed), encoding="utf-8")
    notes = serving_notes(deployed)
    (folder / "README.md").write_text(readme(deployed, notes), encoding="utf-8")
    return notes


def serving_notes(deployed: DeployCell) -> list[str]:
    """What differs between the measured cell and the server, said once in the README and by the CLI."""
    notes = []
    if deployed.cell.runtime == "tensorrt":
        notes.append("the cell was measured on a TensorRT engine built for its GPU; this server runs the same ONNX "
                     "through ONNX Runtime's TensorRT provider, which builds its own engine on first load")
    if deployed.gpu:
        notes.append("the cell ran on a GPU: run the server where an NVIDIA driver and CUDA are present (docker run "
                     "--gpus all ...); ONNX Runtime says so on start-up when its GPU provider does not start")
    return notes


def dockerfile(deployed: DeployCell) -> str:
    base = "python:3.11-slim"
    gpu = ("# the cell ran on a GPU: use a CUDA base image with cuDNN matching the runtime, and docker run --gpus all\n"
           if deployed.gpu else "")
    return (f"{gpu}FROM {base}\n"
            "WORKDIR /app\n"
            "COPY requirements.txt .\n"
            "RUN pip install --no-cache-dir -r requirements.txt\n"
            "COPY . .\n"
            f"EXPOSE {PORT}\n"
            "# SIGTERM (docker stop) finishes the requests in flight, then exits 0\n"
            f'CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "{PORT}"]\n')


def readme(deployed: DeployCell, notes: list[str]) -> str:
    cell = deployed.cell
    latency = cell.latency_ms
    measured = (f"p50 {latency.p50:.3f} ms, p99 {latency.p99:.3f} ms at batch {cell.batch_size}"
                if latency and latency.p50 is not None and latency.p99 is not None else "no latency recorded")
    inputs = "\n".join(f"- `{t.name}`: {t.dtype}[{', '.join(str(d) for d in t.shape)}]" for t in deployed.spec.inputs)
    outputs = "\n".join(f"- `{t.name}`: {t.dtype}[{', '.join(str(d) for d in t.shape)}]"
                        for t in deployed.spec.outputs) or "- named as the runtime names them"
    example = json.dumps(example_inputs(deployed.spec))
    curl_body = f"-d '{example}'" if len(example) <= 400 else "-d @example.json"
    why = "the recommended cell" if deployed.recommended else "the chosen cell"
    return f"""# {deployed.model_name}: {cell.variant} on {deployed.served_runtime}

A FastAPI server for {why} of Paretoscope study {deployed.study_id} ({deployed.study_name}): cell {cell.cell},
**{cell.variant}** measured on **{cell.runtime}** ({measured}).
{"".join(f"{chr(10)}> Note: {n}.{chr(10)}" for n in notes)}
## Run

```bash
pip install -r requirements.txt
python serve.py --port {PORT}                                   # add --host 0.0.0.0 to listen on every interface
python serve.py --port {PORT} --max-batch 8 --max-delay-ms 5    # dynamic batching: merge concurrent requests
```

or with Docker: `docker build -t {_image_name(deployed)} . && docker run -p {PORT}:{PORT} {_image_name(deployed)}`.

## Call

```bash
curl -s localhost:{PORT}/healthz                     # 503 while the model loads, 200 once ready
curl -s localhost:{PORT}/v1/predict -H 'Content-Type: application/json' {curl_body}
curl -s localhost:{PORT}/metrics                     # Prometheus: requests, errors, latency, batch sizes
```

`POST /v1/predict` takes `{{"inputs": {{NAME: nested lists}}}}` and returns `{{"outputs": {{NAME: nested lists}}}}`.
Inputs (`spec.json`; a name in a shape is a dynamic axis, the first one the batch):

{inputs}

Outputs:

{outputs}

A request whose inputs the model cannot take (a wrong or missing name, a dtype, a rank or a fixed size that differs,
a dynamic axis of two sizes) gets 422 with a one-line reason in `detail`. Inference runs on one worker thread, one
call at a time; with `--max-batch` concurrent requests of one shape are merged into one call where axis 0 is a
batch of independent samples (the start-up log says when it is not, and requests then run one at a time). A token id
outside the vocabulary gets 422; a body over `--max-body-mb` (default 64) gets 413. `--threads` sets the
runtime's threads (default {deployed.threads or "the runtime's"}, as measured); `--access-log` logs a line per request
(`/metrics` counts them either way). SIGTERM stops the server cleanly.

## Files

- `serve.py`, `served_model.py`: the server (FastAPI, uvicorn, prometheus-client, numpy and {deployed.served_runtime})
- `model/`: the variant's model file(s), as measured
- `spec.json`: the input spec; `bundle.json`: how the model loads and which cell it is
- `example.json`: a request body for one sample
"""


def _image_name(deployed: DeployCell) -> str:
    return f"paretoscope-study-{deployed.study_id}-cell-{deployed.cell.cell}"
