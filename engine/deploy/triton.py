"""The Triton bundle: model_repository/<name>/config.pbtxt and version 1 of the model (ONNX, TorchScript or a TensorRT
plan), with dims from the input spec, dynamic batching where the batch axis is dynamic, and the cell's device."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.deploy.bundle import MANIFEST, DeployCell

# Triton's batch limit for a model whose batch axis is dynamic (raised to the measured batch when that is larger).
MAX_BATCH = 32
QUEUE_DELAY_US = 1000
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
              "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
              "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# ONNX TensorProto element types, for the outputs read from the variant's graph
_ONNX_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 5: "int16",
               3: "int8", 2: "uint8", 9: "bool"}


@dataclass(frozen=True)
class Io:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # a string (or -1) is a dynamic axis


def model_name(deployed: DeployCell) -> str:
    """A Triton model name: the model's name in letters, digits, `_` and `-`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", deployed.model_name.rsplit(".", 1)[0]).strip("_") or "model"


def write(deployed: DeployCell, folder: Path) -> list[str]:
    name = model_name(deployed)
    version = folder / "model_repository" / name / "1"
    version.mkdir(parents=True)
    notes: list[str] = []
    plan = find_tensorrt_plan(deployed) if deployed.cell.runtime == "tensorrt" else None
    if deployed.cell.runtime == "tensorrt" and plan is None:
        notes.append("the cell's TensorRT engine is not in this data folder (engines are built per GPU and "
                     "TensorRT version): the repository runs its ONNX on the onnxruntime backend with the TensorRT "
                     "accelerator instead")
    if plan is not None:
        shutil.copyfile(plan, version / "model.plan")
        config = plan_config(deployed, name)
    elif deployed.cell.target == "torchscript":
        shutil.copyfile(deployed.model_file(), version / "model.pt")
        config = torchscript_config(deployed, name)
    else:
        for source, dest in deployed.variant_files():
            (version / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, version / dest)
        config = onnx_config(deployed, name, onnx_outputs(version / "model.onnx"))
    (version.parent / "config.pbtxt").write_text(config, encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(deployed.provenance("triton"), indent=1) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(readme(deployed, name, notes), encoding="utf-8")
    return notes


def max_batch_size(deployed: DeployCell) -> int:
    """0 when the model fixes its batch (Triton then passes whole tensors), else how many samples a batch may hold."""
    return 0 if deployed.spec.fixed_batch is not None else max(MAX_BATCH, deployed.cell.batch_size)


def _dims(shape: tuple[int | str, ...], batched: bool) -> str:
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return ", ".join(str(d) for d in (dims[1:] if batched else dims))


def _tensors(kind: str, items: list[Io], batched: bool) -> str:
    entries = ",\n".join(f"  {{\n    name: {json.dumps(t.name)}\n    data_type: {DATA_TYPES[t.dtype]}\n"
                         f"    dims: [ {_dims(t.shape, batched)} ]\n  }}" for t in items)
    return f"{kind} [\n{entries}\n]\n"


def _inputs(deployed: DeployCell) -> list[Io]:
    return [Io(t.name, t.dtype, t.shape) for t in deployed.spec.inputs]


def _common(deployed: DeployCell, batch: int) -> str:
    text = ""
    if batch > 0:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
    kind = "KIND_GPU" if deployed.gpu else "KIND_CPU"
    gpus = "\n    gpus: [ 0 ]" if deployed.gpu else ""
    text += f"instance_group [\n  {{\n    count: 1\n    kind: {kind}{gpus}\n  }}\n]\n"
    return text


def onnx_config(deployed: DeployCell, name: str, outputs: list[Io]) -> str:
    """The onnxruntime backend; for ONNX Runtime's TensorRT cells (and TensorRT cells without their engine) the
    TensorRT accelerator at the variant's precision; OpenVINO cells on the openvino backend, which reads ONNX."""
    batch = max_batch_size(deployed)
    backend = "openvino" if deployed.cell.runtime == "openvino" else "onnxruntime"
    text = (f"name: {json.dumps(name)}\nbackend: {json.dumps(backend)}\n"
            f"default_model_filename: \"model.onnx\"\nmax_batch_size: {batch}\n")
    text += _tensors("input", _inputs(deployed), batch > 0)
    text += _tensors("output", outputs, batch > 0)
    text += _common(deployed, batch)
    if deployed.cell.runtime in ("onnxruntime-tensorrt", "tensorrt"):
        text += ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                 "      name : \"tensorrt\"\n"
                 f"      parameters {{ key: \"precision_mode\" value: \"{deployed.precision}\" }}\n"
                 "    } ]\n  }\n}\n")
    if deployed.threads and backend == "onnxruntime" and not deployed.gpu:
        text += ("parameters {\n  key: \"intra_op_thread_count\"\n"
                 f"  value: {{ string_value: \"{deployed.threads}\" }}\n}}\n")
    return text


