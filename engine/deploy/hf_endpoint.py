"""The Hugging Face Inference Endpoints bundle: handler.py (a custom handler), served_model.py, the model's files and
requirements.txt, laid out as the model repository the endpoint is created from."""

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

# handler.py imports served_model.py from its own folder; the endpoint's working directory is not promised to be it
_IMPORT = "from served_model import"
_IMPORT_BESIDE = ("import sys  # noqa: E402\n"
                  "sys.path.insert(0, str(Path(__file__).resolve().parent))  # served_model.py lies beside this file\n"
                  "from served_model import")


def write(deployed: DeployCell, folder: Path) -> list[str]:
    write_serving_files(deployed, folder, "hf-endpoint")
    source = standalone_source("handler")
    (folder / "handler.py").write_text(source.replace(_IMPORT, _IMPORT_BESIDE, 1), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join([*runtime_requirements(deployed), "numpy>=1.24"]) + "\n",
                                             encoding="utf-8")
    (folder / "README.md").write_text(readme(deployed), encoding="utf-8")
    return []


def readme(deployed: DeployCell) -> str:
    cell = deployed.cell
    example = json.dumps(example_inputs(deployed.spec))
    body = f"-d '{example}'" if len(example) <= 400 else "-d @example.json"
    return f"""---
tags:
- paretoscope
- endpoints-template
---
# {deployed.model_name}: {cell.variant} on {deployed.served_runtime}

Cell {cell.cell} of Paretoscope study {deployed.study_id}, **{cell.variant}** measured on **{cell.runtime}**, as a
Hugging Face Inference Endpoints custom handler. Push this folder to a model repository on the Hub
(`hf upload OWNER/NAME .`), then create an endpoint from it: the endpoint installs `requirements.txt` and loads
`handler.py`.

```bash
curl -s https://<endpoint>/ -H "Authorization: Bearer $HF_TOKEN" -H 'Content-Type: application/json' {body}
```

The body is `{{"inputs": {{NAME: nested lists}}}}` as `spec.json` describes; the reply is
`{{"outputs": {{NAME: nested lists}}}}`, or `{{"error": reason}}` for inputs the model cannot take. Try it locally:
`python -c "from handler import EndpointHandler; print(EndpointHandler('.')({{'inputs': ...}}))"`.
"""
