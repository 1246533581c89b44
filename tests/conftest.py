"""Tiny real models made once per test session, and an isolated data folder per test."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The processes tests start (workers, cells' children) import test doubles from tests/ (named in
# PARETOSCOPE_PLUGINS, or the executor's test task): the checkout's root goes on their path. Product code never
# sets a path; an installed package needs none.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a `slow` test first, the rest after, each in its own order: under `make test`'s
    `-n 2 --dist loadfile --no-loadscope-reorder` (xdist would otherwise order files by their test count) the long
    files start at once rather than leave one worker running alone at the end.
    Every worker collects the same order, as xdist requires."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own PARETOSCOPE_DATA_DIR; nothing leaks between tests."""
    folder = tmp_path / "data"
    monkeypatch.setenv("PARETOSCOPE_DATA_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PARETOSCOPE_NO_AUTO_WORKER", "1")  # tests start the workers they need
    return folder


@contextmanager
def shared_data_dir(folder: Path) -> Iterator[Path]:
    """A data folder for fixtures wider than one test (seeded once per module or package): sets the
    environment outside monkeypatch, which is per test, and puts it back afterwards."""
    from storage import db

    keys = ("PARETOSCOPE_DATA_DIR", "PARETOSCOPE_NO_AUTO_WORKER")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["PARETOSCOPE_DATA_DIR"] = str(folder)
    os.environ["PARETOSCOPE_NO_AUTO_WORKER"] = "1"
    db.reset()
    try:
        yield folder
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        db.reset()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _mlp():  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


def _cnn():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="session")
def mlp_onnx(models_dir: Path) -> Path:
    """A two-layer MLP (x: float32[batch,16] -> 4 logits) as ONNX with a dynamic batch axis."""
    import torch

    path = models_dir / "mlp.onnx"
    torch.onnx.export(_mlp(), (torch.randn(2, 16),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="session")
def mlp_onnx_fixed(models_dir: Path) -> Path:
    """The MLP with its batch fixed to 1."""
    import torch

    path = models_dir / "mlp_fixed.onnx"
    torch.onnx.export(_mlp(), (torch.randn(1, 16),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"])
    return path


@pytest.fixture(scope="session")
def mlp_torchscript(models_dir: Path) -> Path:
    import torch

    path = models_dir / "mlp.pt"
    torch.jit.save(torch.jit.trace(_mlp(), torch.randn(2, 16)), str(path))
    return path


@pytest.fixture(scope="session")
def mlp_pt2(models_dir: Path) -> Path:
    import torch

    path = models_dir / "mlp.pt2"
    program = torch.export.export(_mlp(), (torch.randn(2, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def cnn_pt2(models_dir: Path) -> Path:
    """A small CNN (x: float32[batch,3,16,16] -> 5 logits) as a torch.export program."""
    import torch

    path = models_dir / "cnn.pt2"
    program = torch.export.export(_cnn(), (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def bert_hf_zip(models_dir: Path) -> Path:
    """A tiny BERT sequence classifier built from a config, saved with safetensors and zipped."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    folder = models_dir / "tiny-bert"
    model.save_pretrained(str(folder), safe_serialization=True)
    return zip_folder(folder, models_dir / "tiny-bert.zip")


def zip_folder(folder: Path, dest: Path, prefix: str | None = None) -> Path:
    """Zip a folder's files under `prefix/` (default: the folder's name)."""
    root = prefix if prefix is not None else folder.name
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{root}/{path.relative_to(folder)}" if root else str(path.relative_to(folder)))
    return dest


@pytest.fixture
def mlp_npz(tmp_path: Path) -> Path:
    """Labelled data for the MLP: eval split with labels, calib split."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mlp.npz"
    np.savez(path, **{"eval/x": rng.standard_normal((40, 16)).astype(np.float32),
                      "eval/labels": rng.integers(0, 4, 40),
                      "calib/x": rng.standard_normal((32, 16)).astype(np.float32)})
    return path


@pytest.fixture
def copy_to(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a fixture file under a new name (e.g. a zip renamed .onnx)."""

    def copy(src: Path, name: str) -> Path:
        dest = tmp_path / name
        shutil.copyfile(src, dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def shared_build(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """build(model_path, chain, target) -> (Artifact, Variant), built once per session in its own data folder.

    For tests that only read or run a variant; tests of intake or the build cache use the per-test folder.
    Callers must not mutate the returned objects.
    """
    folder = tmp_path_factory.mktemp("shared-data")
    memo: dict[tuple[str, str, str], tuple[object, object]] = {}

    def build(model: Path, chain: str = "baseline", target: str = "onnx"):  # type: ignore[no-untyped-def]
        from engine.artifacts import intake
        from engine.optimizations import parse_chain
        from engine.optimizations.build import build_variant
        from engine.variants import BuildContext

        key = (str(model), chain, target)
        if key not in memo:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("PARETOSCOPE_DATA_DIR", str(folder))
                artifact = intake(model)
                memo[key] = (artifact, build_variant(artifact, parse_chain(chain), target, BuildContext(artifact.spec)))
        return memo[key]

    return build


def results_frame(study_id: int) -> Any:
    """A stored study's results as the pages' frame: its results JSON, flattened by the report's tables."""
    from engine.report import tables
    from engine.report import source
    from storage.db import session

    with session(write=False) as s:
        return tables.results_table(source.results_json(s, study_id))[tables.FRAME_COLUMNS]
