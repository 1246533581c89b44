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
from engine.specs import (
    ATTENTION_MASK,
    DEFAULT_SEQ_LEN,
    POSITIONS,
    TOKEN_IDS,
    TOKEN_TYPES,
    InputSpec,
    TensorSpec,
)

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


def synthesize(spec: InputSpec, count: int, seed: int = DEFAULT_SEED, padding: float = 0.0) -> dict[str, np.ndarray]:
    """`count` samples per input from a fixed seed, shaped like a tokenizer's output where the input has a role
    (masks all ones, token types zeros, positions 0..S-1, token ids uniform over the ordinary ids); other
    floats normal, other integers uniform inside their range.

    `padding`: the fraction of each sequence's trailing positions that are padding (mask 0, the pad id).
    """
    check_padding(padding)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        # the first axis counts samples whether or not the model fixes its batch size
        per_sample = [d if isinstance(d, int) else (spec.seq_len or DEFAULT_SEQ_LEN) for d in tensor.shape[1:]]
        out[tensor.name] = _values(tensor, (count, *per_sample), rng)
    if padding:
        for tensor in spec.inputs:
            array = out[tensor.name]
            pad = padded_positions(array.shape, padding)
            if pad and tensor.role == ATTENTION_MASK:
                array[..., -pad:] = 0
            elif pad and tensor.role == TOKEN_IDS:
                array[..., -pad:] = _pad_id(tensor)
    return out


