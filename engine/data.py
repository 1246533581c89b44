"""Sample, calibration, training and evaluation inputs: from a user's .npz or synthesized from the spec."""

from __future__ import annotations

import math
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import safezip
from engine.errors import UserError
from engine.specs import DEFAULT_SEQ_LEN, InputSpec

SPLITS = ("train", "calib", "eval")
LABELS = "labels"
DEFAULT_SEED = 0
# Without data, this many synthetic samples make the evaluation (fidelity) and calibration sets.
SYNTHETIC_EVAL = 64
SYNTHETIC_CALIB = 64
_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex


@dataclass
class Dataset:
    """Named input arrays per split (first axis = samples); `labels` per split where given."""

    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    synthetic: bool = False

    def split(self, name: str) -> dict[str, np.ndarray]:
        """The split's inputs; a missing split falls back to the unprefixed arrays."""
        if name in self.splits:
            return self.splits[name]
        return self.splits.get("", {})

    def split_labels(self, name: str) -> np.ndarray | None:
        if name in self.splits:
            return self.labels.get(name)
        return self.labels.get("")

    def has(self, name: str) -> bool:
        return name in self.splits or "" in self.splits


def _count(arrays: dict[str, np.ndarray]) -> int:
    return next(iter(arrays.values())).shape[0] if arrays else 0


def load_npz(path: str | Path, spec: InputSpec, max_bytes: int | None = None) -> Dataset:
    """Load a user's .npz (never pickles) and check it against the spec.

    Every array's header is read and its size checked against the bytes the archive holds before the
    array is allocated; the archive's unpacked size is capped like a model's (`safezip.max_unpacked_bytes()`).
    """
    src = Path(path)
    label = src.name
    if not src.is_file():
        raise UserError(f"{src}: no such data file; give an .npz made with numpy.savez")
    with open(src, "rb") as fh:
        if fh.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            # np.load would read a bare .npy, or answer a text file with a hint about allow_pickle
            raise UserError(f"{label}: not an .npz archive; save the arrays with numpy.savez")
    dataset = Dataset()
    with safezip.open_zip(src, label) as archive:
        members = [m for m in safezip.checked_members(archive, label, max_bytes) if not m.is_dir()]
        for info in members:
            key = _array_key(info, label)
            prefix, _, name = key.rpartition("/")
            if prefix and prefix not in SPLITS:
                raise UserError(f"{label}: array '{key}' has an unknown split '{prefix}'; use train/, calib/ or eval/")
            array = _read_array(archive, info, key, label)
            if name == LABELS:
                dataset.labels[prefix] = array
            else:
                dataset.splits.setdefault(prefix, {})[name] = array
    if not dataset.splits:
        raise UserError(f"{label}: no input arrays; name them after the model's inputs ({', '.join(spec.names)})")
    for prefix, arrays in dataset.splits.items():
        _check_split(arrays, dataset.labels.get(prefix), spec, f"{label}: {prefix or 'data'}")
    for prefix in dataset.labels:
        if prefix not in dataset.splits:
            raise UserError(f"{label}: '{prefix + '/' if prefix else ''}labels' has no input arrays beside it")
    return dataset


def _array_key(info: zipfile.ZipInfo, label: str) -> str:
    if not info.filename.endswith(".npy"):
        raise UserError(f"{label}: member '{safezip.shown(info.filename)}' is not a .npy array; save the arrays "
                        "with numpy.savez")
    return safezip.shown(info.filename[: -len(".npy")])


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, label: str) -> np.ndarray:
    """One member as an array, once its header's shape and dtype fit the bytes the member holds."""
    fmt = np.lib.format
    try:
        with archive.open(info) as fp:
            version = fmt.read_magic(fp)
            if version not in _NPY_VERSIONS:
                raise ValueError(f"unknown .npy format version {version}")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(fp)
            data_bytes = info.file_size - fp.tell()
    except (*safezip.CORRUPT, tokenize.TokenError, RecursionError) as exc:  # numpy re-tokenizes odd headers
        raise UserError(f"{label}: array '{key}' has no valid .npy header ({_line(exc)}); save the arrays with "
                        "numpy.savez") from exc
    if dtype.hasobject:
        raise UserError(f"{label}: array '{key}' holds Python objects, which are not loaded (no pickles); "
                        "store plain numeric arrays")
    if dtype.kind not in _NUMERIC_KINDS:
        raise UserError(f"{label}: array '{key}' has dtype {dtype}, not numbers; store plain numeric arrays")
    if any(d < 0 for d in shape):
        raise UserError(f"{label}: array '{key}' has a negative dimension in its shape {shape}; save it again")
    declared = math.prod(shape) * dtype.itemsize
    if declared > data_bytes:
        # a header may declare any shape: allocating it first would take the memory of the size it claims
        raise UserError(f"{label}: array '{key}' is truncated: its header declares shape {shape} of {dtype} "
                        f"({declared:,} bytes) but the file holds {max(data_bytes, 0):,}; save it again with "
                        "numpy.savez")
    try:
        with archive.open(info) as fp:
            return fmt.read_array(fp, allow_pickle=False)  # type: ignore[no-any-return]
    except safezip.CORRUPT as exc:
        raise UserError(f"{label}: array '{key}' cannot be read ({_line(exc)}); save the arrays again with "
                        "numpy.savez") from exc


