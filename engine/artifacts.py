"""Safe model intake: detect the format from bytes, store content-addressed, read the InputSpec."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from engine import safezip, shared
from engine.errors import UserError
from engine.tf_models import KERAS, SAVEDMODEL
from storage.paths import sub_dir
from engine.specs import (
    BATCH_AXIS,
    DEFAULT_INT_RANGE,
    DEFAULT_SEQ_LEN,
    TOKEN_IDS,
    InputSpec,
    TensorSpec,
    conservative_token_range,
    guess_role,
)

# Model formats as stored; the "working" representation used by optimizations and runtimes is
# "onnx" for ONNX models, "torch" (an nn.Module) for the torch three and "tensorflow" for the TensorFlow two.
ONNX, TORCHSCRIPT, EXPORTED, HF = "onnx", "torchscript", "pt2", "hf"
# TensorFlow (the optional extra, requirements-tf.txt): a zipped SavedModel folder, a Keras 3 `.keras` file
TF_FORMATS = frozenset({SAVEDMODEL, KERAS})
_FILE_NAMES = {ONNX: "model.onnx", TORCHSCRIPT: "model.pt", EXPORTED: "model.pt2", KERAS: "model.keras"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ARTIFACT_JSON = "artifact.json"


@dataclass(frozen=True)
class Artifact:
    """A stored model: its format, where it lives, its sha256 and what it takes."""

    format: str
    path: Path  # the model file, or the folder of a Hugging Face model
    sha256: str
    size_bytes: int
    spec: InputSpec
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "spec": self.spec.to_json(),
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            format=data["format"],
            path=Path(data["path"]),
            sha256=data["sha256"],
            size_bytes=int(data["size_bytes"]),
            spec=InputSpec.from_json(data["spec"]),
            info=dict(data.get("info", {})),
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- format detection -------------------------------------------------------------------------


@dataclass(frozen=True)
class _ZipLayout:
    format: str
    root: str  # prefix inside the zip to strip on extraction ("" or "folder/")
    onnx_member: str | None = None


def detect_format(path: Path) -> str:
    """The model format of a file, judged from its bytes; raises UserError for anything else."""
    return _detect(path)[0]


def _detect(path: Path, max_unpacked: int | None = None) -> tuple[str, _ZipLayout | None]:
    label = path.name
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise UserError(f"{label}: the file is empty; upload the model file itself")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        with safezip.open_zip(path, label) as archive:
            layout = _classify_zip(archive, label, max_unpacked)
        return layout.format, layout
    if head == _HDF5_MAGIC:
        raise UserError(
            f"{label}: a legacy Keras .h5 file is not accepted: it can carry pickled Python (Lambda layers); "
            "save the model with model.save('model.keras') or model.export('saved_model') and zip that folder"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise UserError(
            f"{label}: a Python pickle (torch.save) is not accepted, it could run code; "
            "save the model with torch.jit.save, torch.export.save or as ONNX"
        )
    # ONNX is a protobuf ModelProto with no magic number; it starts with a field tag such as
    # ir_version (0x08), opset_import (0x42), producer_name (0x12) or graph (0x3a). The parse proves it.
    if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32", b"\x3a", b"\x42", b"\x52", b"\x72"):
        return ONNX, None
    raise UserError(
        f"{label}: unknown model format; upload ONNX (.onnx or a zip with its external data), "
        "TorchScript (.pt), torch.export (.pt2), a zipped Hugging Face folder, a zipped TensorFlow SavedModel "
        "folder or a Keras .keras file"
    )


def _classify_zip(archive: zipfile.ZipFile, label: str, max_unpacked: int | None) -> _ZipLayout:
    members = safezip.checked_members(archive, label, max_unpacked)
    names = [m.filename for m in members if not m.is_dir()]
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    # torch archives put everything under one top folder named after the file
    if len(tops) == 1:
        top = next(iter(tops))
        inner = {n[len(top) + 1:] for n in names if n.startswith(top + "/")}
        if "archive_format" in inner or "models/model.json" in inner:
            return _ZipLayout(EXPORTED, "")
        if "data.pkl" in inner and any(n.startswith("code/") for n in inner):
            return _ZipLayout(TORCHSCRIPT, "")
        if "data.pkl" in inner:
            raise UserError(
                f"{label}: a torch.save checkpoint (a pickle) is not accepted, it could run code; "
                "save the model with torch.jit.save, torch.export.save or as ONNX"
            )
    # a Keras 3 .keras file is a zip of config.json, metadata.json and model.weights.h5 at its root
    if "config.json" in names and "model.weights.h5" in names:
        return _ZipLayout(KERAS, "")
    saved = [n for n in names if PurePosixPath(n).name == "saved_model.pb"]
    if len(saved) > 1:
        raise UserError(f"{label}: the zip holds {len(saved)} saved_model.pb files; zip one SavedModel folder")
    if saved:
        root = str(PurePosixPath(saved[0]).parent)
        return _ZipLayout(SAVEDMODEL, "" if root == "." else root + "/")
    onnx_files = [n for n in names if n.lower().endswith(".onnx")]
    configs = [n for n in names if PurePosixPath(n).name == "config.json"]
    if len(onnx_files) == 1:
        member = onnx_files[0]
        root = str(PurePosixPath(member).parent)
        return _ZipLayout(ONNX, "" if root == "." else root + "/", member)
    if len(onnx_files) > 1:
        raise UserError(f"{label}: the zip holds {len(onnx_files)} .onnx files; zip one model with its external data")
    if configs:
        config = min(configs, key=len)
        root = str(PurePosixPath(config).parent)
        prefix = "" if root == "." else root + "/"
        weights = [n for n in names if n.startswith(prefix)]
        if any(n.endswith(".safetensors") for n in weights):
            return _ZipLayout(HF, prefix)
        if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in weights):
            raise UserError(
                f"{label}: the Hugging Face folder has only pickled weights (.bin); convert them to "
                "safetensors (model.save_pretrained(..., safe_serialization=True)) and zip again"
            )
        raise UserError(
            f"{label}: the Hugging Face folder has config.json but no *.safetensors weights; save the model "
            "with save_pretrained(..., safe_serialization=True) and zip the whole folder"
        )
    raise UserError(
        f"{label}: the zip holds no model; zip one .onnx file (with its external data) or a Hugging Face "
        "folder with config.json and *.safetensors, or a TensorFlow SavedModel folder (saved_model.pb, variables/)"
    )


# --- intake -----------------------------------------------------------------------------------


def intake(path: str | Path, *, input_spec: str | None = None, seq_len: int | None = None,
           max_unpacked: int | None = None) -> Artifact:
    """Check an untrusted model file, store it under the data folder by sha256, read its InputSpec.

    `max_unpacked` caps an archive's unpacked bytes (default: `safezip.max_unpacked_bytes()`).
    """
    src = Path(path)
    if not src.is_file():
        raise UserError(f"{src}: no such file; give the path of a model file (or 'demo')")
    fmt, layout = _detect(src, max_unpacked)
    shared.refuse_code_format(fmt, src.name)  # before anything stores or loads it
    sha = sha256_file(src)
    dest = sub_dir("models") / sha
    cached = _stored(dest)
    if cached is not None:
        # stored before: the files stay as they are (a running study may be reading them); only this
        # call's --input-spec / --seq-len change the spec it returns
        if input_spec is None:
            return _respec(cached, cached.spec.with_seq_len(_seq_len(cached.info, seq_len, src.name)))
        spec, _ = _inspect(cached.path, fmt, src.name, input_spec, seq_len)
        return _respec(cached, spec)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=dest.parent))
    try:
        model_path = _store(src, fmt, layout, staging, max_unpacked)
        spec, info = _inspect(model_path, fmt, src.name, input_spec, seq_len)
        # an unzipped ONNX model's folder holds its external data files, which count towards its size
        size = folder_size(model_path.parent if fmt == ONNX and layout is not None else model_path)
        artifact = _relocate(Artifact(fmt, model_path, sha, size, spec, info), staging, dest)
        # artifact.json goes in before the rename, so a folder under its sha256 is always complete
        (staging / _ARTIFACT_JSON).write_text(json.dumps(artifact.to_json(), indent=1))
        if dest.exists() and _stored(dest) is None:
            # left incomplete by an interrupted older intake, or its model file went missing: the same
            # bytes uploaded again restore it, and the studies that use it run again
            shutil.rmtree(dest)
        try:
            staging.rename(dest)
        except OSError:
            if _stored(dest) is None:
                raise
            # a concurrent intake stored the same bytes first; its files are identical to ours
        return artifact
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def respec(artifact: Artifact, *, input_spec: str | None, seq_len: int | None) -> Artifact:
    """The stored model with another input spec or sequence length, checked like at intake."""
    label = artifact.path.name
    shared.refuse_code_format(artifact.format, label)
    if input_spec is None:
        return _respec(artifact, artifact.spec.with_seq_len(_seq_len(artifact.info, seq_len, label)))
    spec, _ = _inspect(artifact.path, artifact.format, label, input_spec, seq_len)
    return _respec(artifact, spec)


def load_artifact(folder: Path) -> Artifact:
    return Artifact.from_json(json.loads((folder / _ARTIFACT_JSON).read_text()))


def _stored(folder: Path) -> Artifact | None:
    """The model stored in this folder, if it is whole: its record and the model file (or folder) it names."""
    if not (folder / _ARTIFACT_JSON).is_file():
        return None
    artifact = load_artifact(folder)
    return artifact if artifact.path.exists() else None


def _relocate(artifact: Artifact, old: Path, new: Path) -> Artifact:
    rel = artifact.path.relative_to(old)
    return Artifact(artifact.format, new / rel, artifact.sha256, artifact.size_bytes, artifact.spec, artifact.info)


def _respec(artifact: Artifact, spec: InputSpec) -> Artifact:
    return Artifact(artifact.format, artifact.path, artifact.sha256, artifact.size_bytes, spec, artifact.info)


def _store(src: Path, fmt: str, layout: _ZipLayout | None, staging: Path, max_unpacked: int | None) -> Path:
    label = src.name
    if layout is None:
        target = staging / _FILE_NAMES[fmt]
        shutil.copyfile(src, target)
        return target
    with safezip.open_zip(src, label) as archive:
        members = safezip.checked_members(archive, label, max_unpacked)
        if fmt in (TORCHSCRIPT, EXPORTED, KERAS):
            # torch and Keras read these archives themselves; decompress once to enforce the size cap
            safezip.stream_check(archive, members, label, max_unpacked)
            target = staging / _FILE_NAMES[fmt]
            shutil.copyfile(src, target)
            return target
        folder = staging / {HF: "hf", SAVEDMODEL: "savedmodel"}.get(fmt, "onnx")
        folder.mkdir()
        safezip.safe_extract(archive, members, folder, label, max_unpacked, strip_prefix=layout.root)
    if fmt in (HF, SAVEDMODEL):
        return folder
    assert layout.onnx_member is not None
    return folder / PurePosixPath(layout.onnx_member).name


def _inspect(model_path: Path, fmt: str, label: str, input_spec: str | None,
             seq_len: int | None) -> tuple[InputSpec, dict[str, Any]]:
    explicit = InputSpec.parse(input_spec, seq_len) if input_spec else None
    found: InputSpec | None
    module: Any = None
    if fmt == ONNX:
        found, info = inspect_onnx(model_path, label)
    elif fmt in TF_FORMATS:
        from engine import tf_models

        found, info = tf_models.inspect(model_path, fmt, label)
    else:
        from engine import modules

        found, info, module = modules.inspect_torch(model_path, fmt, label)
    if explicit is not None:
        if found is not None:
            _check_explicit(explicit, found, fmt, label)
        spec = explicit.with_outputs(found.outputs) if found is not None else explicit
    elif found is not None:
        spec = found
    else:
        raise UserError(
            f"{label}: the model stores no example inputs; give them with --input-spec 'x:float32[B,3,224,224]'"
        )
    seq = _seq_len(info, seq_len, label)
    if seq is not None:
        spec = spec.with_seq_len(seq)
    if module is not None:
        from engine import modules

        if isinstance(module, modules.HFWrapper):
            module.input_names = spec.names  # an explicit spec may order the inputs differently
        spec = spec.with_outputs(modules.probe_outputs(module, spec, label))
    return spec, info


def _seq_len(info: dict[str, Any], seq_len: int | None, label: str) -> int | None:
    """--seq-len, else a default that fits the model's position table (None: the spec's default)."""
    max_pos = info.get("max_position_embeddings")
    if not max_pos:
        return seq_len
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, int(max_pos))
    if seq_len > max_pos:
        raise UserError(
            f"{label}: --seq-len {seq_len} is longer than the model's max_position_embeddings ({max_pos}); "
            f"use --seq-len {max_pos} or less"
        )
    return seq_len


def _check_explicit(explicit: InputSpec, found: InputSpec, fmt: str, label: str) -> None:
    """An explicit spec must agree with what the model declares: count, rank and fixed dims.

    ONNX graphs, TensorFlow signatures and .pt2 programs also fix dtypes, and a fixed dimension there may not be
    made dynamic; ONNX Runtime and TensorFlow signatures feed by name, so their names must match too. TorchScript
    and Hugging Face models take positional tensors, and the trial run in _inspect checks the rest.
    """
    fix = "; fix --input-spec or leave it out"
    if len(explicit.inputs) != len(found.inputs):
        raise UserError(
            f"{label}: --input-spec gives {len(explicit.inputs)} inputs but the model takes "
            f"{len(found.inputs)} ({found.describe()}){fix}"
        )
    pairs = list(zip(explicit.inputs, found.inputs, strict=True))
    if fmt == ONNX or fmt in TF_FORMATS:
        if sorted(explicit.names) != sorted(found.names):
            raise UserError(
                f"{label}: --input-spec names inputs {', '.join(explicit.names)} but the model's inputs are "
                f"{', '.join(found.names)}{fix}"
            )
        by_name = {t.name: t for t in found.inputs}
        pairs = [(t, by_name[t.name]) for t in explicit.inputs]
    strict = fmt in (ONNX, EXPORTED) or fmt in TF_FORMATS
    for mine, theirs in pairs:
        if len(mine.shape) != len(theirs.shape):
            raise UserError(
                f"{label}: --input-spec '{mine.describe()}' has rank {len(mine.shape)} but the model's "
                f"input '{theirs.name}' is {theirs.describe()}{fix}"
            )
        if strict and mine.dtype != theirs.dtype:
            raise UserError(
                f"{label}: --input-spec '{mine.describe()}' has dtype {mine.dtype} but the model's "
                f"input '{theirs.name}' is {theirs.describe()}{fix}"
            )
        for a, b in zip(mine.shape, theirs.shape, strict=True):
            if isinstance(b, int) and (a != b if isinstance(a, int) else strict):
                raise UserError(
                    f"{label}: --input-spec '{mine.describe()}' does not match the model's input "
                    f"{theirs.describe()}{fix}"
                )


# --- ONNX -------------------------------------------------------------------------------------

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                10: "float16", 11: "float64", 16: "bfloat16"}


def inspect_onnx(path: Path, label: str) -> tuple[InputSpec, dict[str, Any]]:
    """Parse and check an ONNX file (external data must stay inside its folder); read its spec."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"{label}: not a valid ONNX model (truncated or corrupt: {exc}); export it again") from exc
    if not model.graph.node and not model.graph.input:
        raise UserError(f"{label}: not a valid ONNX model (no graph); export it again")
    _check_names_are_text(model, label)
    _check_external_data(model, path.parent, label)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise UserError(f"{label}: ONNX model fails the checker ({str(exc).splitlines()[0]}); export it again") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    gather_ranges = _gather_index_ranges(model)
    inputs = []
    for vi in graph.input:
        if vi.name in initializers:
            continue
        inputs.append(_input_roles(_value_info_spec(vi, gather_ranges.get(vi.name), label),
                                   gather_ranges.get(vi.name)))
    outputs = tuple(_value_info_spec(vi, None, label) for vi in graph.output)
    params = sum(int(_numel(t.dims)) for t in graph.initializer)
    info = {
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "parameters": params,
        "external_data": any(_is_external(t) for t in graph.initializer),
    }
    return InputSpec(tuple(inputs), outputs), info


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _is_external(tensor: Any) -> bool:
    return bool(tensor.data_location == 1)  # TensorProto.EXTERNAL


