"""`import engine` and the planning modules must not import heavy runtimes (STYLE.md, point 7)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "openvino", "onnx", "transformers", "tensorrt")
LIGHT_MODULES = ("engine", "engine.artifacts", "engine.data", "engine.plan", "engine.optimizations",
                 "engine.runtimes", "engine.study", "engine.__main__", "engine.measure.environment")


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_no_heavy_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "", f"{module} imported {proc.stdout.strip()}"


def test_runtime_listing_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from engine.runtimes import availability\n"
        "availability()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == ""
