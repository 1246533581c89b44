"""A data folder seeded once with a real study: the TorchScript MLP on torchscript and onnxruntime at batch 1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.__main__ import main
from tests.conftest import shared_data_dir

FAST = ["--iterations", "5", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1", "--rounds", "0"]


@dataclass(frozen=True)
class Seeded:
    folder: Path
    study: int  # cells: 0 baseline on torchscript, 1 baseline on onnxruntime, 2 baseline on torch (n/a)


@pytest.fixture(scope="package")
def seeded(tmp_path_factory: pytest.TempPathFactory, mlp_torchscript: Path) -> Iterator[Seeded]:
    folder = tmp_path_factory.mktemp("deploy") / "data"
    with shared_data_dir(folder):
        out = io.StringIO()
        assert main(["bench", str(mlp_torchscript), *FAST, "--variants", "baseline", "--runtimes",
                     "torchscript,onnxruntime,torch", "--batch-sizes", "1"], out=out) == 0, out.getvalue()
        yield Seeded(folder, int(out.getvalue().split("study ")[-1].split(":")[0]))


@dataclass(frozen=True)
class GenStudy:
    folder: Path
    study: int
    cells: dict[tuple[str, str], int]  # (variant, runtime) -> cell


@pytest.fixture(scope="package")
def gen_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GenStudy]:
    """A generation study of a tiny random-weight Llama (prompt 8 tokens, 2 new tokens, baseline on torch and
    onnxruntime), measured once for the package: the generative bundle's tests and serve-bench's read it."""
    import json

    from tests.engine.tiny_llama import save_tiny_llama

    tiny_llama = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    folder = tmp_path_factory.mktemp("chat") / "data"
    with shared_data_dir(folder):
        out = io.StringIO()
        report = folder.parent / "gen.json"
        assert main(["bench", str(tiny_llama), "--scenario", "generate", "--prompt-lens", "8", "--new-tokens", "2",
                     "--generations", "1", "--batch-sizes", "1", "--threads", "1", "--runtimes", "torch,onnxruntime",
                     "--variants", "baseline", "--json", str(report)], out=out) == 0, out.getvalue()
        rows = json.loads(report.read_text())
        cells = {(r["variant"], r["runtime"]): r["cell"] for r in rows["results"]}
        yield GenStudy(folder, int(rows["study"]["id"]), cells)


@pytest.fixture
def data_dir(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Overrides the per-test empty data folder: deploy tests read the seeded one."""
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(seeded.folder))
    monkeypatch.setenv("PARETOSCOPE_NO_AUTO_WORKER", "1")
    return seeded.folder


# Triton's model-config protobuf, as tritonclient ships it; `make install` downloads the wheel (not installed: its
# pins would downgrade ml-dtypes and protobuf), the tests import that one module from it
TRITON_WHEEL = "tritonclient-2.73.0-*.whl"
TRITON_MODULE = "tritonclient/grpc/model_config_pb2.py"


def triton_model_config() -> Any:
    """Triton's own `model_config_pb2`, read from the downloaded tritonclient wheel."""
    import importlib.util
    import sys
    import zipfile

    wheels = sorted((Path(sys.prefix) / "wheels").glob(TRITON_WHEEL))
    if not wheels:
        pytest.fail(f"no {TRITON_WHEEL} in {Path(sys.prefix) / 'wheels'}: `make install` downloads it")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        source = wheel.read(TRITON_MODULE).decode()
    spec = importlib.util.spec_from_loader("model_config_pb2", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{wheels[-1].name}/{TRITON_MODULE}", "exec"), module.__dict__)  # Triton's own file
    return module