def _values(tensor: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = _numpy_dtype(tensor.dtype)
    low, high = tensor.value_range or (0, 2)
    if tensor.role == ATTENTION_MASK:
        return np.ones(shape, dtype=dtype)
    if tensor.role == TOKEN_TYPES:
        return np.full(shape, low, dtype=dtype)
    if tensor.role == POSITIONS:
        steps = shape[-1] if len(shape) > 1 else 1
        positions = np.minimum(np.arange(low, low + steps), high - 1)  # a table shorter than S repeats its last
        return np.ascontiguousarray(np.broadcast_to(positions, shape), dtype=dtype)
    if tensor.role == TOKEN_IDS and tensor.value_range is not None:
        ordinary = _ordinary_ids(tensor.value_range, tensor.special_ids)
        return ordinary[rng.integers(0, ordinary.size, size=shape)].astype(dtype)
    if tensor.value_range is not None:
        return rng.integers(low, high, size=shape).astype(dtype)
    if tensor.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(size=shape).astype(np.float32).astype(dtype)


def _ordinary_ids(value_range: tuple[int, int], special_ids: tuple[int, ...]) -> np.ndarray:
    """The token ids synthesized sequences draw from: the range without the special ids inside it."""
    ids = np.arange(*value_range, dtype=np.int64)
    kept = np.setdiff1d(ids, np.asarray(special_ids, dtype=np.int64), assume_unique=True)
    return kept if kept.size else ids


def _pad_id(tensor: TensorSpec) -> int:
    return tensor.pad_id if tensor.pad_id is not None else 0  # BERT's [PAD]: the common case for an unknown one


def check_padding(padding: float) -> None:
    if not 0.0 <= padding < 1.0:  # NaN fails too
        raise UserError(f"--padding must be a fraction in [0, 1), got {padding:g}")


def padded_positions(shape: tuple[int, ...], padding: float) -> int:
    """How many trailing positions of a sequence of shape[-1] are padding: round(padding·S), leaving at least
    one token (a row of only padding would divide by a zero token count in most poolers and softmaxes)."""
    if len(shape) < 2 or not padding:
        return 0
    return min(round(padding * shape[-1]), shape[-1] - 1)


def attention_mask(spec: InputSpec, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The [N, S] attention mask among the inputs (the first input whose role is a mask), or None."""
    for tensor in spec.inputs:
        if tensor.role == ATTENTION_MASK and tensor.name in arrays and arrays[tensor.name].ndim == 2:
            return arrays[tensor.name]
    return None


def synthesis_summary(spec: InputSpec, padding: float = 0.0) -> str:
    """What synthesize() makes of each input, as one sentence for a result's notes."""
    seq = spec.seq_len or DEFAULT_SEQ_LEN
    parts = []
    for tensor in spec.inputs:
        low, high = tensor.value_range or (0, 2)
        if tensor.role == ATTENTION_MASK:
            parts.append(f"{tensor.name} all ones")
        elif tensor.role == TOKEN_TYPES:
            parts.append(f"{tensor.name} {'zeros' if low == 0 else f'all {low}'}")
        elif tensor.role == POSITIONS:
            parts.append(f"{tensor.name} 0..S-1" if low == 0 else f"{tensor.name} {low}..{low}+S-1")
        elif tensor.role == TOKEN_IDS and tensor.value_range is not None:
            top = tensor.bound[1] if tensor.bound else high
            without = " without special ids" if low > 0 or high < top or tensor.special_ids else ""
            parts.append(f"{tensor.name} uniform in [{low}, {high}){without}")
        elif tensor.value_range is not None:
            parts.append(f"{tensor.name} uniform in [{low}, {high})")
        elif tensor.dtype == "bool":
            parts.append(f"{tensor.name} random booleans")
        else:
            parts.append(f"{tensor.name} normal(0, 1)")
    text = "inputs synthesized: " + ", ".join(parts)
    padded = [t for t in spec.inputs if t.role in (ATTENTION_MASK, TOKEN_IDS) and len(t.shape) >= 2]
    if padded:
        text += f", padding {padding:.0%}"
    if padding and padded:
        last = padded[0].shape[-1]
        length = last if isinstance(last, int) else seq
        what = [f"{t.name} 0" if t.role == ATTENTION_MASK else
                f"{t.name} {_pad_id(t)}" + ("" if t.pad_id is not None else " (assumed pad id)") for t in padded]
        text += f" (the last {padded_positions((1, length), padding)} of {length} positions: {', '.join(what)})"
    elif padding:
        text += f"; padding {padding:.0%} not applied: no attention mask or token ids to pad"
    return text


def roles(spec: InputSpec) -> dict[str, str]:
    """The inputs whose role was recognised, by name."""
    return {t.name: t.role for t in spec.inputs if t.role is not None}


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


def eval_set(dataset: Dataset | None, spec: InputSpec, limit: int,
             padding: float = 0.0) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (at most `limit` samples) and labels for fidelity and the task metric; `padding` applies to
    synthesized inputs only (a data file's masks are its own)."""
    if dataset is not None and eval_from_data(dataset):
        arrays = dataset.split("eval")
        labels = dataset.split_labels("eval")
    else:
        arrays, labels = synthesize(spec, min(limit, SYNTHETIC_EVAL), padding=padding), None
    n = min(limit, _count(arrays))
    arrays = conform({k: v[:n] for k, v in arrays.items()}, spec)
    return arrays, (labels[:n] if labels is not None else None)


def eval_from_data(dataset: Dataset | None) -> bool:
    """Whether the evaluation (and timed) inputs come from the data file rather than synthesize()."""
    return dataset is not None and dataset.has("eval")


def calib_set(dataset: Dataset | None, spec: InputSpec, limit: int, padding: float = 0.0) -> dict[str, np.ndarray]:
    """Calibration inputs: the calib split, else the data's sample inputs, else synthesized like the
    evaluation set (another seed, the same padding)."""
    if dataset is not None:
        for name in ("calib", "", "train", "eval"):
            if name in dataset.splits:
                arrays = dataset.splits[name]
                n = min(limit, _count(arrays))
                return conform({k: v[:n] for k, v in arrays.items()}, spec)
    return conform(synthesize(spec, min(limit, SYNTHETIC_CALIB), seed=DEFAULT_SEED + 1, padding=padding), spec)
