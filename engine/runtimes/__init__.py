"""Runtimes: importing this package registers every runtime (heavy libraries load in load())."""

import os

# Registration order is listing order: torch runtimes first, then ONNX consumers.
from engine.runtimes import torch_eager  # noqa: F401
from engine.runtimes import torch_cuda  # noqa: F401
from engine.runtimes import onnxruntime  # noqa: F401
from engine.runtimes import tensorrt  # noqa: F401
from engine.runtimes import openvino  # noqa: F401
from engine.runtimes.base import (
    REGISTRY,
    Runtime,
    RuntimeOptions,
    RuntimeSettings,
    Session,
    availability,
    check_runtime_options,
    get,
    parse_runtime_options,
)

if os.environ.get("PARETOSCOPE_TEST_RUNTIMES") == "1":
    from engine.runtimes import testing  # noqa: F401  (misbehaving runtimes for the worker's tests)

__all__ = ["REGISTRY", "Runtime", "RuntimeOptions", "RuntimeSettings", "Session", "availability",
           "check_runtime_options", "get", "parse_runtime_options"]
