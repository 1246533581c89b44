"""Torch-side loading of stored models: TorchScript, torch.export programs and Hugging Face folders.

Imported only by code that needs torch (intake of torch formats, optimizations, runtimes).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch

from engine.errors import UserError, is_out_of_memory
from engine.specs import BATCH_AXIS, DEFAULT_INT_RANGE, INTEGER_DTYPES, InputSpec, TensorSpec

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
        # transformers names models with a head "<Arch>For<Task>"; bare encoders return hidden states
        self.output_name = "logits" if "For" in type(model).__name__ else "last_hidden_state"

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, tensors, strict=True)), return_dict=True)
        logits = getattr(out, "logits", None)
        if logits is not None:
            return logits
        return out.last_hidden_state  # type: ignore[no-any-return]


def load_module(path: Path, fmt: str, spec: InputSpec | None = None) -> torch.nn.Module:
    """The model as an eval-mode torch module on the CPU."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    elif fmt == "pt2":
        # an exported program is traced in eval mode already and refuses .eval()
        return load_exported(path).module()
    elif fmt == "hf":
        model = load_hf(path)
        names = spec.names if spec is not None else hf_input_names(model)
        module = HFWrapper(model, names)
    else:
        raise UserError(f"format '{fmt}' has no torch module; it runs on ONNX runtimes only")
    module.eval()
    return module


def load_exported(path: Path) -> Any:
    """A torch.export program, once every pickle in its archive passed torch's allow-list (engine.pickles)."""
    from engine.pickles import check_exported_archive

    check_exported_archive(path)
    return torch.export.load(str(path))


def load_hf(folder: Path, label: str = "the Hugging Face model") -> torch.nn.Module:
    """A transformers model from config.json and *.safetensors; never remote code, never pickles."""
    import transformers
    from safetensors import SafetensorError

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{label}: config.json cannot be read by transformers ({_error_line(exc)}); save it with save_pretrained"
        ) from exc
    model_cls: Any = transformers.AutoModel
    for arch in getattr(config, "architectures", None) or []:
        candidate = getattr(transformers, arch, None)
        if isinstance(candidate, type) and issubclass(candidate, transformers.PreTrainedModel):
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
    params = inspect.signature(model.forward).parameters
    return [name for name in HF_INPUTS if name in params]


Inspected = tuple[InputSpec | None, dict[str, Any], torch.nn.Module]


def inspect_torch(path: Path, fmt: str, label: str) -> Inspected:
    """Load a torch-format model once: its spec (None without example inputs), parameter count, and the
    eval-mode module itself, so intake probes the outputs without loading it a second time."""
    try:
        if fmt == "torchscript":
            return _inspect_torchscript(path)
        if fmt == "pt2":
            return _inspect_exported(path)
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


def _tensor_spec(name: str, tensor: Any, dims: list[int | str]) -> TensorSpec:
    dtype = numpy_dtype_name(tensor.dtype) if isinstance(tensor, torch.Tensor) else str(tensor)
    value_range = DEFAULT_INT_RANGE if dtype in INTEGER_DTYPES else None
    return TensorSpec(name, dtype, tuple(dims), value_range)


def _inspect_torchscript(path: Path) -> Inspected:
    module = torch.jit.load(str(path), map_location="cpu", _restore_shapes=True)
    info: dict[str, Any] = {"parameters": parameter_count(module)}
    args = [a for a in module.forward.schema.arguments if a.name != "self"]
    graph_inputs = list(module.graph.inputs())[1:]
    tensors = []
    for arg, value in zip(args, graph_inputs, strict=False):
        ttype = value.type()
        sizes = ttype.sizes() if hasattr(ttype, "sizes") else None
        scalar = ttype.scalarType() if hasattr(ttype, "scalarType") else None
        if not sizes or scalar is None:
            return None, info, module.eval()
        dtype = numpy_dtype_name(getattr(torch, scalar.lower()) if scalar != "Float" else torch.float32)
        # Traced inputs record one concrete shape; the first axis is taken as the batch.
        dims: list[int | str] = [BATCH_AXIS, *sizes[1:]]
        tensors.append(_tensor_spec(arg.name, dtype, dims))
    if not tensors:
        return None, info, module.eval()
    return InputSpec(tuple(tensors)), info, module.eval()


def _inspect_exported(path: Path) -> Inspected:
    program = load_exported(path)
    info: dict[str, Any] = {"parameters": sum(int(t.numel()) for t in program.state_dict.values())}
    names = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    tensors = []
    for name in names:
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor):
            return None, info, program.module()
        dims: list[int | str] = []
        for i, d in enumerate(val.shape):
            if isinstance(d, torch.SymInt):
                dims.append(BATCH_AXIS if i == 0 else str(d))
            else:
                dims.append(int(d))
        tensors.append(_tensor_spec(name, val, dims))
    if not tensors:
        return None, info, program.module()
    return InputSpec(tuple(tensors)), info, program.module()


def _inspect_hf(folder: Path, label: str) -> Inspected:
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if not isinstance(config, dict):
        raise UserError(f"{label}: config.json is not a JSON object; save the model with save_pretrained")
    declared = config.get("vocab_size")
    if declared is not None and not (isinstance(declared, int) and declared > 0):
        # transformers would fail deep inside the embedding's construction
        raise UserError(f"{label}: config.json has vocab_size {declared!r}; it must be a positive integer")
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
    ranges = {
        "input_ids": (0, vocab),
        "attention_mask": (1, 2),  # all tokens attended: padding patterns are the user's data to give
        "token_type_ids": (0, max(1, int(config.get("type_vocab_size") or 1))),
    }
    bounds = {**ranges, "attention_mask": (0, 2)}  # what the embeddings accept; masks may hold zeros
    tensors = tuple(
        TensorSpec(name, "int64", (BATCH_AXIS, "sequence"), ranges[name], bounds[name]) for name in names
    )
    max_pos = int(config.get("max_position_embeddings") or 0)
    info = {
        "parameters": parameter_count(model),
        "architecture": type(model).__name__,
        "model_type": config.get("model_type"),
        "max_position_embeddings": max_pos or None,
    }
    return InputSpec(tensors), info, HFWrapper(model, names)


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
