"""`import engine` and the planning modules must not import heavy runtimes (STYLE.md, point 7)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "openvino", "onnx", "transformers", "tensorrt", "nncf", "tensorflow", "keras",
         "tf2onnx")
LIGHT_MODULES = ("engine", "engine.artifacts", "engine.data", "engine.plan", "engine.optimizations",
                 "engine.runtimes", "engine.study", "engine.__main__", "engine.measure.environment",
                 "engine.variants")


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


def test_dashboard_pages_import_no_heavy_library(tmp_path, mlp_onnx) -> None:  # type: ignore[no-untyped-def]
    """The dashboard process never loads torch or a runtime: uploads are inspected in child processes. The data
    folder holds a finished study, so every page goes past its empty-state stop (previews, tables, charts)."""
    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        "from pages import PAGES\n"
        "at = AppTest.from_file('app.py', default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "for file, _, _ in PAGES[1:]:\n"
        "    at.switch_page('pages/' + file).run()\n"
        "    assert not at.exception, (file, at.exception)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(tmp_path / "data"), "PARETOSCOPE_NO_AUTO_WORKER": "1"}
    subprocess.run([sys.executable, "-m", "engine", "bench", str(mlp_onnx), "--variants", "baseline",
                    "--runtimes", "onnxruntime", "--iterations", "5", "--min-seconds", "0.05", "--warmup", "1",
                    "--threads", "1"], capture_output=True, text=True, timeout=300, cwd=root, env=env, check=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.rstrip("\n").split("\n")[-1]
    assert last == "", f"the dashboard imported {last}"
