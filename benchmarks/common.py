"""Shared pieces of the benchmarks: the encoder they measure, a scratch data folder, tables and JSON."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# progress bars of weight loading and saving only clutter a benchmark's output (children inherit this)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The MiniLM-L6 shape (sentence-transformers/all-MiniLM-L6-v2) with random weights: nothing is downloaded.
ENCODER: dict[str, Any] = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                           "intermediate_size": 1536}
SEQ_LEN = 128


def encoder_zip(folder: Path, seed: int = 0) -> Path:
    """A BertModel made from the MiniLM-L6 config, saved as a zipped Hugging Face folder (safetensors)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**ENCODER)
    model = transformers.BertModel(config).eval()
    hf = folder / "minilm-l6-random"
    model.save_pretrained(str(hf), safe_serialization=True)
    return zip_folder(hf, folder / "minilm-l6-random.zip")


def zip_folder(folder: Path, dest: Path) -> Path:
    """The folder as a zip whose members sit under the folder's name, as an HF folder is usually zipped."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return dest


@contextlib.contextmanager
def data_folder(keep: str | None) -> Iterator[Path]:
    """PARETOSCOPE_DATA_DIR for the run: `keep` (reused, so built variants are cached) or a scratch folder."""
    previous = os.environ.get("PARETOSCOPE_DATA_DIR")
    with contextlib.ExitStack() as stack:
        folder = Path(keep).resolve() if keep else Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="paretoscope-bench-")))
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["PARETOSCOPE_DATA_DIR"] = str(folder)
        try:
            yield folder
        finally:
            if previous is None:
                os.environ.pop("PARETOSCOPE_DATA_DIR", None)
            else:
                os.environ["PARETOSCOPE_DATA_DIR"] = previous


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; numbers are formatted by the caller."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(payload: dict[str, Any], out: str | None, name: str) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def load_state() -> str:
    """The 1/5/15-minute load averages and the core count: other work on the machine skews every timing."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
