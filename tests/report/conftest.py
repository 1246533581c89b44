"""A data folder seeded once with two real studies; the first has a hostile name and model file name."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.__main__ import main
from tests.conftest import shared_data_dir

FAST = ["--iterations", "5", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1"]
HOSTILE_STUDY = "<script>alert(1)</script>"
HOSTILE_FILE = "mlp <b>&\"'.onnx"


@dataclass(frozen=True)
class Seeded:
    folder: Path
    study_a: int  # variants baseline,int8-dynamic on onnxruntime at batch 1 and 2, named HOSTILE_STUDY
    study_b: int  # baseline on onnxruntime at batch 1, named "second"


def _bench(*args: str) -> int:
    out = io.StringIO()
    assert main(["bench", *args, *FAST], out=out) == 0, out.getvalue()
    return int(out.getvalue().split("study ")[-1].split(":")[0])


@pytest.fixture(scope="package")
def seeded(tmp_path_factory: pytest.TempPathFactory, mlp_onnx: Path) -> Iterator[Seeded]:
    folder = tmp_path_factory.mktemp("reports") / "data"
    with shared_data_dir(folder):
        yield _seed(folder, mlp_onnx)


def _seed(folder: Path, mlp_onnx: Path) -> Any:
    model = folder.parent / HOSTILE_FILE
    shutil.copyfile(mlp_onnx, model)
    a = _bench(str(model), "--variants", "baseline,int8-dynamic", "--runtimes", "onnxruntime", "--batch-sizes", "1,2",
               "--name", HOSTILE_STUDY)
    b = _bench(str(model), "--variants", "baseline", "--runtimes", "onnxruntime", "--batch-sizes", "1",
               "--name", "second")
    return Seeded(folder, a, b)


@pytest.fixture
def data_dir(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Overrides the per-test empty data folder: report tests read the seeded one."""
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(seeded.folder))
    monkeypatch.setenv("PARETOSCOPE_NO_AUTO_WORKER", "1")
    return seeded.folder


@pytest.fixture
def report_a(seeded: Seeded, data_dir: Path) -> dict:
    from engine.report.source import load_report

    return load_report(seeded.study_a)
