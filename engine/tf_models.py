"""TensorFlow models (a SavedModel folder, a Keras `.keras` file): inspection, a callable, conversion to ONNX.

Imported only by the code paths that need TensorFlow (their intake, the `tensorflow` runtime, their onnx-export):
TensorFlow is an optional extra (requirements-tf.txt), and importing it costs seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError, is_out_of_memory
from engine.specs import BATCH_AXIS, DEFAULT_INT_RANGE, InputSpec, TensorSpec, guess_role

SAVEDMODEL, KERAS = "savedmodel", "keras"
SERVING = "serving_default"
INSTALL_HINT = "pip install -r requirements-tf.txt (or make install TF=1)"
# tf2onnx 1.17 converts to opsets up to 18 (its OPSET_TO_IR_VERSION); a higher opset asked for is lowered to it
TF2ONNX_MAX_OPSET = 18
_TF_DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}


def import_tf(label: str = "TensorFlow models") -> Any:
    """TensorFlow, quietly; a UserError that says what to install when it is missing."""
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) would fill every cell's log
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise UserError(f"{label}: SavedModel and Keras models need the TensorFlow extra, which is not installed; "
                        f"{INSTALL_HINT}") from exc
    return tf


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@dataclass
class Loaded:
    """A TensorFlow model ready to call: `call(*tensors)` returns its outputs in `output_names` order."""

    call: Callable[..., list[Any]]
    input_names: list[str]
    output_names: list[str]
    inputs: list[Any]  # tf.TensorSpec per input, with the model's own names, dtypes and shapes
    parameters: int
    keepalive: Any  # the loaded object the functions belong to (a SavedModel's restored trackables)


def load(path: Path, fmt: str, label: str) -> Loaded:
    """Load a SavedModel's serving signature, or a `.keras` file in Keras's safe mode (no Lambda, no unknown
    classes); a UserError of one line for anything that does not load."""
    tf = import_tf(label)
    if fmt == SAVEDMODEL:
        return _load_saved_model(tf, path, label)
    if fmt == KERAS:
        return _load_keras(tf, path, label)
    raise UserError(f"{label}: format '{fmt}' is not a TensorFlow model")


def _load_saved_model(tf: Any, path: Path, label: str) -> Loaded:
    try:
        loaded = tf.saved_model.load(str(path))
    # whatever a corrupt protobuf, a missing variable file or an unknown op raises
    except (tf.errors.OpError, ValueError, TypeError, KeyError, OSError, RuntimeError, AttributeError,
            NotImplementedError) as exc:
        if is_out_of_memory(str(exc)):
            raise MemoryError(_line(exc)) from exc
        raise UserError(f"{label}: the SavedModel does not load ({type(exc).__name__}: {_line(exc)}); save it "
                        "again with model.export(dir) or tf.saved_model.save") from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if SERVING not in signatures:
        found = ", ".join(sorted(signatures)) or "none"
        raise UserError(f"{label}: the SavedModel has no serving signature '{SERVING}' (signatures: {found}); "
                        "save it with model.export(dir), or tf.saved_model.save(obj, dir, signatures=...)")
    signature = signatures[SERVING]
    args, kwargs = signature.structured_input_signature
    if args or not kwargs:
        raise UserError(f"{label}: the serving signature takes no named tensors; save it with named inputs "
                        "(tf.TensorSpec(..., name=...))")
    names = sorted(kwargs)
    inputs = [kwargs[n] for n in names]
    structured = signature.structured_outputs
    if isinstance(structured, dict):
        output_names = sorted(structured)
    else:
        output_names = [f"output_{i}" for i in range(len(tf.nest.flatten(structured)))]

    def call(*tensors: Any) -> list[Any]:
        result = signature(**dict(zip(names, tensors, strict=True)))
        if isinstance(result, dict):
            return [result[n] for n in output_names]
        return list(tf.nest.flatten(result))

    parameters = sum(int(np.prod(v.shape)) for v in getattr(loaded, "variables", ()) or ())
    return Loaded(call, names, output_names, inputs, parameters, loaded)


def _load_keras(tf: Any, path: Path, label: str) -> Loaded:
    import keras

    try:
        # safe mode refuses Lambda layers (pickled Python) and classes Keras does not know; never turned off
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    # Keras raises ValueError and TypeError for configs it refuses, the rest for broken archives and weights
    except (ValueError, TypeError, KeyError, OSError, AttributeError, NotImplementedError, RuntimeError,
            IndexError, tf.errors.OpError) as exc:
        if is_out_of_memory(str(exc)):
            raise MemoryError(_line(exc)) from exc
        raise UserError(f"{label}: the Keras file does not load in safe mode ({type(exc).__name__}: {_line(exc)}); "
                        "save it with model.save('model.keras') using built-in layers, or export a SavedModel"
                        ) from exc
    try:
        keras_inputs = list(model.inputs)
    except (AttributeError, ValueError) as exc:
        raise UserError(f"{label}: the Keras model has no defined inputs (a subclassed or unbuilt model); build it "
                        "on keras.Input(...) or export a SavedModel with model.export(dir)") from exc
    if not keras_inputs:
        raise UserError(f"{label}: the Keras model has no defined inputs; build it on keras.Input(...)")
    names = [str(t.name) for t in keras_inputs]
    if len(set(names)) != len(names):
        raise UserError(f"{label}: the Keras model's inputs share a name ({', '.join(names)}); name each keras.Input")
    inputs = [tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=n) for t, n in zip(keras_inputs, names,
                                                                                          strict=True)]
    count = len(list(model.outputs))
    declared = [str(n) for n in getattr(model, "output_names", None) or []]
    output_names = declared if len(declared) == count and len(set(declared)) == count else [
        f"output_{i}" for i in range(count)]
    single = len(inputs) == 1

    # one trace for every batch size: the input signature keeps the model's dynamic axes
    @tf.function(input_signature=inputs, reduce_retracing=True)
    def traced(*tensors: Any) -> list[Any]:
        out = model(tensors[0] if single else list(tensors), training=False)
        return list(tf.nest.flatten(out))

    def call(*tensors: Any) -> list[Any]:
        return list(traced(*tensors))

    return Loaded(call, names, output_names, inputs, int(model.count_params()), model)


def _tensor_spec(name: str, dtype: str, shape: Any, label: str, what: str) -> TensorSpec:
    if dtype not in _TF_DTYPES:
        raise UserError(f"{label}: {what} '{name}' has dtype {dtype}; Paretoscope measures models with float, "
                        "integer or bool inputs and outputs")
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    if dims is None:
        raise UserError(f"{label}: {what} '{name}' has no known rank; save the model with a shaped signature")
    out: list[int | str] = [int(d) if d is not None else (BATCH_AXIS if i == 0 else f"dim{i}")
                            for i, d in enumerate(dims)]
    value_range = None
    if dtype.startswith(("int", "uint")) and what == "input":
        value_range = (0, 2) if "mask" in name.lower() or "type" in name.lower() else DEFAULT_INT_RANGE
    return TensorSpec(name, dtype, tuple(out), value_range, role=guess_role(name, dtype) if what == "input" else None)


def inspect(path: Path, fmt: str, label: str) -> tuple[InputSpec, dict[str, Any]]:
    """The model's InputSpec (names, dtypes, shapes with dynamic axes) from its serving signature or its Keras
    inputs, checked by one call on synthesized inputs, and what else intake records."""
    from engine.data import synthesize

    tf = import_tf(label)
    model = load(path, fmt, label)
    inputs = tuple(_tensor_spec(n, t.dtype.name, t.shape, label, "input")
                   for n, t in zip(model.input_names, model.inputs, strict=True))
    probe = InputSpec(inputs)
    feeds = synthesize(probe, 2)
    try:
        outputs = model.call(*[tf.constant(feeds[n]) for n in model.input_names])
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        if is_out_of_memory(str(exc)):
            raise MemoryError(_line(exc)) from exc
        raise UserError(f"{label}: the model does not run on inputs {probe.describe()} ({_line(exc)})") from exc
    specs = []
    for name, out in zip(model.output_names, outputs, strict=True):
        shape = list(out.shape)
        specs.append(_tensor_spec(name, out.dtype.name, [None, *shape[1:]] if shape else [], label, "output"))
    info: dict[str, Any] = {"parameters": model.parameters, "tensorflow": tf.__version__}
    if fmt == SAVEDMODEL:
        info["signature"] = SERVING
    else:
        import keras

        info["keras"] = keras.__version__
    return InputSpec(inputs, tuple(specs)), info


def to_onnx(path: Path, fmt: str, spec: InputSpec, dst: Path, opset: int, notes: list[str],
            details: dict[str, Any]) -> None:
    """Convert with tf2onnx from the serving signature (or the Keras model's call), naming the ONNX inputs and
    outputs as the spec does and in its order, so that every runtime is fed and read alike."""
    tf = import_tf(path.name)
    try:
        import tf2onnx
    except ImportError as exc:
        raise UserError(f"{path.name}: converting a TensorFlow model to ONNX needs tf2onnx; {INSTALL_HINT}") from exc
    import onnx

    model = load(path, fmt, path.name)
    by_name = dict(zip(model.input_names, model.inputs, strict=True))
    signature = [tf.TensorSpec([d if isinstance(d, int) else None for d in t.shape], tf.as_dtype(t.dtype),
                               name=t.name) for t in spec.inputs]
    missing = [t.name for t in spec.inputs if t.name not in by_name]
    if missing:
        raise UserError(f"{path.name}: the model has no inputs named {', '.join(missing)}")
    order = [spec.names.index(n) for n in model.input_names]
    outputs = [t.name for t in spec.outputs] if len(spec.outputs) == len(model.output_names) else model.output_names

    @tf.function(input_signature=signature)
    def serving(*tensors: Any) -> dict[str, Any]:
        result = model.call(*[tensors[i] for i in order])
        # identity: tf2onnx names each output after its key, which needs one tensor per key
        return {name: tf.identity(t) for name, t in zip(outputs, result, strict=True)}

    used = min(opset, TF2ONNX_MAX_OPSET)
    proto, _ = tf2onnx.convert.from_function(serving, input_signature=signature, opset=used)
    _order_outputs(proto, outputs)
    onnx.save(proto, str(dst))
    source = "the SavedModel's serving signature" if fmt == SAVEDMODEL else "the Keras model (safe mode)"
    lowered = f"; opset {opset} asked, tf2onnx converts up to {TF2ONNX_MAX_OPSET}" if used != opset else ""
    notes.append(f"converted to ONNX with tf2onnx {tf2onnx.__version__} (opset {used}) from {source}, "
                 f"TensorFlow {tf.__version__}{lowered}")
    details["onnx-export"] = {"converter": "tf2onnx", "converter_version": tf2onnx.__version__, "opset": used,
                              "tensorflow": tf.__version__, "source": fmt}


def _order_outputs(proto: Any, names: list[str]) -> None:
    """The graph's outputs in the spec's order (tf2onnx orders a dict's keys as tf.nest does: sorted)."""
    by_name = {o.name: o for o in proto.graph.output}
    if sorted(by_name) != sorted(names):
        raise RuntimeError(f"tf2onnx named the outputs {sorted(by_name)}, expected {names}")
    ordered = [by_name[n] for n in names]
    copies = [type(o)() for o in ordered]
    for copy, original in zip(copies, ordered, strict=True):
        copy.CopyFrom(original)
    del proto.graph.output[:]
    proto.graph.output.extend(copies)
