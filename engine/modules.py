"""Torch-side loading of stored models: TorchScript, torch.export programs and Hugging Face folders.

Imported only by code that needs torch (intake of torch formats, optimizations, runtimes).
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import UserError, is_out_of_memory
from engine.specs import (
    ATTENTION_MASK,
    BATCH_AXIS,
    DEFAULT_INT_RANGE,
    INTEGER_DTYPES,
    TOKEN_IDS,
    TOKEN_TYPES,
    InputSpec,
    TensorSpec,
    conservative_token_range,
    guess_role,
)

# Hugging Face loading is local only: no hub access, no remote code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TORCH_TO_NUMPY = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}
HF_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def numpy_dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _TORCH_TO_NUMPY:
        raise UserError(f"tensor dtype {dtype} is not supported")
    return _TORCH_TO_NUMPY[dtype]


class HFWrapper(torch.nn.Module):
    """Calls a transformers model with positional tensors and returns plain tensors.

    Returns the logits when the model has a head, else the last hidden state, so that every
    runtime and exporter sees the same tuple-of-tensors signature.
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        # transformers names models with a head "<Arch>For<Task>" (GPT-2's: "<Arch>LMHeadModel"); bare encoders
        # return hidden states
        name = type(model).__name__
        self.output_name = "logits" if "For" in name or name.endswith("LMHeadModel") else "last_hidden_state"

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, tensors, strict=True)), return_dict=True)
        logits = getattr(out, "logits", None)
        if logits is not None:
            return logits
        return out.last_hidden_state  # type: ignore[no-any-return]


def load_module(path: Path, fmt: str, spec: InputSpec | None = None) -> torch.nn.Module:
    """The model as an eval-mode torch module on the CPU."""
    if fmt == "torchscript":
        module = load_torchscript(path)
    elif fmt == "pt2":
        # an exported program is traced in eval mode already and refuses .eval()
        return exported_module(load_exported(path), path.name)
    elif fmt == "hf":
        model = load_hf(path)
        names = spec.names if spec is not None else hf_input_names(model)
        module = HFWrapper(model, names)
    else:
        raise UserError(f"format '{fmt}' has no torch module; it runs on ONNX runtimes only")
    module.eval()
    return module


# What torch.export.load raises on an archive whose JSON or payloads are malformed: its deserializer asserts on
# the graph's structure and hands odd values straight to torch functions (found by benchmarks/fuzz_intake.py).
_EXPORT_DESERIALIZE_ERRORS = (AssertionError, TypeError, IndexError, KeyError, AttributeError, ValueError,
                              RuntimeError, EOFError, pickle.UnpicklingError)


def load_torchscript(path: Path, label: str | None = None, restore_shapes: bool = False) -> Any:
    """A TorchScript module on the CPU, once every pickle in its archive is well-formed (engine.pickles)."""
    from engine.pickles import check_torchscript_archive

    label = label or path.name
    check_torchscript_archive(path, label)
    try:
        return torch.jit.load(str(path), map_location="cpu", _restore_shapes=restore_shapes)
    except (RuntimeError, ValueError, IndexError, OverflowError) as exc:  # what pybind11 makes of C++ exceptions
        if is_out_of_memory(str(exc)):
            raise MemoryError(_error_line(exc)) from exc
        raise UserError(f"{label}: not a readable TorchScript archive ({_error_line(exc)}); save the model again "
                        "with torch.jit.save") from exc


def load_exported(path: Path, label: str | None = None) -> Any:
    """A torch.export program, once every pickle in its archive passed torch's allow-list (engine.pickles)."""
    from torch._export.verifier import SpecViolationError

    from engine.pickles import check_exported_archive

    label = label or path.name
    check_exported_archive(path, label)
    try:
        return torch.export.load(str(path))
    except (*_EXPORT_DESERIALIZE_ERRORS, SpecViolationError) as exc:  # the last: a graph its own checks refuse
        raise _unreadable_program(exc, label) from exc


def exported_module(program: Any, label: str) -> torch.nn.Module:
    """The program as a module: torch generates its Python code from the graph, which a malformed one breaks."""
    try:
        return program.module()  # type: ignore[no-any-return]
    except _EXPORT_DESERIALIZE_ERRORS as exc:
        raise _unreadable_program(exc, label) from exc


