"""Fuzzing of intake: every mutated upload must end as a stored model or as one line of UserError.

Seeds are tiny valid files made from code: the two-layer MLP as ONNX, as ONNX with its weights in an external
data file (zipped), as TorchScript and as torch.export (.pt2); a two-layer BERT classifier as a zipped Hugging
Face folder (config.json + model.safetensors); and an .npz of data for the MLP. Each input is a seed changed by
one to three mutations: byte-level (bit flips, truncation, interesting integers, splices, insertions,
deletions), zip-level (a member's bytes, duplicate member names, dropped, renamed or added members, another
compression method, lying sizes, offsets and counts in the local, central and end records) and
format-aware (the ONNX protobuf's fields, config.json's values, the safetensors length prefix and JSON header,
the .npy header's shape, dtype and version, the JSON members of a .pt2).

Models go through `engine.artifacts.intake` and data through `engine.data.load_npz`, the entry points the
CLI's and the dashboard's inspecting child runs. Here they run in a worker process with an address-space
limit, many inputs per worker: a segfault or a hang is recorded for the input that caused it and a fresh
worker takes the next input. Outcomes: `ok` (a model or dataset), `user-error` (a one-line UserError), and
the failures `multi-line` (a UserError of several lines), `exception` (any other exception: a traceback),
`oom` (an allocation past the limit: a size not checked before allocating), `crash` and `hang`.
tests/engine/test_fuzz_intake.py draws the same mutations with hypothesis, fewer of them, on every CI run.

    .venv/bin/python -m benchmarks.fuzz_intake [--count 2000] [--formats onnx,hf-zip,...] [--seed 0]
        [--timeout 60] [--memory-mb 3072] [--out PATH]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import ROOT, command_line, load_state, table, write_json

# Kinds of input, the file name each is uploaded under, and the spec .npz data is checked against.
KINDS = {"onnx": "model.onnx", "onnx-zip": "model.zip", "hf-zip": "model.zip", "npz": "data.npz",
         "torchscript": "model.pt", "pt2": "model.pt2"}
NPZ_SPEC = "x:float32[B,16]"
GOOD = ("ok", "user-error")
FAILURES = ("multi-line", "exception", "oom", "crash", "hang")
# The worker's address-space allowance beyond what its imports took: a tiny input never needs more.
DEFAULT_MEMORY_MB = 3072


class Draw(Protocol):
    """Where a mutation's choices come from: a seeded random.Random here, hypothesis in the tests."""

    def integer(self, low: int, high: int) -> int: ...  # inclusive

    def choice(self, options: Sequence[Any]) -> Any: ...


class RandomDraw:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]


# --- byte-level mutations ---------------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               2**40, 2**63 - 1, 2**64 - 1)


def _pos(data: bytes, d: Draw, width: int = 1) -> int:
    return d.integer(0, max(0, len(data) - width))


def flip_bits(data: bytes, d: Draw) -> bytes:
    buf = bytearray(data or b"\0")
    for _ in range(d.integer(1, 8)):
        buf[_pos(buf, d)] ^= 1 << d.integer(0, 7)
    return bytes(buf)


def truncate(data: bytes, d: Draw) -> bytes:
    return data[: d.integer(0, max(0, len(data) - 1))]


def put_integer(data: bytes, d: Draw) -> bytes:
    width = d.choice((1, 2, 4, 8))
    value = d.choice(INTERESTING) & ((1 << (8 * width)) - 1)
    at = _pos(data, d, width)
    return data[:at] + value.to_bytes(width, "little") + data[at + width:]


def splice(data: bytes, d: Draw) -> bytes:
    start = _pos(data, d)
    end = d.integer(start, min(len(data), start + 4096))
    at = _pos(data, d)
    return data[:at] + data[start:end] + data[at:]


def insert_bytes(data: bytes, d: Draw) -> bytes:
    at = _pos(data, d)
    return data[:at] + bytes(d.integer(0, 255) for _ in range(d.integer(1, 16))) + data[at:]


