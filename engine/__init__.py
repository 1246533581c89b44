"""Paretoscope engine: model intake, variant builds, runtimes and honest measurement.

Importing this package stays light: torch, onnxruntime, openvino and CUDA are imported lazily
inside the functions that need them.
"""

__version__ = "0.1.0"