def _unreadable_program(exc: BaseException, label: str) -> BaseException:
    if is_out_of_memory(str(exc)):  # the memory limit, not a corrupt file
        return MemoryError(_error_line(exc))
    return UserError(f"{label}: not a readable torch.export program ({type(exc).__name__}: {_error_line(exc)}); "
                     "export it again with torch.export.save")


def load_hf(folder: Path, label: str = "the Hugging Face model") -> torch.nn.Module:
    """A transformers model from config.json and *.safetensors; never remote code, never pickles."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, StrictDataclassError) as exc:  # the last: a field of the wrong type
        raise UserError(
            f"{label}: config.json cannot be read by transformers ({_error_line(exc)}); save it with save_pretrained"
        ) from exc
    model_cls: Any = transformers.AutoModel
    for arch in getattr(config, "architectures", None) or []:
        candidate = getattr(transformers, arch, None) if isinstance(arch, str) else None
        # the class must be one built from this kind of config: a BERT config names no GPT-2 head
        config_class = getattr(candidate, "config_class", None)
        if (isinstance(candidate, type) and issubclass(candidate, transformers.PreTrainedModel)
                and isinstance(config_class, type) and isinstance(config, config_class)):
            model_cls = candidate
            break
    try:
        model, info = model_cls.from_pretrained(
            str(folder), config=config, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise UserError(
            f"{label}: the Hugging Face model cannot be built from its safetensors ({_error_line(exc)}); "
            "save it again with save_pretrained"
        ) from exc
    missing = sorted(info.get("missing_keys") or [])
    if "For" not in type(model).__name__:
        # a bare encoder's pooler is often saved without weights (sentence encoders); its output measured here is
        # last_hidden_state, which the pooler does not feed. A classifier's logits do depend on it.
        missing = [k for k in missing if "pooler" not in k.split(".")]
    if missing:
        # transformers would fill them with random values: every measurement would be of another model
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{label}: its safetensors lack {len(missing)} weight(s) the config needs ({shown}); "
                        "upload the complete folder written by save_pretrained")
    model.eval()
    return model  # type: ignore[no-any-return]


def hf_input_names(model: torch.nn.Module) -> list[str]:
    """The inputs the model's forward takes of input_ids, attention_mask and token_type_ids; token_type_ids only
    with a token-type table (config.type_vocab_size): GPT-2's forward accepts them but adds them through its word
    embeddings, so zeros would add token 0's embedding at every position, as no real caller does."""
    params = inspect.signature(model.forward).parameters
    typed = bool(getattr(getattr(model, "config", None), "type_vocab_size", None))
    return [name for name in HF_INPUTS if name in params and (name != "token_type_ids" or typed)]


Inspected = tuple[InputSpec | None, dict[str, Any], torch.nn.Module]


def inspect_torch(path: Path, fmt: str, label: str) -> Inspected:
    """Load a torch-format model once: its spec (None without example inputs), parameter count, and the
    eval-mode module itself, so intake probes the outputs without loading it a second time."""
    try:
        if fmt == "torchscript":
            return _inspect_torchscript(path, label)
        if fmt == "pt2":
            return _inspect_exported(path, label)
        return _inspect_hf(path, label)
    except UserError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise UserError(f"{label}: cannot be loaded as {fmt} ({_error_line(exc)}); save it again") from exc


def _error_line(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1][:300]
    return lines[0][:300]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


# An embedding lookup a program input feeds: the table's rows and its padding index (None: none).
Table = tuple[int, int | None]


def _tensor_spec(name: str, tensor: Any, dims: list[int | str], table: Table | None = None) -> TensorSpec:
    """An input of a torch program, with its role; an integer input that indexes an embedding table takes
    values inside it (token ids without the ids a tokenizer likely reserves: the program does not say which)."""
    dtype = numpy_dtype_name(tensor.dtype) if isinstance(tensor, torch.Tensor) else str(tensor)
    if dtype not in INTEGER_DTYPES:
        return TensorSpec(name, dtype, tuple(dims), role=guess_role(name, dtype))
    role = guess_role(name, dtype)
    if table is None:
        return TensorSpec(name, dtype, tuple(dims), DEFAULT_INT_RANGE, role=role)
    rows, padding_idx = table
    if role == TOKEN_IDS:
        return TensorSpec(name, dtype, tuple(dims), conservative_token_range(rows), (0, rows), role=role,
                          pad_id=padding_idx)
    return TensorSpec(name, dtype, tuple(dims), (0, rows), (0, rows), role=role)


