"""A data folder seeded once per module with two real studies, for the page tests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.__main__ import main
from tests.conftest import shared_data_dir

FAST = ["--iterations", "5", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, mlp_onnx: Path) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("seeded") / "data"
    with shared_data_dir(folder):
        yield _seed(folder, mlp_onnx)


def _seed(folder: Path, mlp_onnx: Path) -> Any:
    rng = np.random.default_rng(0)
    data = folder.parent / "mlp.npz"
    np.savez(data, **{"eval/x": rng.standard_normal((32, 16)).astype(np.float32),
                      "eval/labels": rng.integers(0, 4, 32)})
    for name, runtimes in (("first <script>", "onnxruntime,openvino"), ("second", "onnxruntime")):
        code = main(["bench", str(mlp_onnx), *FAST, "--variants", "baseline,int8-dynamic", "--runtimes", runtimes,
                     "--batch-sizes", "1,4", "--data", str(data), "--name", name], out=io.StringIO())
        assert code == 0
    return folder


@pytest.fixture
def data_dir(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Overrides the per-test empty data folder: page tests read the seeded one."""
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(seeded))
    monkeypatch.setenv("PARETOSCOPE_NO_AUTO_WORKER", "1")
    return seeded