def _line(exc: BaseException) -> str:
    return safezip.shown(" ".join(str(exc).split())[:300]) or type(exc).__name__


def _check_split(arrays: dict[str, np.ndarray], labels: np.ndarray | None, spec: InputSpec, where: str) -> None:
    names = set(spec.names)
    unknown = sorted(set(arrays) - names)
    if unknown:
        raise UserError(f"{where}: arrays {unknown} match no model input; the inputs are {sorted(names)}")
    missing = sorted(names - set(arrays))
    if missing:
        raise UserError(f"{where}: missing arrays for inputs {missing}")
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise UserError(f"{where}: arrays must share a non-empty first (sample) axis; got {sorted(counts)}")
    for tensor in spec.inputs:
        array = arrays[tensor.name]
        if array.ndim != len(tensor.shape):
            raise UserError(
                f"{where}: '{tensor.name}' has shape {array.shape}, the model expects {tensor.describe()}"
            )
        for have, want in zip(array.shape[1:], tensor.shape[1:], strict=True):
            if isinstance(want, int) and have != want:
                raise UserError(
                    f"{where}: '{tensor.name}' has shape {array.shape}, the model expects {tensor.describe()}"
                )
        if not np.can_cast(array.dtype, np.dtype(_numpy_dtype(tensor.dtype)), casting="same_kind"):
            raise UserError(f"{where}: '{tensor.name}' is {array.dtype}, the model expects {tensor.dtype}")
        if tensor.bound is not None and array.size:
            low, high = tensor.bound
            smallest, largest = int(array.min()), int(array.max())
            if smallest < low or largest >= high:
                # an embedding would fail on every cell; say it once, here
                raise UserError(f"{where}: '{tensor.name}' holds values {smallest}..{largest} but the model accepts "
                                f"[{low}, {high}); tokenize with the model's own tokenizer")
    count = counts.pop()
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != count):
        rows = labels.shape[0] if labels.ndim else 0
        raise UserError(f"{where}: labels has {rows} rows but the inputs have {count}; give one label per sample")


def synthesize(spec: InputSpec, count: int, seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
    """`count` samples per input from a fixed seed: normal floats, integers inside their range."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        # the first axis counts samples whether or not the model fixes its batch size
        per_sample = [d if isinstance(d, int) else (spec.seq_len or DEFAULT_SEQ_LEN) for d in tensor.shape[1:]]
        shape = (count, *per_sample)
        if tensor.value_range is not None:
            low, high = tensor.value_range
            out[tensor.name] = rng.integers(low, high, size=shape).astype(tensor.dtype)
        elif tensor.dtype == "bool":
            out[tensor.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[tensor.name] = rng.standard_normal(size=shape).astype(np.float32).astype(_numpy_dtype(tensor.dtype))
    return out


def conform(arrays: dict[str, np.ndarray], spec: InputSpec) -> dict[str, np.ndarray]:
    """Cast arrays to the spec's dtypes, contiguous, in input order."""
    return {t.name: np.ascontiguousarray(arrays[t.name], dtype=_numpy_dtype(t.dtype)) for t in spec.inputs}


def _numpy_dtype(name: str) -> str:
    # numpy has no bfloat16: such inputs are made, checked and passed as float32
    return "float32" if name == "bfloat16" else name


def take_batch(arrays: dict[str, np.ndarray], start: int, batch_size: int) -> dict[str, np.ndarray]:
    """Samples [start, start+batch_size), wrapping around so every batch is full (fixed shapes)."""
    n = _count(arrays)
    index = (np.arange(start, start + batch_size) % n).astype(np.int64)
    return {name: np.ascontiguousarray(a[index]) for name, a in arrays.items()}


def eval_set(dataset: Dataset | None, spec: InputSpec, limit: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (at most `limit` samples) and labels for fidelity and the task metric."""
    if dataset is not None and dataset.has("eval"):
        arrays = dataset.split("eval")
        labels = dataset.split_labels("eval")
    else:
        arrays, labels = synthesize(spec, min(limit, SYNTHETIC_EVAL)), None
    n = min(limit, _count(arrays))
    arrays = conform({k: v[:n] for k, v in arrays.items()}, spec)
    return arrays, (labels[:n] if labels is not None else None)


def calib_set(dataset: Dataset | None, spec: InputSpec, limit: int) -> dict[str, np.ndarray]:
    """Calibration inputs: the calib split, else the data's sample inputs, else synthesized."""
    if dataset is not None:
        for name in ("calib", "", "train", "eval"):
            if name in dataset.splits:
                arrays = dataset.splits[name]
                n = min(limit, _count(arrays))
                return conform({k: v[:n] for k, v in arrays.items()}, spec)
    return conform(synthesize(spec, min(limit, SYNTHETIC_CALIB), seed=DEFAULT_SEED + 1), spec)
