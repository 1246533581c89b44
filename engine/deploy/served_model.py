"""The model a deployment bundle serves: its input spec, the checks a request's inputs pass, one runtime call.

Standalone: the standard library, numpy and the runtime's own library only. It is copied into every bundle as
`served_model.py` beside `serve.py` (FastAPI) or `handler.py` (Hugging Face Inference Endpoints), which run where
Paretoscope is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPEC_FILE = "spec.json"  # the model's inputs and outputs: names, dtypes, shapes (a string is a dynamic axis)
BUNDLE_FILE = "bundle.json"  # how to load the model: runtime, model file, providers, threads; where it came from

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


class InputError(ValueError):
    """A request whose inputs the model cannot take; the message is one line saying what is wrong."""


@dataclass(frozen=True)
class Tensor:
    """One input or output: name, numpy dtype name, shape (an int is fixed, a string names a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    # half-open [low, high) outside which an integer value is invalid where the model says so (token ids: the
    # embedding's rows): a request outside it is refused, not run into the runtime's error
    bound: tuple[int, int] | None = None
    # half-open [low, high) that synthesized values use (may be narrower than what the model takes): the probe's
    value_range: tuple[int, int] | None = None

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def read_spec(folder: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs the bundle's spec.json declares."""
    data = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))

    def pair(value: Any) -> tuple[int, int] | None:
        return (int(value[0]), int(value[1])) if value else None

    def tensors(items: Any) -> list[Tensor]:
        return [Tensor(str(t["name"]), str(t["dtype"]), tuple(t["shape"]), pair(t.get("bound")),
                       pair(t.get("value_range"))) for t in items or []]

    return tensors(data["inputs"]), tensors(data.get("outputs"))


def batch_axis_refusal(inputs: list[Tensor], outputs: list[Tensor]) -> str | None:
    """Why requests cannot be stacked on axis 0 by the spec alone, or None: every input's first axis must be one
    named dynamic axis, and every declared output's first axis that same one."""
    firsts = {t.shape[0] if t.shape else None for t in inputs}
    first = firsts.pop() if len(firsts) == 1 else None
    if isinstance(first, int):
        return f"the model's batch is fixed at {first}"
    if not isinstance(first, str):
        shown = ", ".join(f"{t.name} {t.shape[0] if t.shape else 'scalar'}" for t in inputs)
        return f"the inputs' first axes are not one dynamic batch axis ({shown})"
    for t in outputs:
        if not t.shape or t.shape[0] != first:
            return f"output '{t.name}' does not have the batch axis '{first}' first ({t.describe()})"
    return None


def _array(name: str, value: Any, dtype: str, bound: tuple[int, int] | None = None) -> np.ndarray:
    """A JSON value (nested lists) as an array of the input's dtype, refusing values that would change meaning."""
    try:
        raw = np.asarray(value)
    except ValueError:  # numpy 2: "inhomogeneous shape" for ragged lists
        raise InputError(f"input '{name}' is not a rectangular array (rows of different lengths)") from None
    kind = raw.dtype.kind
    if kind not in "biuf":
        raise InputError(f"input '{name}' must be nested lists of numbers, got {_json_kind(raw)}")
    if dtype == "bool":
        if kind != "b":
            raise InputError(f"input '{name}' takes bool values (true/false), got {_kind_name(kind)}")
        return raw.astype(np.bool_)
    if dtype.startswith(("int", "uint")):
        if kind not in "iu":
            raise InputError(f"input '{name}' takes {dtype} values (integers), got {_kind_name(kind)}")
        info = np.iinfo(np.dtype(dtype))
        if raw.size and (int(raw.min()) < info.min or int(raw.max()) > info.max):
            raise InputError(f"input '{name}' has values outside {dtype}'s range [{info.min}, {info.max}]")
        if bound is not None and raw.size:
            outside = raw[(raw < bound[0]) | (raw >= bound[1])]
            if outside.size:
                raise InputError(f"input '{name}' has value {int(outside.flat[0])} outside [{bound[0]}, {bound[1]}), "
                                 "the values the model takes")
        return raw.astype(dtype)
    if kind == "b":
        raise InputError(f"input '{name}' takes {dtype} values (numbers), got bool")
    # bfloat16 has no numpy dtype: the runtimes that take it are fed float32
    return raw.astype(np.float32 if dtype == "bfloat16" else dtype)