# Ops an index may pass through between a program's input and its embedding lookup (casts, copies, views).
_PASS_THROUGH_TS = {"aten::to", "aten::contiguous", "aten::view", "aten::reshape", "aten::clone", "aten::detach",
                    "aten::long", "aten::int"}
_PASS_THROUGH_EXPORT = {"_to_copy", "to", "clone", "view", "reshape", "contiguous", "detach", "alias"}


def _torchscript_tables(module: Any) -> dict[int, Table]:
    """The embedding table each input (by position after self) indexes in a TorchScript module's graph."""
    graph = module.inlined_graph
    inputs = [v.debugName() for v in list(graph.inputs())[1:]]
    tables: dict[int, Table] = {}
    for node in graph.nodes():
        if node.kind() != "aten::embedding":
            continue
        weight = _torchscript_attribute(module, node.inputsAt(0))
        index = node.inputsAt(1)
        while index.node().kind() in _PASS_THROUGH_TS:
            index = index.node().inputsAt(0)
        if weight is None or index.debugName() not in inputs or weight.dim() != 2:
            continue
        padding = node.inputsAt(2).toIValue() if node.inputsAt(2).node().kind() == "prim::Constant" else None
        _keep_smaller(tables, inputs.index(index.debugName()), (int(weight.shape[0]), padding))
    return tables


def _torchscript_attribute(module: Any, value: Any) -> torch.Tensor | None:
    """The tensor a chain of prim::GetAttr nodes reads from the module (self.embeddings.word.weight)."""
    names: list[str] = []
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().inputsAt(0)
    target = module
    for name in reversed(names):
        target = getattr(target, name, None)
    return target if names and isinstance(target, torch.Tensor) else None


def _exported_tables(program: Any) -> dict[str, Table]:
    """The embedding table each user input (by name) indexes in a torch.export program."""
    tables: dict[str, Table] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "__name__", "") != "embedding.default":
            continue
        weight, index = node.args[0], node.args[1]
        while getattr(index, "op", None) == "call_function" and \
                getattr(index.target, "__name__", "").split(".")[0] in _PASS_THROUGH_EXPORT:
            index = index.args[0]
        shape = getattr(getattr(weight, "meta", {}).get("val"), "shape", None)
        if getattr(index, "op", None) != "placeholder" or shape is None or len(shape) != 2:
            continue
        padding = node.args[2] if len(node.args) > 2 and isinstance(node.args[2], int) else None
        _keep_smaller(tables, index.name, (int(shape[0]), padding))
    return tables


def _keep_smaller(tables: dict[Any, Table], key: Any, table: Table) -> None:
    rows, padding = table
    padding = padding if padding is not None and 0 <= padding < rows else None
    previous = tables.get(key)
    if previous is None or rows < previous[0]:  # an index feeding two tables must fit the smaller
        tables[key] = (rows, padding if previous is None or padding is not None else previous[1])


def _inspect_torchscript(path: Path, label: str) -> Inspected:
    module = load_torchscript(path, label, restore_shapes=True)
    info: dict[str, Any] = {"parameters": parameter_count(module)}
    args = [a for a in module.forward.schema.arguments if a.name != "self"]
    graph_inputs = list(module.graph.inputs())[1:]
    tables = _torchscript_tables(module)
    tensors = []
    for position, (arg, value) in enumerate(zip(args, graph_inputs, strict=False)):
        ttype = value.type()
        sizes = ttype.sizes() if hasattr(ttype, "sizes") else None
        scalar = ttype.scalarType() if hasattr(ttype, "scalarType") else None
        if not sizes or scalar is None:
            return None, info, module.eval()
        dtype = numpy_dtype_name(getattr(torch, scalar.lower()) if scalar != "Float" else torch.float32)
        # Traced inputs record one concrete shape; the first axis is taken as the batch.
        dims: list[int | str] = [BATCH_AXIS, *sizes[1:]]
        tensors.append(_tensor_spec(arg.name, dtype, dims, tables.get(position)))
    if not tensors:
        return None, info, module.eval()
    return InputSpec(tuple(tensors)), info, module.eval()


