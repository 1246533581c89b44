"""Where Paretoscope keeps its files: everything lives under one data folder."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PARETOSCOPE_DATA_DIR"
# The first resolution of each setting of the variable: a relative default ("data") names the folder
# under the directory the process started in, even after a library or a child changes the directory.
_RESOLVED: dict[str, Path] = {}


def data_dir() -> Path:
    """The data folder from `PARETOSCOPE_DATA_DIR` (default `./data`) as an absolute path, created on first use."""
    raw = os.environ.get(ENV, "data")
    root = _RESOLVED.get(raw)
    if root is None:
        root = _RESOLVED[raw] = Path(raw).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sub_dir(*parts: str) -> Path:
    """A folder inside the data folder, created on first use."""
    path = data_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def study_dir(study_id: int) -> Path:
    """Where a study keeps its reference outputs and logs."""
    return sub_dir("studies", str(study_id))