def _check_names_are_text(model: Any, label: str) -> None:
    """Protobuf hands a string field that is not UTF-8 over as bytes: names and data locations must be text."""
    graph = model.graph
    values = [v.name for v in (*graph.input, *graph.output, *graph.initializer)]
    values += [e.value for t in graph.initializer for e in t.external_data]
    for value in values:
        if not isinstance(value, str):
            raise UserError(f"{label}: the model names a tensor or file with bytes that are not UTF-8 text "
                            f"('{safezip.shown(value)}'); export it again")


def _check_external_data(model: Any, folder: Path, label: str) -> None:
    """Every external tensor's file lies inside the model's folder and holds the bytes its dims need."""
    from onnx.helper import tensor_dtype_to_np_dtype

    root = folder.resolve()
    for tensor in model.graph.initializer:
        if not _is_external(tensor):
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        name, shown = safezip.shown(tensor.name), safezip.shown(location)
        target = (root / location).resolve()
        if not location or root not in target.parents:
            raise UserError(
                f"{label}: external data '{shown}' of tensor '{name}' lies outside the model's "
                "folder; keep the data files beside the .onnx file"
            )
        if not target.is_file():
            raise UserError(
                f"{label}: external data file '{shown}' is missing; upload a zip holding the .onnx "
                "file and its data files"
            )
        try:
            itemsize: int | None = tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, ValueError, TypeError):  # a type numpy has no dtype for: the checker judges it
            itemsize = None
        needed = _numel(tensor.dims) * itemsize if itemsize is not None else None
        try:
            offset = int(entries.get("offset") or 0)
            length = int(entries["length"]) if entries.get("length") else needed
        except ValueError:
            raise UserError(f"{label}: external data of tensor '{name}' has an offset or length that is not a "
                            "number; export the model again") from None
        size = target.stat().st_size
        end = offset + (length if length is not None else 0)
        if offset < 0 or end < offset or end > size or (needed is not None and end - offset < needed):
            # ONNX Runtime would read past the file, or allocate what the dims claim and find less
            raise UserError(f"{label}: tensor '{name}' needs {needed if needed is not None else end - offset:,} bytes "
                            f"at offset {offset:,} of '{shown}', which holds {size:,}; upload the complete data "
                            "file written with the .onnx file")