def _inspect_exported(path: Path, label: str) -> Inspected:
    program = load_exported(path, label)
    info: dict[str, Any] = {"parameters": sum(int(t.numel()) for t in program.state_dict.values())}
    names = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    tables = _exported_tables(program)
    tensors = []
    for name in names:
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor):
            return None, info, exported_module(program, label)
        dims: list[int | str] = []
        for i, d in enumerate(val.shape):
            if isinstance(d, torch.SymInt):
                dims.append(BATCH_AXIS if i == 0 else str(d))
            else:
                dims.append(int(d))
        tensors.append(_tensor_spec(name, val, dims, tables.get(name)))
    if not tensors:
        return None, info, exported_module(program, label)
    return InputSpec(tuple(tensors)), info, exported_module(program, label)


def _inspect_hf(folder: Path, label: str) -> Inspected:
    from engine.generation.intake import check_no_remote_code, generation_info

    config = read_hf_config(folder, label)
    check_no_remote_code(config, folder, label)
    check_hf_size(folder, config, label)
    model = load_hf(folder, label)
    names = hf_input_names(model)
    if "input_ids" not in names:
        raise UserError(
            f"{label}: the Hugging Face model {type(model).__name__} does not take input_ids; only text "
            "encoders and classifiers are supported for now"
        )
    vocab = int(config.get("vocab_size") or 0)
    if vocab <= 0:
        raise UserError(f"{label}: config.json has no vocab_size; it is needed to make valid token ids")
    tokens = read_token_facts(folder, config, vocab)
    ordinary, special = tokens.ordinary_range(vocab)
    ranges = {
        "input_ids": ordinary,
        "attention_mask": (1, 2),  # all tokens attended; --padding makes trailing zeros
        "token_type_ids": (0, max(1, int(config.get("type_vocab_size") or 1))),
    }
    # what the embeddings accept; masks may hold zeros
    bounds = {**ranges, "input_ids": (0, vocab), "attention_mask": (0, 2)}
    roles = {"input_ids": TOKEN_IDS, "attention_mask": ATTENTION_MASK, "token_type_ids": TOKEN_TYPES}
    tensors = tuple(
        TensorSpec(name, "int64", (BATCH_AXIS, "sequence"), ranges[name], bounds[name], role=roles[name],
                   special_ids=special if name == "input_ids" else (),
                   pad_id=tokens.pad if name == "input_ids" else None)
        for name in names
    )
    max_pos = int(config.get("max_position_embeddings") or 0)
    info = {
        "parameters": parameter_count(model),
        "architecture": type(model).__name__,
        "model_type": config.get("model_type"),
        "max_position_embeddings": max_pos or None,
        **generation_info(config, model, folder),
    }
    return InputSpec(tensors), info, HFWrapper(model, names)


# --- a Hugging Face model's special token ids, from config.json and its tokenizer files ---------------------

_SPECIAL_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id",
                 "mask_token_id", "decoder_start_token_id")
# Placeholders a vocabulary reserves: WordPiece's [PAD], [CLS], [unused5]; sentencepiece's and BPE's <s>, <pad>,
# <|endoftext|>, <extra_id_0>. An ordinary token this also matches ("<br>") is only left out of synthesis.
_PLACEHOLDER = re.compile(r"\[[^\[\]\s]+\]|<[^<>\s]+>")
_MAX_TOKENIZER_BYTES = 64 * 2**20  # tokenizer.json of a 250k vocabulary is about 17 MB


@dataclass
class TokenFacts:
    """What a Hugging Face folder says of its token ids: how many its tokenizer defines (None without tokenizer
    files), which are special, and the pad id."""

    defined: int | None = None
    special: set[int] = field(default_factory=set)
    pad: int | None = None

    def ordinary_range(self, vocab: int) -> tuple[tuple[int, int], tuple[int, ...]]:
        """[low, high) for synthesized ids and the special ids inside it. With tokenizer files: the vocabulary
        without its leading and trailing special ids (BERT's [PAD] and [unusedN] below 999) and without rows the
        tokenizer never produces; without them, the conservative range of a vocabulary of unknown tokens."""
        if self.defined is None:
            low, high = conservative_token_range(vocab)
        else:
            low, high = 0, min(vocab, self.defined)
            while low < high and low in self.special:
                low += 1
            while high > low and high - 1 in self.special:
                high -= 1
            if high <= low:
                low, high = conservative_token_range(vocab)
        return (low, high), tuple(sorted(i for i in self.special if low <= i < high))


