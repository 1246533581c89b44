"""Build a variant: run a chain on a model for a target format, caching every built step.

ONNX and TorchScript files are cached by (model, chain, target). Torch-level passes (pruning, distillation)
are cached once for every target: their structural edits and final weights are stored, and every target
(eager torch, TorchScript, ONNX) rebuilds the module from them instead of pruning or training again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.artifacts import ONNX, SAVEDMODEL, TF_FORMATS, TORCHSCRIPT, Artifact, folder_size
from engine.errors import NotApplicable
from engine.generation.settings import is_generative
from engine.optimizations.base import Chain, Step
from engine.optimizations.export import OnnxExportConfig, to_onnx, to_torchscript
from engine.variants import BuildContext, Variant
from storage.paths import sub_dir

# What a runtime consumes: an eager module, a TorchScript archive, an ONNX file, or a TensorFlow model as uploaded.
TARGET_LABELS = {"torch": "PyTorch eager", "torchscript": "TorchScript", "onnx": "ONNX", "tensorflow": "TensorFlow"}
_VARIANT_JSON = "variant.json"
_WEIGHTS = "weights.safetensors"


def not_applicable_reason(model_format: str, chain: Chain, target: str, device: str) -> str | None:
    """Why this chain cannot be built for this target, from declared capabilities only (no imports)."""
    if model_format in TF_FORMATS or target == "tensorflow":
        return _tensorflow_reason(model_format, chain, target)
    for step in chain.stage("torch"):
        if model_format == ONNX:
            return f"{step.id} is a torch-level pass and needs a torch model; this model is ONNX"
        if step.opt.torch_devices and device not in step.opt.torch_devices:
            return f"{step.id} needs a {'/'.join(sorted(step.opt.torch_devices))} device"
        # a config may declare model formats it cannot handle (e.g. structured pruning of TorchScript)
        check = getattr(step.config, "unsupported_reason", None)
        reason = check(model_format) if callable(check) else None
        if reason:
            return str(reason)
    if model_format == ONNX and target != "onnx":
        return f"an ONNX model runs only on ONNX runtimes, not on {TARGET_LABELS[target]}"
    if model_format == TORCHSCRIPT and target == "torch":
        return "a TorchScript archive has no eager Python module; use the torchscript runtime"
    if chain.stage("convert") and model_format == ONNX:
        return "onnx-export needs a torch model; this model is ONNX already"
    if chain.stage("convert") and target != "onnx":
        return f"onnx-export produces ONNX, which {TARGET_LABELS[target]} does not run"
    work = "onnx" if target == "onnx" else "torch"
    for step in chain.stage("format"):
        if work not in step.opt.formats:
            return f"{step.id} has no {TARGET_LABELS[target]} implementation"
        if work == "torch" and step.opt.torch_devices and device not in step.opt.torch_devices:
            needs = "/".join(sorted(step.opt.torch_devices)).upper()
            return f"{step.id} in torch needs a {needs} device (CPU half-precision kernels are slow emulation)"
    return None


def _tensorflow_reason(model_format: str, chain: Chain, target: str) -> str | None:
    """A TensorFlow model runs as uploaded on the tensorflow runtime, and converted (tf2onnx) on ONNX runtimes,
    where every ONNX pass applies; nothing else runs on the tensorflow runtime."""
    if model_format not in TF_FORMATS:
        return "the tensorflow runtime runs TensorFlow models (a SavedModel or a .keras file) only"
    for step in chain.stage("torch"):
        return f"{step.id} is a torch-level pass and needs a torch model; this model is TensorFlow"
    if target not in ("tensorflow", "onnx"):
        return f"a TensorFlow model runs on TensorFlow and, converted with tf2onnx, on ONNX runtimes, not on " \
               f"{TARGET_LABELS[target]}"
    if target == "tensorflow" and chain.steps:
        return f"{chain.steps[0].id} has no TensorFlow implementation; its variants run on the ONNX runtimes"
    for step in chain.stage("format"):
        if "onnx" not in step.opt.formats:
            return f"{step.id} has no ONNX implementation"
    return None


def _key(*parts: Any) -> str:
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _calibration_digest(steps: list[Step], ctx: BuildContext) -> str | None:
    """A digest of the calibration inputs when a step calibrates (it has a `samples` parameter; it reads
    `calibration_samples` when it holds some out to measure fidelity).

    Part of the cache key, so that a variant calibrated on one data set is never served for another.
    """
    samples = [n for n in (getattr(s.config, "calibration_samples", getattr(s.config, "samples", None))
                           for s in steps) if isinstance(n, int)]
    if not samples:
        return None
    digest = hashlib.sha256()
    for name, array in sorted(ctx.calibration(max(samples)).items()):
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _training_digest(steps: list[Step] | tuple[Step, ...], ctx: BuildContext) -> str | None:
    """A digest of the training data when a step trains: a variant trained on one data set is never served
    for another."""
    limits = [int(getattr(s.config, "max_samples", 0)) for s in steps
              if getattr(s.config, "uses_training_data", False)]
    if not limits:
        return None
    digest = hashlib.sha256()
    for limit in sorted(set(limits)):
        inputs, labels, source = ctx.training(limit)
        digest.update(source.encode())
        for name, array in sorted(inputs.items()) + ([("labels", labels)] if labels is not None else []):
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _cached(key: str) -> tuple[Path, dict[str, Any]] | None:
    folder = sub_dir("variants") / key
    meta = folder / _VARIANT_JSON
    if meta.is_file():
        data = json.loads(meta.read_text())
        return folder / data["file"], data
    return None


def _store(key: str, produce: Callable[[Path], None], file_name: str, meta: dict[str, Any]) -> Path:
    """Build into a temp folder and rename it into place, so a crash never leaves half a variant."""
    root = sub_dir("variants")
    final = root / key
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=root))
    try:
        produce(staging / file_name)
        meta = {**meta, "file": file_name}
        (staging / _VARIANT_JSON).write_text(json.dumps(meta, indent=1))
        if final.exists():  # built meanwhile by another process: keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / file_name


def build_variant(model: Artifact, chain: Chain, target: str, ctx: BuildContext) -> Variant:
    """The chain applied to the model for `target` ("torch", "torchscript" or "onnx")."""
    reason = not_applicable_reason(model.format, chain, target, ctx.device)
    if reason:
        raise NotApplicable(reason)
    if model.format == "hf" and is_generative(model.info) and ctx.text_folder is None:
        ctx.text_folder = model.path  # a decoder distils on real text (BuildContext.training)
    start = time.perf_counter()
    if target == "torch":
        module, cached = _torch_module(model, chain, ctx)
        size = _state_size(module)
        return Variant(chain.name, target, None if chain.steps else model.path, size, ctx.notes,
                       time.perf_counter() - start, cached, module, model.spec.names, ctx.train_s, ctx.details)
    path, cached = _build_file(model, chain, target, ctx)
    meta = path.parent / _VARIANT_JSON
    size = folder_size(path.parent) - meta.stat().st_size if meta.is_file() else model.size_bytes
    # the ONNX of a SavedModel as uploaded: a runtime with its own TensorFlow reader may read the folder instead
    source = model.path if model.format == SAVEDMODEL and target == "onnx" and not chain.stage("format") else None
    return Variant(chain.name, target, path, size, ctx.notes, time.perf_counter() - start, cached,
                   input_names=model.spec.names, train_s=ctx.train_s, details=ctx.details, source=source)


def _torch_module(model: Artifact, chain: Chain, ctx: BuildContext) -> tuple[Any, bool]:
    """The module after the chain's torch-level passes (cached) and its torch format passes."""
    module, cached = _torch_stage(model, chain.stage("torch"), ctx)
    for step in chain.stage("format"):
        ctx.progress(f"building {step.id}", 0.0)
        module = step.opt.impls["torch"](module, step.config, ctx)
    return module, cached and not chain.stage("format")