def delete_bytes(data: bytes, d: Draw) -> bytes:
    at = _pos(data, d)
    return data[:at] + data[at + d.integer(1, 256):]


BYTE_MUTATIONS: dict[str, Callable[[bytes, Draw], bytes]] = {
    "flip-bits": flip_bits, "truncate": truncate, "put-integer": put_integer, "splice": splice,
    "insert-bytes": insert_bytes, "delete-bytes": delete_bytes,
}


def some_bytes(data: bytes, d: Draw) -> bytes:
    return BYTE_MUTATIONS[d.choice(sorted(BYTE_MUTATIONS))](data, d)


# --- zip-level mutations ----------------------------------------------------------------------------------

Member = tuple[str, bytes, int]  # name, content, compression


def read_members(data: bytes) -> list[Member]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(i.filename, archive.read(i), i.compress_type) for i in archive.infolist()]


def write_members(members: Sequence[Member]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, content, compression in members:
            archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), content, compress_type=compression)
    return out.getvalue()


def _pick(members: list[Member], d: Draw, pattern: str = "") -> int:
    matching = [i for i, m in enumerate(members) if re.search(pattern, m[0])] or list(range(len(members)))
    return int(d.choice(matching))


def member_bytes(data: bytes, d: Draw, pattern: str = "",
                 mutate: Callable[[bytes, Draw], bytes] = some_bytes) -> bytes:
    members = read_members(data)
    i = _pick(members, d, pattern)
    name, content, compression = members[i]
    members[i] = (name, mutate(content, d), compression)
    return write_members(members)


def duplicate_member(data: bytes, d: Draw) -> bytes:
    members = read_members(data)
    i = _pick(members, d)
    name, content, compression = members[i]
    copy = (name, d.choice((b"", some_bytes(content, d), members[_pick(members, d)][1])), compression)
    members.insert(d.choice((i, i + 1, len(members))), copy)
    return write_members(members)


def drop_member(data: bytes, d: Draw) -> bytes:
    members = read_members(data)
    del members[_pick(members, d)]
    return write_members(members)


def rename_member(data: bytes, d: Draw) -> bytes:
    members = read_members(data)
    i = _pick(members, d)
    name, content, compression = members[i]
    top, _, rest = name.partition("/")
    new = d.choice((f"../{name}", f"/{name}", name.replace("/", "\\"), f"{name}/", "", f"{name}\n.x", rest or top,
                    f"{top}/../{rest}", members[_pick(members, d)][0], name.upper(), "a" * 300, f"C:{name}",
                    f"{top}/sub/{rest}", f"{name}\x00"))
    members[i] = (new, content, compression)
    return write_members(members)


def add_member(data: bytes, d: Draw) -> bytes:
    members = read_members(data)
    top = members[0][0].partition("/")[0] if members and "/" in members[0][0] else ""
    name = d.choice(("junk.bin", "config.json", "model.onnx", "model.safetensors", "x.npy", "labels.npy",
                     "data.pkl", "code/evil.py", "archive_format", "models/model.json", "sub/", "pytorch_model.bin"))
    name = d.choice((name, f"{top}/{name}" if top else name))
    content = d.choice((b"", b"\x80\x02}q.", b"{}", bytes(range(256)), members[_pick(members, d)][1]))
    members.insert(d.integer(0, len(members)), (name, content, d.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))))
    return write_members(members)


def recompress(data: bytes, d: Draw) -> bytes:
    members = read_members(data)
    i = _pick(members, d)
    name, content, _ = members[i]
    members[i] = (name, content, d.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                           zipfile.ZIP_LZMA)))
    return write_members(members)


