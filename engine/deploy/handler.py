"""A Hugging Face Inference Endpoints custom handler for a Paretoscope bundle: `EndpointHandler(path)(data)`.

The endpoint loads the repository's handler.py once, calls it with each request's JSON ({"inputs": {NAME: nested
lists}}) and returns what it returns ({"outputs": {NAME: nested lists}}, or {"error": reason} for inputs the model
cannot take). Standalone: copied into each hf-endpoint bundle beside served_model.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.deploy.served_model import InputError, ServedModel, check_inputs, to_json


class EndpointHandler:
    """Loads the bundle's model once; each call checks the inputs against its spec and runs it."""

    def __init__(self, path: str = "") -> None:
        self.model = ServedModel(Path(path) if path else Path(__file__).resolve().parent)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            feeds = check_inputs(data, self.model.inputs)
        except InputError as exc:
            return {"error": str(exc)}
        return {"outputs": to_json(self.model.run(feeds))}