def _kind_name(kind: str) -> str:
    return {"b": "bool", "i": "integers", "u": "integers", "f": "floats"}.get(kind, "other values")


def _json_kind(raw: np.ndarray) -> str:
    return "strings" if raw.dtype.kind in "US" else "objects or nulls"


def check_inputs(payload: Any, inputs: list[Tensor]) -> dict[str, np.ndarray]:
    """`{"inputs": {name: nested lists}}` checked against the spec and converted; InputError says what is wrong.

    Every input is present and no other, each has the spec's dtype and rank, fixed axes have their size, a
    dynamic axis named in several inputs (the batch, a sequence length) has one size across them, and integer
    values lie inside the input's bound where the spec gives one (token ids: the vocabulary).
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("inputs"), Mapping):
        raise InputError('the body must be a JSON object {"inputs": {NAME: nested lists}}')
    given = payload["inputs"]
    names = [t.name for t in inputs]
    unknown = [str(n) for n in given if n not in names]
    if unknown:
        raise InputError(f"unknown input {', '.join(repr(n) for n in unknown)}; the model takes {', '.join(names)}")
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(f"missing input {', '.join(repr(n) for n in missing)}; the model takes {', '.join(names)}")
    arrays: dict[str, np.ndarray] = {}
    axes: dict[str, tuple[int, str]] = {}  # a dynamic axis' size and the input that set it
    for spec in inputs:
        array = _array(spec.name, given[spec.name], spec.dtype, spec.bound)
        if array.ndim != len(spec.shape):
            raise InputError(f"input '{spec.name}' has {array.ndim} dimensions {list(array.shape)}; "
                             f"the model takes {len(spec.shape)}: {spec.describe()}")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise InputError(f"input '{spec.name}' has size {got} on axis {axis}; the model fixes it at "
                                     f"{want}: {spec.describe()}")
                continue
            if got == 0:
                raise InputError(f"input '{spec.name}' is empty on axis {axis} ({want})")
            seen = axes.setdefault(want, (got, spec.name))
            if seen[0] != got:
                raise InputError(f"axis '{want}' is {got} in input '{spec.name}' but {seen[0]} in '{seen[1]}'")
        arrays[spec.name] = np.ascontiguousarray(array)
    return arrays


def rows(feeds: Mapping[str, np.ndarray]) -> int:
    """How many samples a request carries (its batch axis)."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def signature(feeds: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """Requests with the same signature can be stacked on the batch axis into one call."""
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items())


def merge(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Requests of one signature as one batch."""
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]] | None:
    """One batch's outputs cut back into each request's rows; None when an output's first axis is not the batch."""
    total = sum(sizes)
    if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
        return None
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[name][i] for name in outputs} for i in range(len(sizes))]


