"""A cell made ready to time: its runtime checked and made, its variant built, the study's reference read.

What a cell's process (engine/job.py) and its rounds partner (engine/executors/partner.py) share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.artifacts import Artifact
from engine.data import Dataset, calib_set, load_npz
from engine.errors import Unavailable
from engine.executors.tasks import ProgressFn
from engine.optimizations.build import build_variant
from engine.plan import Cell, StudySettings
from engine.runtimes import Runtime, get
from engine.variants import BuildContext, Variant

# The study's fp32 reference outputs (and the inputs they were computed on), in the study's folder.
REFERENCE_FILE = "reference.npz"


def dataset_of(model: Artifact, data_path: str | None) -> Dataset | None:
    """The study's data file read against the model's inputs, or None without one."""
    return load_npz(data_path, model.spec) if data_path else None


def load_reference(study_dir: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray], np.ndarray | None]:
    with np.load(study_dir / REFERENCE_FILE, allow_pickle=False) as npz:
        inputs = {k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith("input/")}
        count = sum(1 for k in npz.files if k.startswith("output/"))
        outputs = [npz[f"output/{i}"] for i in range(count)]
        labels = npz["labels"] if "labels" in npz.files else None
    return inputs, outputs, labels


@dataclass
class Opened:
    """A cell's variant built and its runtime made, ready to load: what a cell and a rounds partner share."""

    runtime_cls: type[Runtime]
    runtime: Runtime
    variant: Variant
    dataset: Dataset | None
    gpu_device: str | None
    # the structural edits of the variant's torch-level passes (a distilled student's kept layers)
    edits: list[dict[str, Any]]


def open_cell(model: Artifact, cell: Cell, settings: StudySettings, data_path: str | None,
              progress: ProgressFn) -> Opened:
    """Check the cell's runtime, make it with the study's settings and build the cell's variant."""
    runtime_cls = get(cell.runtime)
    ok, why = runtime_cls.available()
    if not ok:
        raise Unavailable(why or f"{cell.runtime} is unavailable")
    # TensorRT builds its engine for this cell's input shapes
    runtime = runtime_cls.create(settings.threads, settings.runtime_options.get(cell.runtime),
                                 input_shapes=model.spec.shapes(cell.batch_size))
    dataset = dataset_of(model, data_path)
    calibration_source = "the calib split" if dataset is not None and "calib" in dataset.splits else (
        "the sample data" if dataset is not None else "synthesized inputs")
    # the cell's CUDA device (cuda:N) for GPU runtimes: training, NVML metrics
    gpu_device = runtime.settings.options.cuda_device
    ctx = BuildContext(
        model.spec, runtime_cls.device, gpu=gpu_device,
        calibration_data=lambda n: calib_set(dataset, model.spec, n, settings.padding),
        calibration_source=calibration_source, progress=progress, dataset=dataset,
    )
    progress("building variant", 0.0)
    variant = build_variant(model, cell.parsed_chain(), runtime_cls.consumes, ctx)
    return Opened(runtime_cls, runtime, variant, dataset, gpu_device, list(ctx.edits))
