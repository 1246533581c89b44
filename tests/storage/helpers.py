"""Rows for storage tests without running a model."""

from __future__ import annotations

from typing import Any

from storage import catalogue

from storage import queue
from storage.db import session

ARTIFACT: dict[str, Any] = {
    "format": "onnx", "path": "/nonexistent/model.onnx", "sha256": "ab" * 32, "size_bytes": 10,
    "spec": {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "value_range": None}],
             "outputs": [], "seq_len": None},
    "info": {},
}


def make_study(n_jobs: int, runtime: str | list[str] = "onnxruntime", settings: dict[str, Any] | None = None,
               artifact: dict[str, Any] | None = None, name: str = "study") -> int:
    """A study of `n_jobs` baseline cells (one runtime each when `runtime` is a list), queued."""
    runtimes = runtime if isinstance(runtime, list) else [runtime] * n_jobs
    cells = [{"index": i, "variant": "baseline", "chain": [], "runtime": runtimes[i], "batch_size": 1,
              "status": "pending", "reason": None} for i in range(n_jobs)]
    with session() as s:
        model = catalogue.get_or_create_model(s, artifact or ARTIFACT, "model.onnx")
        study = queue.create_study(s, name=name, model=model, dataset=None, variants=["baseline"],
                               runtimes=sorted(set(runtimes)), batch_sizes=[1],
                               settings=settings or {"timeout_s": 60}, cells=cells)
        return study.id