def to_json(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {name: np.asarray(array).tolist() for name, array in outputs.items()}


Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
Loaded = tuple[Runner, list[str] | None]  # the call, and the output names where the runtime knows them


class ServedModel:
    """The bundle's model, loaded once: `run(feeds)` takes checked inputs and returns outputs by name."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        self.folder = Path(folder).resolve()
        manifest = json.loads((self.folder / BUNDLE_FILE).read_text(encoding="utf-8"))
        self.manifest = manifest
        self.inputs, declared = read_spec(self.folder)
        model = (self.folder / manifest["model"]).resolve()
        if self.folder not in model.parents:
            raise ValueError(f"{BUNDLE_FILE} names a model file outside the bundle: {manifest['model']}")
        self.runtime = str(manifest["runtime"])
        threads = threads or manifest.get("threads") or None
        loaders = {"onnxruntime": _onnxruntime, "openvino": _openvino, "torchscript": _torchscript}
        if self.runtime not in loaders:
            raise ValueError(f"{BUNDLE_FILE} names runtime '{self.runtime}'; this server runs {', '.join(loaders)}")
        self._runner, self._found = loaders[self.runtime](model, manifest, threads)
        self.outputs = declared
        self._declared = [t.name for t in declared]
        self._seq_len = json.loads((self.folder / SPEC_FILE).read_text(encoding="utf-8")).get("seq_len")

    def batching_refusal(self) -> str | None:
        """Why requests must not be stacked on axis 0 into one call, or None when they may: the spec must make it
        the batch axis, and a probe of two samples must give each sample what it gives alone (a model that mixes
        rows, a mean over axis 0, takes the axis for something other than the batch)."""
        refusal = batch_axis_refusal(self.inputs, self.outputs)
        if refusal is not None:
            return refusal
        samples = [self._probe_sample(seed) for seed in (0, 1)]
        try:
            alone = [self.run(sample) for sample in samples]
            together = self.run(merge(samples))
        except Exception as exc:  # noqa: BLE001 - any failure of the probe leaves batching off, saying why
            return f"a probe of two samples failed ({type(exc).__name__}: {str(exc).strip()[:120]})"
        parts = split(together, [1, 1])
        if parts is None:
            return "an output does not keep the batch axis first"
        for name in together:
            for i, part in enumerate(parts):
                got, want = part[name], alone[i][name]
                scale = max(1.0, float(np.max(np.abs(want)))) if want.size and want.dtype.kind == "f" else 1.0
                same = got.shape == want.shape and (
                    np.allclose(got, want, rtol=1e-2, atol=1e-2 * scale) if want.dtype.kind == "f"
                    else np.array_equal(got, want))
                if not same:
                    return (f"output '{name}' of a sample changes when another sample shares its call: axis 0 is not "
                            "a batch of independent samples")
        return None

    def _probe_sample(self, seed: int) -> dict[str, np.ndarray]:
        """One synthesized sample: normal floats, integers inside the spec's range, dynamic axes of a few steps."""
        rng = np.random.default_rng(seed)
        steps = int(self._seq_len or 8)
        feeds = {}
        for t in self.inputs:
            shape = [1] + [d if isinstance(d, int) else steps for d in t.shape[1:]]
            if t.dtype == "bool":
                feeds[t.name] = np.ones(shape, dtype=np.bool_)
            elif t.dtype.startswith(("int", "uint")):
                low, high = t.value_range or t.bound or (0, 2)
                feeds[t.name] = rng.integers(low, high, size=shape).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(np.float32 if t.dtype == "bfloat16" else t.dtype)
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._runner({t.name: feeds[t.name] for t in self.inputs})
        return dict(zip(self.output_names(len(arrays)), arrays, strict=True))

    def output_names(self, count: int) -> list[str]:
        """The spec's names (the model's own, as inspected) where they cover every output, else the runtime's."""
        if len(self._declared) == count:
            return self._declared
        if self._found is not None and len(self._found) == count:
            return self._found
        return [f"output_{i}" for i in range(count)]


def _onnxruntime(path: Path, manifest: Mapping[str, Any], threads: int | None) -> Loaded:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = [(p["name"], p.get("options") or {}) for p in manifest.get("providers") or []]
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=providers or [("CPUExecutionProvider", {})])
    wanted = [p[0] for p in providers]
    if wanted and session.get_providers()[0] != wanted[0]:
        # ONNX Runtime drops a provider it cannot start with a warning only: say so where people look
        print(f"warning: {wanted[0]} did not start; running on {session.get_providers()[0]}", flush=True)
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.run(names, feeds))

    return run, names


def _openvino(path: Path, manifest: Mapping[str, Any], threads: int | None) -> Loaded:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": manifest.get("inference_precision") or "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(core.read_model(str(path)), manifest.get("device") or "CPU", config)
    ports: dict[str, int] = {}
    for index, port in enumerate(compiled.inputs):
        for name in port.get_names():
            ports[name] = index
    outputs = list(compiled.outputs)
    names = [next(iter(sorted(o.get_names())), f"output_{i}") for i, o in enumerate(outputs)]
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request.infer({ports[n]: a for n, a in feeds.items()})
        return [np.array(request.get_tensor(o).data, copy=True) for o in outputs]

    return run, names


def _torchscript(path: Path, manifest: Mapping[str, Any], threads: int | None) -> Loaded:
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    device = manifest.get("device") or "cpu"
    module = torch.jit.load(str(path), map_location=device).eval()
    if manifest.get("freeze", True):
        module = torch.jit.freeze(module)
    floats = [p.dtype for p in module.parameters() if p.dtype.is_floating_point]
    float_dtype = floats[0] if floats else torch.float32

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = []
        for array in feeds.values():
            tensor = torch.from_numpy(array).to(device)
            tensors.append(tensor.to(float_dtype) if tensor.dtype.is_floating_point else tensor)
        with torch.inference_mode():
            result = module(*tensors)
        items = result if isinstance(result, (tuple, list)) else (result,)
        return [t.detach().cpu().float().numpy() if t.dtype.is_floating_point else t.cpu().numpy() for t in items]

    return run, None  # a TorchScript module says how many outputs it returns only when it runs