def read_token_facts(folder: Path, config: dict[str, Any], vocab: int) -> TokenFacts:
    """Special ids from config.json (pad, bos, eos, sep, cls, unk, mask) and, where present, vocab.txt,
    tokenizer.json, tokenizer_config.json and special_tokens_map.json. The tokenizer files are optional: one
    that cannot be read is passed over and the range stays conservative."""
    facts = TokenFacts()
    for key in _SPECIAL_KEYS:
        values = config.get(key)
        for value in values if isinstance(values, list) else [values]:
            if (i := _token_id(value, vocab)) is not None:
                facts.special.add(i)
    facts.pad = _token_id(config.get("pad_token_id"), vocab)
    tokens: dict[str, int] = {}
    text = _small_text(folder / "vocab.txt")
    if text is not None:
        tokens.update((token, i) for i, token in enumerate(text.rstrip("\n").split("\n")))
    tokenizer = _small_json(folder / "tokenizer.json")
    model = tokenizer.get("model") if isinstance(tokenizer, dict) else None
    table = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(table, dict):
        tokens.update((t, i) for t, i in table.items() if isinstance(t, str) and isinstance(i, int))
    elif isinstance(table, list):  # Unigram: [piece, score] pairs in id order
        tokens.update((e[0], i) for i, e in enumerate(table) if isinstance(e, list) and e and isinstance(e[0], str))
    added = tokenizer.get("added_tokens") if isinstance(tokenizer, dict) else None
    entries = [e for e in added if isinstance(e, dict)] if isinstance(added, list) else []
    decoder = _small_json(folder / "tokenizer_config.json")
    decoder = decoder.get("added_tokens_decoder") if isinstance(decoder, dict) else None
    if isinstance(decoder, dict):
        entries += [{**e, "id": int(k)} for k, e in decoder.items() if isinstance(e, dict) and k.isdigit()]
    for entry in entries:
        token, i = entry.get("content"), _token_id(entry.get("id"), vocab)
        if isinstance(token, str) and i is not None:
            tokens[token] = i
            if entry.get("special") is True:
                facts.special.add(i)
    tokens = {t: i for t, i in tokens.items() if 0 <= i < vocab}
    facts.special.update(i for t, i in tokens.items() if _PLACEHOLDER.fullmatch(t))
    named = _small_json(folder / "special_tokens_map.json")
    for key, value in (named.items() if isinstance(named, dict) else ()):
        for item in value if isinstance(value, list) else [value]:
            token = item.get("content") if isinstance(item, dict) else item
            if isinstance(token, str) and token in tokens:
                facts.special.add(tokens[token])
                if key == "pad_token" and facts.pad is None:
                    facts.pad = tokens[token]
    if tokens:
        facts.defined = max(tokens.values()) + 1
    return facts