# (offset, width) of the fields worth lying in: versions, flags, method, CRC, sizes, name and extra lengths,
# offsets and counts.
_RECORDS = {
    b"PK\x03\x04": ((4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)),
    b"PK\x01\x02": ((6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (34, 2), (38, 4),
                    (42, 4)),
    b"PK\x05\x06": ((4, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)),
}


def zip_header_field(data: bytes, d: Draw) -> bytes:
    """An interesting integer in one field of a local header, a central directory entry or the end record."""
    found = [(at, fields) for sig, fields in _RECORDS.items() for at in _find_all(data, sig)]
    if not found:
        return put_integer(data, d)
    at, fields = d.choice(found)
    offset, width = d.choice(fields)
    value = d.choice(INTERESTING) & ((1 << (8 * width)) - 1)
    if d.integer(0, 2) == 0:  # near the true value: off by a little
        old = int.from_bytes(data[at + offset:at + offset + width], "little")
        value = max(0, old + d.choice((-2, -1, 1, 2, 64))) & ((1 << (8 * width)) - 1)
    at += offset
    return data[:at] + value.to_bytes(width, "little") + data[at + width:]


def _find_all(data: bytes, sig: bytes) -> list[int]:
    out, at = [], data.find(sig)
    while at >= 0:
        out.append(at)
        at = data.find(sig, at + 1)
    return out


ZIP_MUTATIONS: dict[str, Callable[[bytes, Draw], bytes]] = {
    "member-bytes": member_bytes, "duplicate-member": duplicate_member, "drop-member": drop_member,
    "rename-member": rename_member, "add-member": add_member, "recompress": recompress,
    "zip-header": zip_header_field,
}


# --- format-aware mutations -------------------------------------------------------------------------------

_JSON_VALUES: tuple[Any, ...] = (0, -1, 1, 2, 2**31, 2**63, 10**12, 10**30, 1.5, -0.0, "", "x", None, True, False,
                                 [], {}, [1, 2, 3], {"a": 1}, "float64", "../x")


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value[:64]):
            yield from _paths(child, (*path, i))


def mutate_json(value: Any, d: Draw, keys: Sequence[str] = ()) -> Any:
    """One change somewhere in a JSON value: a key set to an odd value, deleted, a list item repeated, a
    nesting too deep to parse. `keys` are names worth aiming at (sizes in a config)."""
    paths = [p for p in _paths(value) if p]
    aimed = [p for p in paths if p and p[-1] in keys]
    if not paths or d.integer(0, 3) == 0:
        return d.choice(([value], [], "x", None, 7, "[" * 5000))
    path = d.choice(aimed if aimed and d.integer(0, 1) else paths)
    *parents, last = path
    holder = value
    for key in parents:
        holder = holder[key]
    action = d.integer(0, 9)
    if action == 0 and isinstance(holder, dict):
        del holder[last]
    elif action == 1 and isinstance(holder, list):
        holder.insert(last, holder[last])
    elif action == 2:
        nested: Any = 1
        for _ in range(3000):
            nested = [nested]
        holder[last] = nested
    else:
        holder[last] = d.choice(_JSON_VALUES)
    return value


def _json_bytes(value: Any) -> bytes:
    if isinstance(value, str) and value.startswith("[" * 100):  # a nesting too deep: raw text
        return value.encode()
    return json.dumps(value).encode()


CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "num_labels", "id2label", "model_type",
               "architectures", "hidden_act", "layer_norm_eps", "dtype", "pad_token_id", "tie_word_embeddings",
               "position_embedding_type", "auto_map")


def hf_config(data: bytes, d: Draw) -> bytes:
    def change(content: bytes, d: Draw) -> bytes:
        config = json.loads(content)
        if d.integer(0, 3) == 0:
            kind = d.choice(("gpt2", "t5", "llama", "albert", "distilbert", "bart", "vit", "whisper", "evilnet",
                             "roberta", "electra", "bert"))
            config["model_type"] = kind
            config["architectures"] = d.choice(([], ["BertModel"], ["GPT2LMHeadModel"], ["EvilModel"], "x"))
            return _json_bytes(config)
        return _json_bytes(mutate_json(config, d, CONFIG_KEYS))

    return member_bytes(data, d, r"config\.json$", change)


