"""What a build makes and what its passes read: `Variant` and `BuildContext`, below runtimes and optimizations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.specs import InputSpec

if TYPE_CHECKING:
    from engine.data import Dataset

# Without a data file, distillation trains on this many synthesized samples.
SYNTHETIC_TRAIN = 256


@dataclass
class BuildContext:
    """What passes may need besides the model: the spec, data, the device, a place for notes."""

    spec: InputSpec
    device: str = "cpu"  # the runtime's kind of device: "cpu" or "cuda"
    calibration_data: Callable[[int], dict[str, np.ndarray]] | None = None
    calibration_source: str = "synthesized inputs"
    notes: list[str] = field(default_factory=list)
    # structured records of the passes by optimization id (which nodes int8-static:max_drop kept in float):
    # stored with the variant, reported as the result's `build_details`
    details: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str, float], None] = lambda phase, fraction: None
    # the study's data: distillation trains on its train split
    dataset: Dataset | None = None
    # set by the build for torch-level passes: loads the original model (distillation's teacher)
    original: Callable[[], Any] | None = None
    # structural edits made by torch-level passes, replayed when the variant is rebuilt from the cache
    edits: list[dict[str, Any]] = field(default_factory=list)
    train_s: float | None = None
    # the cell's own CUDA device (cuda:N) for passes that compute there (distillation trains on it)
    gpu: str | None = None
    # a generative Hugging Face model's folder (set by the build): without a data file, its distillation trains
    # on windows of the bundled prompt text through the folder's tokenizer instead of random ids
    text_folder: Path | None = None

    def calibration(self, samples: int) -> dict[str, np.ndarray]:
        from engine.data import calib_set

        if self.calibration_data is not None:
            return self.calibration_data(samples)
        return calib_set(None, self.spec, samples)

    def training(self, limit: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
        """Training inputs (at most `limit` samples; 0: all), their labels if any, and where they came from.

        The train split, else the data's sample inputs, else (a generative model) the bundled prompt text, else
        synthesized; never the eval split nor the evaluation text, which measure the result.
        """
        from engine.data import conform, synthesize

        if self.dataset is not None:
            for split, source in (("train", "the train split"), ("", "the sample inputs"),
                                  ("calib", "the calib split")):
                if split in self.dataset.splits:
                    arrays = self.dataset.splits[split]
                    labels = self.dataset.labels.get(split)
                    n = next(iter(arrays.values())).shape[0]
                    n = min(n, limit) if limit else n
                    return (conform({k: v[:n] for k, v in arrays.items()}, self.spec),
                            labels[:n] if labels is not None else None, source)
        count = limit or SYNTHETIC_TRAIN
        if self.text_folder is not None:
            from engine.generation.prompts import TRAIN_WINDOW, training_windows

            windows = training_windows(self.text_folder, self.spec.names, self.spec.seq_len or TRAIN_WINDOW, count)
            if windows is not None:
                return (conform(windows, self.spec), None,
                        "windows of the bundled prompt text through the model's tokenizer")
        source = ("synthesized ids (the folder has no tokenizer that loads, so no text to train on)"
                  if self.text_folder is not None else "synthesized inputs")
        return conform(synthesize(self.spec, count, seed=2), self.spec), None, source


@dataclass
class Variant:
    """A built variant: its file (None for in-memory eager modules), size and the notes of its build."""

    name: str
    target: str
    path: Path | None
    size_bytes: int
    notes: list[str]
    build_s: float
    cached: bool
    module: Any = None  # the eager module for target "torch"
    input_names: list[str] = field(default_factory=list)
    train_s: float | None = None  # training time of the chain's torch-level passes, when one trains
    details: dict[str, Any] = field(default_factory=dict)  # the passes' structured records (BuildContext.details)
    # the uploaded model this file was converted from, where a runtime may read it itself instead (OpenVINO's
    # TensorFlow frontend reads a SavedModel folder); None otherwise
    source: Path | None = None

    @property
    def file(self) -> Path:
        """The file a runtime loads (every target but an optimized eager module, which lives in `module`)."""
        if self.path is None:
            raise ValueError(f"the variant {self.name} for {self.target} has no file; it is an eager module")
        return self.path