def torchscript_config(deployed: DeployCell, name: str) -> str:
    """The PyTorch (libtorch) backend: inputs by forward()'s argument names, outputs by Triton's OUTPUT__i rule."""
    batch = max_batch_size(deployed)
    outputs = [Io(f"output__{i}", t.dtype, t.shape) for i, t in enumerate(deployed.spec.outputs)]
    text = (f"name: {json.dumps(name)}\nplatform: \"pytorch_libtorch\"\ndefault_model_filename: \"model.pt\"\n"
            f"max_batch_size: {batch}\n")
    text += _tensors("input", _inputs(deployed), batch > 0)
    if outputs:
        text += _tensors("output", outputs, batch > 0)
    return text + _common(deployed, batch)


def plan_config(deployed: DeployCell, name: str) -> str:
    """A TensorRT plan is built for the cell's exact input shapes: no batch axis of Triton's, full dims."""
    shapes = deployed.spec.shapes(deployed.cell.batch_size)
    inputs = [Io(t.name, t.dtype, shapes[t.name]) for t in deployed.spec.inputs]
    outputs = [Io(t.name, t.dtype, t.shape) for t in deployed.spec.outputs]
    text = (f"name: {json.dumps(name)}\nplatform: \"tensorrt_plan\"\ndefault_model_filename: \"model.plan\"\n"
            "max_batch_size: 0\n")
    text += _tensors("input", inputs, False)
    if outputs:
        text += _tensors("output", outputs, False)
    return text + _common(deployed, 0)


def onnx_outputs(path: Path) -> list[Io]:
    """The outputs of the variant's own graph (an export may name them otherwise than the uploaded model)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = []
    for output in graph.output:
        tensor = output.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "dynamic") for d in tensor.shape.dim)
        found.append(Io(output.name, _ONNX_TYPES.get(tensor.elem_type, "float32"), dims))
    return found


# GPU compute capabilities TensorRT engines are built for (Volta to Blackwell): the engine's key names one of them
_CAPABILITIES = ((7, 0), (7, 2), (7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 1), (10, 3), (11, 0),
                 (12, 0), (12, 1))


def find_tensorrt_plan(deployed: DeployCell) -> Path | None:
    """The engine the TensorRT runtime built for this cell, where it is still in the data folder."""
    settings = deployed.cell.settings or {}
    version, gpu = settings.get("tensorrt"), settings.get("gpu")
    if not version or not gpu or not deployed.cell.variant_path:
        return None
    from engine.runtimes.tensorrt import engine_key
    from storage.paths import sub_dir

    engines = sub_dir("tensorrt") / "engines"
    if not engines.is_dir():
        return None
    shapes = deployed.spec.shapes(deployed.cell.batch_size)
    for capability in _CAPABILITIES:
        key = engine_key(deployed.model_file(), shapes, str(version), f"{gpu} sm{capability}",
                         int(settings.get("workspace_mb") or 0), bool(settings.get("tf32", False)))
        if (engines / f"{key}.plan").is_file():
            return engines / f"{key}.plan"
    return None


def readme(deployed: DeployCell, name: str, notes: list[str]) -> str:
    cell = deployed.cell
    return f"""# Triton model repository: {name}

Cell {cell.cell} of Paretoscope study {deployed.study_id}: **{cell.variant}** measured on **{cell.runtime}**
(batch {cell.batch_size}).
{"".join(f"{chr(10)}> Note: {n}.{chr(10)}" for n in notes)}
```bash
docker run --rm {"--gpus all " if deployed.gpu else ""}-p 8000:8000 -p 8001:8001 -p 8002:8002 \\
  -v "$PWD/model_repository:/models" nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
curl -s localhost:8000/v2/models/{name}/ready
curl -s localhost:8000/v2/models/{name}/config
```

`config.pbtxt` has the inputs and dims of the model's spec (-1 for a dynamic axis; with `max_batch_size` above 0
the batch axis is Triton's and is left out), dynamic batching where the batch axis is dynamic, and one instance on
the {"GPU" if deployed.gpu else "CPU"}. TorchScript models take their inputs by `forward()`'s argument names and
return `output__0`, `output__1`, ... (Triton's PyTorch backend names outputs by position).
"""