def _torch_stage(model: Artifact, steps: tuple[Step, ...], ctx: BuildContext) -> tuple[Any, bool]:
    """Run the torch-level passes once and cache their edits and weights; later builds replay them."""
    import torch

    from engine.modules import load_module
    from engine.optimizations import surgery

    def original() -> Any:
        return load_module(model.path, model.format, model.spec)

    module = original()
    if not steps:
        return module, False
    key = _key("torch-stage", model.sha256, [s.to_json() for s in steps], ctx.spec.to_json(),
               _training_digest(steps, ctx), torch.__version__)
    hit = _cached(key)
    if hit is not None:
        path, meta = hit
        ctx.progress("loading the cached torch-level passes", 0.0)
        surgery.apply(module, meta["edits"])
        surgery.load_weights(module, path)
        ctx.notes[:] = list(meta.get("notes", []))
        _restore_details(ctx, meta)
        ctx.edits[:] = list(meta["edits"])
        ctx.train_s = meta.get("train_s")
        return module, True
    ctx.original = original
    for step in steps:
        ctx.progress(f"building {step.id}", 0.0)
        module = step.opt.impls["torch"](module, step.config, ctx)
    name = Chain(steps).name
    _store(key, lambda dst: surgery.save_weights(module, dst), _WEIGHTS,
           {"chain": name, "target": "torch", "notes": ctx.notes, "edits": ctx.edits, "train_s": ctx.train_s,
            "details": ctx.details})
    return module, False