def safetensors_header(data: bytes, d: Draw) -> bytes:
    """The 8-byte length prefix, the JSON header's values (re-encoded with a true prefix), or its raw bytes."""
    def change(content: bytes, d: Draw) -> bytes:
        length = int.from_bytes(content[:8], "little")
        header, rest = content[8:8 + length], content[8 + length:]
        how = d.integer(0, 2)
        if how == 0:
            new = d.choice((0, 1, 2, length - 1, length + 1, length + 8, len(content), 2**32, 2**63, 2**64 - 1))
            return (new % 2**64).to_bytes(8, "little") + content[8:]
        if how == 1:
            text = _json_bytes(mutate_json(json.loads(header), d, ("shape", "dtype", "data_offsets",
                                                                    "__metadata__")))
            return len(text).to_bytes(8, "little") + text + rest
        return content[:8] + some_bytes(header, d) + rest

    return member_bytes(data, d, r"\.safetensors$", change)


_NPY_SHAPES: tuple[Any, ...] = ((10**12, 4), (2**32, 2**32), (), (0, 16), (-1, 16), (40, 16, 1), (40,), (2**62,),
                                (40, 17), (41, 16), "x", [40, 16])
_NPY_DESCRS: tuple[Any, ...] = ("|O", "<U5", "|S0", "|V0", "|V8", "<f8", ">f4", "<f2", "<c8", "|b1", "bogus",
                                "<M8[s]", [("a", "<f4")], "<i8", "|u1")


def npy_header(data: bytes, d: Draw) -> bytes:
    """An .npy member's header dict (shape, dtype, order), its version bytes, its length field, or its data."""
    def change(content: bytes, d: Draw) -> bytes:
        import ast

        major = content[6]
        width = 2 if major == 1 else 4
        length = int.from_bytes(content[8:8 + width], "little")
        start = 8 + width
        header, body = content[start:start + length], content[start + length:]
        how = d.integer(0, 4)
        if how == 0:
            fields = ast.literal_eval(header.decode("latin1"))
            key = d.choice(("shape", "descr", "fortran_order"))
            fields[key] = d.choice(_NPY_SHAPES if key == "shape" else _NPY_DESCRS if key == "descr" else
                                   (True, 1, "x", None))
            text = repr(fields).encode("latin1")
            text += b" " * (-(start + len(text) + 1) % 64) + b"\n"
            return content[:8] + len(text).to_bytes(width, "little") + text + body
        if how == 1:
            return content[:6] + bytes((d.choice((0, 1, 2, 3, 9, 255)), d.choice((0, 1)))) + content[8:]
        if how == 2:
            return content[:8] + (d.choice(INTERESTING) % 2 ** (8 * width)).to_bytes(width, "little") + content[start:]
        if how == 3:
            return content[:start + length] + body[: d.integer(0, max(0, len(body) - 1))]
        return content[:start] + some_bytes(header, d) + body

    return member_bytes(data, d, r"\.npy$", change)


