"""Runtimes: importing this package registers every runtime (heavy libraries load in load()) and the plugins'."""

# Registration order is listing order: torch runtimes first, then TensorFlow, then ONNX consumers.
from engine.runtimes import torch_eager  # noqa: F401
from engine.runtimes import torch_cuda  # noqa: F401
# before the ONNX runtimes: the first runtime that runs a study's baseline is its speedups' reference
from engine.runtimes import tensorflow  # noqa: F401
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

from engine.plugins import load_plugins

load_plugins()  # after the built-in runtimes: a plugin's runtime may build on one of them

__all__ = ["REGISTRY", "Runtime", "RuntimeOptions", "RuntimeSettings", "Session", "availability",
           "check_runtime_options", "get", "parse_runtime_options"]
