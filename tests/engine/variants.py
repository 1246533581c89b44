"""Build a variant of a model file in this process and run it: the quantization tests' two steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.optimizations import parse_chain
from engine.optimizations.build import build_variant
from engine.variants import BuildContext


def build_onnx(path: Path, chain: str) -> Any:
    """The chain's variant of the model at `path`, built for ONNX runtimes (the build cache of the data folder)."""
    from engine.artifacts import intake

    model = intake(path)
    return build_variant(model, parse_chain(chain), "onnx", BuildContext(model.spec))


def run_variant(variant: Any, runtime: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The variant's outputs for `feeds` on `runtime`, one thread."""
    from engine.runtimes import get

    with get(runtime).create(threads=1).load(variant) as session:
        return session.fetch(session.run(session.prepare(feeds)))