def onnx_fields(data: bytes, d: Draw) -> bytes:
    """One field of the ONNX protobuf set to an odd value: a dim, an element type, an initializer's dims,
    type, data or location, a node's op or inputs, the opset, the IR version, the graph's inputs or outputs."""
    import onnx

    model = onnx.ModelProto.FromString(data)
    graph = model.graph
    how = d.integer(0, 9)
    if how == 0 and graph.input:
        dims = d.choice(graph.input).type.tensor_type.shape.dim
        if dims:
            dim = d.choice(dims)
            if d.integer(0, 1):
                dim.dim_value = d.choice((0, 1, 3, 2**40, 2**62))
            else:
                dim.dim_param = d.choice(("", "x", "batch", "\n"))
    elif how == 1 and (graph.input or graph.output):
        value = d.choice(list(graph.input) + list(graph.output))
        value.type.tensor_type.elem_type = d.integer(0, 30)
    elif how in (2, 3) and graph.initializer:
        tensor = d.choice(graph.initializer)
        what = d.integer(0, 4)
        if what == 0 and tensor.dims:
            tensor.dims[d.integer(0, len(tensor.dims) - 1)] = d.choice((0, 1, 2**31, 2**40, -1))
        elif what == 1:
            tensor.data_type = d.integer(0, 30)
        elif what == 2:
            tensor.raw_data = tensor.raw_data[: d.integer(0, len(tensor.raw_data))]
        elif what == 3:
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", d.choice(("../x.bin", "/etc/passwd", "missing.bin", "net.data", ""))),
                               ("offset", str(d.choice((0, 8, 2**40)))), ("length", str(d.choice((0, 64, 2**40))))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        else:
            tensor.dims.append(d.choice((1, 2, 10**9)))
    elif how == 4 and graph.node:
        node = d.choice(graph.node)
        node.op_type = d.choice(("Foo", "Gemm", "Reshape", "Loop", "", "If", "Gather"))
    elif how == 5 and graph.node:
        node = d.choice(graph.node)
        if node.input:
            node.input[d.integer(0, len(node.input) - 1)] = d.choice(("missing", "", node.output[0] if node.output
                                                                      else "x"))
    elif how == 6:
        for opset in model.opset_import:
            opset.version = d.choice((0, 1, 7, 10**6))
            opset.domain = d.choice(("", "ai.onnx", "com.evil"))
    elif how == 7:
        model.ir_version = d.choice((0, 1, 3, 100, 2**62))
    elif how == 8:
        target = d.choice((graph.input, graph.output, graph.node, graph.initializer))
        if len(target):
            del target[d.integer(0, len(target) - 1)]
    else:
        graph.node.extend(list(graph.node))  # every output produced twice
    return bytes(model.SerializeToString())


def onnx_member(data: bytes, d: Draw) -> bytes:
    return member_bytes(data, d, r"\.onnx$", onnx_fields)


def json_member(data: bytes, d: Draw) -> bytes:
    def change(content: bytes, d: Draw) -> bytes:
        return _json_bytes(mutate_json(json.loads(content), d))

    return member_bytes(data, d, r"\.json$", change)


# The mutations each kind draws from; a format-aware one listed twice ("-2") is drawn twice as often.
MUTATIONS: dict[str, dict[str, Callable[[bytes, Draw], bytes]]] = {
    "onnx": {**BYTE_MUTATIONS, "onnx-field": onnx_fields, "onnx-field-2": onnx_fields},
    "onnx-zip": {**BYTE_MUTATIONS, **ZIP_MUTATIONS, "onnx-field": onnx_member,
                 "data-bytes": lambda data, d: member_bytes(data, d, r"\.data$", d.choice((truncate, some_bytes)))},
    "hf-zip": {**BYTE_MUTATIONS, **ZIP_MUTATIONS, "config-json": hf_config, "config-json-2": hf_config,
               "safetensors-header": safetensors_header, "safetensors-header-2": safetensors_header,
               "safetensors-bytes": lambda data, d: member_bytes(data, d, r"\.safetensors$")},
    "npz": {**BYTE_MUTATIONS, **ZIP_MUTATIONS, "npy-header": npy_header, "npy-header-2": npy_header},
    "torchscript": {**BYTE_MUTATIONS, **ZIP_MUTATIONS,
                    "pickle-bytes": lambda data, d: member_bytes(data, d, r"pkl$"),  # and .debug_pkl
                    "code-bytes": lambda data, d: member_bytes(data, d, r"code/")},
    "pt2": {**BYTE_MUTATIONS, **ZIP_MUTATIONS, "json-member": json_member, "json-member-2": json_member},
}


def mutate(kind: str, seed: bytes, d: Draw) -> tuple[str, bytes]:
    """One to three mutations of the seed; a format-aware one that cannot parse what an earlier one left
    falls back to bytes. Returns the mutations' names and the input."""
    names, data = [], seed
    for _ in range(d.choice((1, 1, 1, 2, 3))):
        name = d.choice(sorted(MUTATIONS[kind]))
        try:
            data = MUTATIONS[kind][name](data, d)
        except Exception:  # noqa: BLE001 - the mutator's own parse of an input broken earlier: mutate bytes
            name, data = "flip-bits", flip_bits(data, d)
        names.append(name)
    return "+".join(names), data