def _value_info_spec(vi: Any, value_range: tuple[int, int] | None, label: str) -> TensorSpec:
    ttype = vi.type.tensor_type
    dtype = _ONNX_DTYPES.get(ttype.elem_type)
    if dtype is None:
        raise UserError(
            f"{label}: input/output '{safezip.shown(vi.name)}' has an unsupported element type {ttype.elem_type}; "
            "export the model with float, integer or bool inputs and outputs"
        )
    dims: list[int | str] = []
    for i, d in enumerate(ttype.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(BATCH_AXIS if i == 0 else (d.dim_param or f"dim{i}"))
    if value_range is None and dtype.startswith(("int", "uint")):
        value_range = (0, 2) if "mask" in vi.name.lower() or "type" in vi.name.lower() else DEFAULT_INT_RANGE
    return TensorSpec(vi.name, dtype, tuple(dims), value_range)


def _input_roles(tensor: TensorSpec, table: tuple[int, int] | None) -> TensorSpec:
    """The input with the role its name gives it; token ids that index an embedding `table` are bounded by it
    and synthesized inside it without the ids a tokenizer likely reserves (the graph does not say which)."""
    role = guess_role(tensor.name, tensor.dtype)
    if role is None:
        return tensor
    if role == TOKEN_IDS and table is not None:
        # an id outside the table fails in every runtime: uploaded data is checked against it
        return replace(tensor, value_range=conservative_token_range(table[1]), bound=table, role=role)
    return replace(tensor, role=role)


def _gather_index_ranges(model: Any) -> dict[str, tuple[int, int]]:
    """Integer inputs used as Gather indices into an initializer (an embedding): range [0, rows)."""
    sizes = {t.name: int(t.dims[0]) for t in model.graph.initializer if len(t.dims) >= 1}
    ranges: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in sizes:
            rows = sizes[node.input[0]]
            previous = ranges.get(node.input[1])
            ranges[node.input[1]] = (0, min(rows, previous[1]) if previous else rows)
    return ranges
