"""Where Paretoscope keeps its files: everything lives under one data folder."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data folder from `PARETOSCOPE_DATA_DIR` (default `./data`), created on first use."""
    root = Path(os.environ.get("PARETOSCOPE_DATA_DIR", "data")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sub_dir(*parts: str) -> Path:
    """A folder inside the data folder, created on first use."""
    path = data_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