# --- running one input ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # ok, user-error, or one of FAILURES
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.status in GOOD


def run_one(kind: str, path: Path) -> Outcome:
    """The entry point a user's file goes through, in this process; every ending classified."""
    from engine.artifacts import intake
    from engine.data import load_npz
    from engine.errors import UserError, is_out_of_memory
    from engine.specs import InputSpec

    try:
        if kind == "npz":
            load_npz(path, InputSpec.parse(NPZ_SPEC))
        else:
            intake(path)
    except UserError as exc:
        message = str(exc)
        if not message.strip() or "\n" in message or "\r" in message:
            return Outcome("multi-line", message[:2000])
        return Outcome("user-error", message[:500])
    except MemoryError:
        return Outcome("oom", traceback.format_exc()[-3000:])
    except Exception as exc:  # noqa: BLE001 - the finding this harness looks for
        status = "oom" if is_out_of_memory(str(exc)) else "exception"
        return Outcome(status, traceback.format_exc()[-3000:])
    return Outcome("ok")


@contextlib.contextmanager
def memory_cap(extra_mb: int) -> Iterator[None]:
    """Lower this process's address-space limit to its current size plus `extra_mb` for the block (the soft
    limit only, so it can be put back): an allocation past it fails as MemoryError instead of taking the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + extra_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _quiet() -> None:
    """Library chatter off: progress bars, warnings, transformers' log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()


def serve(memory_mb: int) -> None:
    """Worker loop: a JSON request a line on stdin, a JSON outcome a line on the original stdout."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to the log, not into the replies
    _quiet()
    import onnx  # noqa: F401 - imported before the limit, like the child's own start-up
    import torch  # noqa: F401

    import engine.artifacts
    import engine.data
    import engine.modules  # noqa: F401

    data_dir = Path(os.environ["PARETOSCOPE_DATA_DIR"])
    replies.write("ready\n")
    with memory_cap(memory_mb):
        for line in sys.stdin:
            request = json.loads(line)
            if request["kind"] == "segfault":  # the harness's own test: a crash is an outcome, not the end
                os.kill(os.getpid(), signal.SIGSEGV)
            outcome = run_one(request["kind"], Path(request["path"]))
            shutil.rmtree(data_dir / "models", ignore_errors=True)  # stored copies of accepted inputs
            replies.write(json.dumps(asdict(outcome)) + "\n")


class Worker:
    """A process running `serve`: a crash or a hang ends it and is the outcome of the input it was given."""

    def __init__(self, data_dir: Path, log: Path, timeout_s: float = 60.0, memory_mb: int = DEFAULT_MEMORY_MB):
        self.data_dir, self.log, self.timeout_s, self.memory_mb = data_dir, log, timeout_s, memory_mb
        self.process: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(self.data_dir), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fuzz_intake", "--serve", "--memory-mb", str(self.memory_mb)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT, start_new_session=True)
        if self._reply(process, 300) != "ready":
            raise RuntimeError(f"the fuzz worker did not start; see {self.log}")
        return process

    def _reply(self, process: subprocess.Popen[bytes], timeout_s: float) -> str | None:
        """The worker's next line; None when it died or did not answer within the time."""
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = process.stdout.readline()
        return line.decode().strip() if line else None

    def run(self, kind: str, path: Path) -> Outcome:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        process = self.process
        assert process.stdin is not None
        process.stdin.write((json.dumps({"kind": kind, "path": str(path)}) + "\n").encode())
        process.stdin.flush()
        reply = self._reply(process, self.timeout_s)
        if reply is not None:
            return Outcome(**json.loads(reply))
        try:
            code: int | None = process.wait(timeout=2)  # the reply's end came from the worker's death
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        if code is None:
            return Outcome("hang", f"no answer within {self.timeout_s:g} s")
        if code < 0:
            return Outcome("crash", f"the worker died of {signal.Signals(-code).name}")
        return Outcome("crash", f"the worker exited with status {code}")

    def close(self) -> None:
        """Stop the worker and anything it started."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- seeds ------------------------------------------------------------------------------------------------


def build_seeds(folder: Path) -> dict[str, bytes]:
    """The valid files every mutation starts from, the same tiny models as the tests' fixtures."""
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    example = (torch.randn(2, 16),)
    seeds: dict[str, bytes] = {}
    torch.onnx.export(mlp, example, str(folder / "mlp.onnx"), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    seeds["onnx"] = (folder / "mlp.onnx").read_bytes()
    seeds["onnx-zip"] = onnx_zip(folder / "mlp.onnx", folder / "onnx-ext")
    torch.jit.save(torch.jit.trace(mlp, example), str(folder / "mlp.pt"))
    seeds["torchscript"] = (folder / "mlp.pt").read_bytes()
    program = torch.export.export(mlp, example, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(folder / "mlp.pt2"))
    seeds["pt2"] = (folder / "mlp.pt2").read_bytes()
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(str(folder / "tiny-bert"))
    seeds["hf-zip"] = zip_folder(folder / "tiny-bert")
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, **{"eval/x": rng.standard_normal((40, 16)).astype(np.float32),
                        "eval/labels": rng.integers(0, 4, 40),
                        "calib/x": rng.standard_normal((32, 16)).astype(np.float32)})
    seeds["npz"] = buffer.getvalue()
    return seeds