def _token_id(value: Any, vocab: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab else None


def _small_text(path: Path) -> str | None:
    if not path.is_file() or path.stat().st_size > _MAX_TOKENIZER_BYTES:
        return None
    return path.read_bytes().decode("utf-8", errors="replace")


def _small_json(path: Path) -> Any:
    text = _small_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


# --- a Hugging Face model's size, judged from config.json and the safetensors headers before allocating -----

MAX_PARAMS_ENV = "PARETOSCOPE_MAX_MODEL_PARAMS"
# Sizes transformers builds modules from: a value that is not a positive integer fails deep inside a constructor
# (a zero head count divides by zero), so it is refused here with its name.
_SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size")
# How far the parameters config.json describes may exceed those its safetensors hold. Packed 4-bit weights hold
# 8 values per int32 element; a config asking for more than that is asking for memory its weights never fill.
_GROSS_RATIO = 8
_GROSS_SLACK = 1_000_000
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit
_SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2": 8, "F8_E5M2FNUZ": 8,
                     "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
                     "F64": 64, "I64": 64, "U64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
_CONFIG_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def read_hf_config(folder: Path, label: str) -> dict[str, Any]:
    """config.json as a dict whose module sizes are positive integers."""
    try:
        config = json.loads((folder / "config.json").read_bytes())
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{label}: config.json is not valid JSON ({_error_line(exc)}); save the model with "
                        "save_pretrained") from exc
    if not isinstance(config, dict):
        raise UserError(f"{label}: config.json is not a JSON object; save the model with save_pretrained")
    for key in _SIZE_KEYS:
        value = config.get(key)
        if value is not None and not (_is_int(value) and value > 0):
            # transformers would fail deep inside a module's construction
            raise UserError(f"{label}: config.json has {key} {_short(value)}; it must be a positive integer")
    # fields transformers' base config uses without checking their type (found by benchmarks/fuzz_intake.py)
    for key in ("id2label", "label2id"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise UserError(f"{label}: config.json has {key} {_short(config[key])}; it must be an object")
    pad, vocab = config.get("pad_token_id"), config.get("vocab_size")
    if isinstance(pad, int) and isinstance(vocab, int) and not -vocab <= pad < vocab:
        # torch.nn.Embedding asserts on a padding index outside its table
        raise UserError(f"{label}: config.json has pad_token_id {pad}, outside its vocabulary of {vocab} tokens; "
                        "save the model with save_pretrained")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise UserError(f"{label}: config.json has model_type {_short(model_type)}; it must be a name such as 'bert'")
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if value is not None and not (isinstance(value, str) and (
                value == "auto" or isinstance(getattr(torch, value, None), torch.dtype))):
            raise UserError(f"{label}: config.json has {key} {_short(value)}; it must name a torch dtype such as "
                            "'float32'")
    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        raise UserError(f"{label}: config.json has architectures {_short(architectures)}; it must be a list of "
                        "class names")
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first(config: dict[str, Any], *keys: str) -> int:
    """The first of `keys` that holds a positive integer, else 0."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def estimate_hf_parameters(config: dict[str, Any]) -> int:
    """About how many parameters a transformers config describes, from below: the embedding tables and, per
    layer, the attention and feed-forward matrices. Biases, norms and heads only add to the real count.

    Generic over architectures through the names configs use for these sizes (BERT, GPT-2, T5, BART,
    DistilBERT, LLaMA-style GQA and mixture-of-experts, ALBERT's shared layers).
    """
    hidden = _first(config, "hidden_size", "d_model", "n_embd", "dim")
    embedding = _first(config, "embedding_size") or hidden  # ALBERT factorizes its embeddings
    ffn = _first(config, "intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "d_ff", "hidden_dim")
    experts = _first(config, "num_local_experts", "num_experts", "n_routed_experts") or 1
    if _first(config, "num_hidden_groups"):  # ALBERT: the layers share the weights of their groups
        layers = _first(config, "num_hidden_groups") * (_first(config, "inner_group_num") or 1)
    else:
        layers = _first(config, "num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers")
    layers += _first(config, "num_decoder_layers", "decoder_layers")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
    kv_heads = _first(config, "num_key_value_heads")
    kv_width = hidden * kv_heads // heads if heads and kv_heads and kv_heads < heads else hidden
    attention = 2 * hidden * hidden + 2 * hidden * kv_width  # query and output, key and value
    tables = _first(config, "vocab_size") + _first(config, "type_vocab_size")
    if not any("rope" in key or "rotary" in key for key in config):  # rotary models have no position table
        tables += _first(config, "max_position_embeddings", "n_positions")
    labels = _first(config, "num_labels")
    if isinstance(config.get("id2label"), dict):
        labels = max(labels, len(config["id2label"]))
    return tables * embedding + layers * (attention + 2 * hidden * ffn * experts) + labels * hidden


def stored_hf_parameters(folder: Path, label: str) -> tuple[int, int | None]:
    """The values the folder's *.safetensors hold, and the byte width of their first float tensor, read from
    their headers (each checked against its file's size) without loading a tensor."""
    count, float_bytes = 0, None
    for path in sorted(folder.glob("*.safetensors")):
        for dtype, numel in _safetensors_entries(path, label):
            count += numel
            if float_bytes is None and dtype in ("F16", "BF16", "F32", "F64"):
                float_bytes = _SAFETENSORS_BITS[dtype] // 8
    return count, float_bytes


def _safetensors_entries(path: Path, label: str) -> list[tuple[str, int]]:
    def bad(why: str) -> UserError:
        return UserError(f"{label}: the Hugging Face model cannot be built from its safetensors ({path.name}: {why}); "
                         "save it again with save_pretrained")

    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise bad("the file is shorter than its 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _SAFETENSORS_MAX_HEADER):
            raise bad(f"its header length {length:,} exceeds the file's {size:,} bytes or the format's limit")
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise bad(f"its header is not valid JSON: {_error_line(exc)}") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_size = size - 8 - length
    entries = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shown = _short(name)
        if not isinstance(entry, dict):
            raise bad(f"header entry {shown} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise bad(f"tensor {shown} has shape {_short(shape)} in its header")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise bad(f"tensor {shown} has data offsets {_short(offsets)} outside the file")
        numel = 1
        for d in shape:
            numel *= d
        nbytes = offsets[1] - offsets[0]
        bits = _SAFETENSORS_BITS.get(dtype) if isinstance(dtype, str) else None
        if bits is not None and (numel * bits + 7) // 8 != nbytes:
            raise bad(f"tensor {shown} of shape {shape} and dtype {dtype} needs {(numel * bits + 7) // 8:,} bytes "
                      f"but its header gives it {nbytes:,}")
        if numel > 8 * nbytes:  # a dtype this check does not know: at least one bit a value
            raise bad(f"tensor {shown} of shape {_short(shape)} holds more values than its {nbytes:,} bytes can")
        entries.append((str(dtype), numel))
    return entries


def max_model_params() -> int | None:
    """`PARETOSCOPE_MAX_MODEL_PARAMS`, the largest model intake accepts (unset: bounded by memory only)."""
    raw = os.environ.get(MAX_PARAMS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{MAX_PARAMS_ENV} is '{raw}'; set it to a positive number of parameters")
    return value


def check_hf_size(folder: Path, config: dict[str, Any], label: str) -> None:
    """Refuse, before transformers allocates anything, a config that describes a model larger than the limits
    or far larger than the weights that came with it (which transformers would fill with random values)."""
    from engine.executors.limits import inspect_memory_mb

    estimate = estimate_hf_parameters(config)
    stored, float_bytes = stored_hf_parameters(folder, label)
    described = f"{label}: config.json describes a model of about {_count(estimate)} parameters"
    cap = max_model_params()
    if cap is not None and estimate > cap:
        raise UserError(f"{described}, more than {MAX_PARAMS_ENV} ({_count(cap)}); raise it if the model is what "
                        "you meant to upload")
    dtype = config.get("dtype") or config.get("torch_dtype")
    width = _CONFIG_DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
    width = width or float_bytes or 4  # what transformers' dtype="auto" loads in
    limit_mb = inspect_memory_mb()
    if estimate * width > limit_mb * 2**20:
        raise UserError(f"{described} ({estimate * width / 2**30:,.1f} GiB of weights), more than the "
                        f"inspection's memory limit of {limit_mb:.0f} MB (PARETOSCOPE_INSPECT_MEMORY_MB); is it "
                        "the model you meant to upload?")
    if estimate > _GROSS_RATIO * stored + _GROSS_SLACK:
        raise UserError(f"{described} but its safetensors hold {_count(stored)} values; upload the complete folder "
                        "written by save_pretrained")


def _count(n: int) -> str:
    for word, size in (("trillion", 10**12), ("billion", 10**9), ("million", 10**6)):
        if n >= size:
            return f"{n / size:,.1f} {word}"
    return f"{n:,}"


def probe_outputs(module: torch.nn.Module, spec: InputSpec, label: str) -> tuple[TensorSpec, ...]:
    """Run the module once on synthetic inputs to check the spec fits and to read its outputs."""
    args = example_tensors(spec, 2)
    try:
        with torch.inference_mode():
            out = module(*args)
    # torch.export programs check their input shapes with AssertionError ("Guard failed")
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
        if is_out_of_memory(str(exc)):  # the memory limit, not a wrong spec
            raise MemoryError(_error_line(exc)) from exc
        raise UserError(
            f"{label}: the model does not run on inputs {spec.describe()} ({_error_line(exc)}); fix --input-spec"
        ) from exc
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise UserError(f"{label}: the model returns {type(out).__name__}, not tensors; return a tensor or a tuple")
    single = getattr(module, "output_name", None)
    names = [single] if single and len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    return tuple(
        TensorSpec(name, numpy_dtype_name(o.dtype), (BATCH_AXIS, *o.shape[1:]) if o.dim() else ())
        for name, o in zip(names, outputs, strict=True)
    )


def example_tensors(spec: InputSpec, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Synthetic torch inputs matching the spec, for tracing and export."""
    from engine.data import synthesize

    arrays = synthesize(spec, batch_size, seed=seed)
    return tuple(torch.from_numpy(arrays[name]) for name in spec.names)