def _restore_details(ctx: BuildContext, meta: dict[str, Any]) -> None:
    """The cached chain's records replace the partial ones (in place: the variant shares the dict)."""
    ctx.details.clear()
    ctx.details.update(meta.get("details", {}))


def _state_size(module: Any) -> int:
    """Serialized size of the module's state (what shipping it would cost)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _build_file(model: Artifact, chain: Chain, target: str, ctx: BuildContext) -> tuple[Path, bool]:
    if ((target == model.format and target in (ONNX, TORCHSCRIPT)) or target == "tensorflow") and not chain.steps:
        return model.path, False  # the uploaded file itself
    steps = list(chain.steps)
    # the longest cached prefix wins; every built step is cached for the next chain that shares it
    key = _key(model.sha256, target, [s.to_json() for s in steps], ctx.spec.to_json(),
               _calibration_digest(steps, ctx), _training_digest(steps, ctx))
    hit = _cached(key)
    if hit is not None:
        path, meta = hit
        ctx.notes[:] = list(meta.get("notes", []))  # the cached chain's notes replace the partial ones
        _restore_details(ctx, meta)
        ctx.train_s = meta.get("train_s")
        return path, True
    if target == "torchscript":
        module, _ = _torch_module(model, chain, ctx)
        path = _store(key, lambda dst: to_torchscript(module, ctx.spec, dst, ctx.notes), "model.pt",
                      {"chain": chain.name, "target": target, "notes": ctx.notes, "train_s": ctx.train_s,
                       "details": ctx.details})
        return path, False
    last = steps[-1] if steps else None
    if last is not None and last.opt.stage == "format":
        parent, _ = _build_file(model, Chain(tuple(steps[:-1])), target, ctx)
        return _apply_onnx_pass(key, parent, last, chain, ctx), False
    # torch passes (if any) then export; an explicit onnx-export step carries the export settings
    export_cfg = last.config if last is not None and last.id == "onnx-export" else OnnxExportConfig()
    assert isinstance(export_cfg, OnnxExportConfig)
    ctx.progress("exporting to ONNX", 0.0)
    if model.format in TF_FORMATS:
        from engine import tf_models

        path = _store(key, lambda dst: tf_models.to_onnx(model.path, model.format, ctx.spec, dst, export_cfg.opset,
                                                         ctx.notes, ctx.details), "model.onnx",
                      {"chain": chain.name, "target": target, "notes": ctx.notes, "train_s": ctx.train_s,
                       "details": ctx.details})
        return path, False
    module, _ = _torch_module(model, Chain(chain.stage("torch")), ctx)
    path = _store(key, lambda dst: to_onnx(module, ctx.spec, dst, export_cfg, ctx.notes), "model.onnx",
                  {"chain": chain.name, "target": target, "notes": ctx.notes, "train_s": ctx.train_s,
                   "details": ctx.details})
    return path, False


def _apply_onnx_pass(key: str, parent: Path, step: Step, chain: Chain, ctx: BuildContext) -> Path:
    """Run one ONNX pass on the parent's file; the stored notes cover the whole chain so far."""
    ctx.progress(f"building {step.id}", 0.0)
    return _store(key, lambda dst: step.opt.impls["onnx"](parent, dst, step.config, ctx), "model.onnx",
                  {"chain": chain.name, "target": "onnx", "notes": ctx.notes, "train_s": ctx.train_s,
                   "details": ctx.details})