def onnx_zip(model: Path, folder: Path) -> bytes:
    """The ONNX model with every weight in net.data beside net.onnx, zipped."""
    import onnx

    folder.mkdir(exist_ok=True)
    onnx.save_model(onnx.load(str(model)), str(folder / "net.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="net.data", size_threshold=0)
    return zip_folder(folder, top="")


def zip_folder(folder: Path, top: str | None = None) -> bytes:
    root = folder.name if top is None else top
    members = [(f"{root}/{p.relative_to(folder).as_posix()}" if root else p.relative_to(folder).as_posix(),
                p.read_bytes(), zipfile.ZIP_DEFLATED) for p in sorted(folder.rglob("*")) if p.is_file()]
    return write_members(members)


# --- the run ----------------------------------------------------------------------------------------------


def fuzz(seeds: dict[str, bytes], kinds: list[str], count: int, seed: int, worker: Worker, inputs: Path,
         keep: Path | None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """`count` mutated inputs per kind through the worker; outcomes per kind and per mutation, failures kept."""
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    signatures: collections.Counter[str] = collections.Counter()
    for kind in kinds:
        outcomes: collections.Counter[str] = collections.Counter()
        by_mutation: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        messages: collections.Counter[str] = collections.Counter()
        started = time.monotonic()
        for index in range(count):
            names, data = mutate(kind, seeds[kind], RandomDraw(random.Random(f"{seed}/{kind}/{index}")))
            path = inputs / f"{index}-{KINDS[kind]}"
            path.write_bytes(data)
            outcome = worker.run(kind, path)
            outcomes[outcome.status] += 1
            by_mutation[names.split("+")[0]][outcome.status] += 1
            if outcome.status == "user-error":
                messages[_message_shape(outcome.detail)] += 1
            elif not outcome.good:
                signature = f"{kind}: {outcome.status}: {_signature(outcome.detail)}"
                signatures[signature] += 1
                failure = {"kind": kind, "index": index, "mutations": names, "status": outcome.status,
                           "signature": signature, "detail": outcome.detail}
                if keep is not None and signatures[signature] <= 3:
                    keep.mkdir(parents=True, exist_ok=True)
                    kept = keep / f"{kind}-{index}-{KINDS[kind]}"
                    shutil.copyfile(path, kept)
                    failure["input"] = str(kept)
                failures.append(failure)
            path.unlink()
        seconds = time.monotonic() - started
        results[kind] = {"tried": count, "outcomes": dict(outcomes), "seconds": seconds,
                         "by_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
                         "common_errors": dict(messages.most_common(15))}
        progress(f"{kind}: {count} inputs in {seconds:.0f} s: " + ", ".join(f"{k} {v}" for k, v in
                                                                              sorted(outcomes.items())))
    return {"formats": results, "failures": failures, "failure_signatures": dict(signatures.most_common())}


def _message_shape(message: str) -> str:
    """A UserError with its specifics (numbers, quoted names, parenthesized details) blurred, to count kinds."""
    shape = re.sub(r"\([^()]*\)", "(…)", message.partition(": ")[2] or message)
    shape = re.sub(r"'[^']*'", "'…'", shape)
    return re.sub(r"\d[\d,.]*", "N", shape)[:160]


def _signature(detail: str) -> str:
    """The last line of a traceback and its innermost frame inside the project."""
    lines = [line for line in detail.strip().splitlines() if line.strip()]
    frames = [line.strip() for line in lines if line.strip().startswith("File ") and "/engine/" in line]
    last = lines[-1][:160] if lines else ""
    return f"{last} at {frames[-1]}" if frames else last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="inputs per format (default 2000)")
    parser.add_argument("--formats", default=",".join(KINDS), help=f"comma-separated, from {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: the same seed makes the same inputs")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds an input may take (default 60)")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB,
                        help=f"the worker's address space beyond its imports (default {DEFAULT_MEMORY_MB})")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/fuzz_intake.json)")
    parser.add_argument("--keep", default=str(Path(__file__).resolve().parent / "results" / "fuzz_intake_inputs"),
                        help="folder for up to three failing inputs of each kind of failure")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.memory_mb)
        return 0
    kinds = [k.strip() for k in args.formats.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or args.count < 1:
        parser.error(f"unknown formats {unknown}" if unknown else "--count must be positive")

    from engine.measure.environment import collect

    _quiet()
    started = time.monotonic()
    load_before = load_state()
    with tempfile.TemporaryDirectory(prefix="paretoscope-fuzz-") as scratch:
        root = Path(scratch)
        (root / "seeds").mkdir()
        (root / "inputs").mkdir()
        seeds = build_seeds(root / "seeds")
        worker = Worker(root / "data", root / "worker.log", args.timeout, args.memory_mb)
        try:
            report = fuzz(seeds, kinds, args.count, args.seed, worker, root / "inputs", Path(args.keep))
        finally:
            worker.close()
    load_after = load_state()
    wall = time.monotonic() - started

    rows = []
    for kind, r in report["formats"].items():
        outcomes = r["outcomes"]
        rows.append([kind, r["tried"], *(outcomes.get(s, 0) for s in (*GOOD, *FAILURES)), f"{r['seconds']:.0f}"])
    total = [sum(r[i] for r in rows) for i in range(1, 2 + len(GOOD) + len(FAILURES))]
    rows.append(["all", *total, f"{sum(r['seconds'] for r in report['formats'].values()):.0f}"])
    print()
    print(table(["format", "inputs", *GOOD, *FAILURES, "s"], rows))
    if report["failure_signatures"]:
        print("\nfailures, by kind:")
        for signature, n in report["failure_signatures"].items():
            print(f"  {n:4d}  {signature}")
    else:
        print("\nevery input ended as a model or a one-line UserError")
    print(f"\n{load_before} before, {load_after} after; {wall:.0f} s in all")
    payload = {
        "benchmark": "fuzz_intake",
        "target": "every input ends as ok or a one-line UserError",
        "target_met": not report["failures"],
        "settings": {"count_per_format": args.count, "formats": kinds, "seed": args.seed, "timeout_s": args.timeout,
                     "memory_mb": args.memory_mb},
        **report,
        "machine_load": {"before": load_before, "after": load_after},
        "environment": collect(),
        "command": command_line(),
        "wall_s": wall,
    }
    path = write_json(payload, args.out, "fuzz_intake")
    print(f"results JSON written to {path}")
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
