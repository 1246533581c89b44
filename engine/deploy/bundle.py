"""A measured cell as a deployment bundle: which cell (the recommended one by default), which files, which folder.

Each target (fastapi_bundle.py, triton.py, hf_endpoint.py) lays out its own folder from a `DeployCell`; this module
picks the cell, lists the variant's files, refuses what cannot be bundled with a line that says what to pick instead,
and writes the files the targets share (write.py writes the folder or its zip). Bundles hold the variant's own files
and text written here: no path of this machine, no pickle, nothing else of the data folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.deploy import generative_cells
from engine.errors import UserError
from engine.standalone import foreign_imports
from engine.results import CellResult, Status
from engine.specs import InputSpec

HERE = Path(__file__).resolve().parent
TARGETS = ("fastapi", "triton", "hf-endpoint")
MANIFEST = "bundle.json"  # at the top of every bundle: what it is and where it came from (served_model reads it)
BUNDLE_FORMAT = 1

# How a measured runtime's cell is served outside Paretoscope: the runtime the bundle runs, and for ONNX Runtime the
# execution providers (the fastest first; ONNX Runtime runs an op the first cannot on the next).
_SERVED = {
    "onnxruntime": ("onnxruntime", ("CPUExecutionProvider",)),
    "onnxruntime-cuda": ("onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider")),
    "onnxruntime-tensorrt": ("onnxruntime", ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                             "CPUExecutionProvider")),
    # a TensorRT engine is built for one GPU and TensorRT version: a Python server runs the cell's ONNX through
    # ONNX Runtime's TensorRT provider, which builds it again where it runs (Triton can take the engine itself)
    "tensorrt": ("onnxruntime", ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")),
    "openvino": ("openvino", ()),
    "torchscript": ("torchscript", ()),
}
_BUNDLEABLE = frozenset(_SERVED)
# what the standalone files may import besides the standard library: what the bundles' requirements install
_IMPORTABLE = {"numpy", "fastapi", "uvicorn", "prometheus_client", "onnxruntime", "openvino", "torch",
               "served_model"}


@dataclass(frozen=True)
class DeployCell:
    """One measured cell of a study, with what a bundle needs to know about it."""

    study_id: int
    study_name: str
    model_name: str
    cell: CellResult
    spec: InputSpec
    libraries: dict[str, str | None] = field(default_factory=dict)  # versions the cell was measured with
    recommended: bool = False  # picked as the Results page's recommendation, not named with --cell

    @property
    def served_runtime(self) -> str:
        return _SERVED[self.cell.runtime][0]

    @property
    def providers(self) -> tuple[str, ...]:
        return _SERVED[self.cell.runtime][1]

    @property
    def gpu(self) -> bool:
        device = str((self.cell.settings or {}).get("device") or "cpu")
        return device.startswith("cuda") or self.cell.runtime in ("onnxruntime-cuda", "onnxruntime-tensorrt",
                                                                  "tensorrt")

    @property
    def ops(self) -> set[str]:
        """The optimization ids of the cell's chain (`fp16`, `int8-static`, ...)."""
        return {step.split(":", 1)[0] for step in self.cell.variant.split("+")}

    @property
    def precision(self) -> str:
        """FP16, INT8 or FP32: what the variant's own numbers are (a TensorRT build must allow it)."""
        if "fp16" in self.ops:
            return "FP16"
        if self.ops & {"int8-static", "int8-nncf"}:
            return "INT8"
        return "FP32"

    @property
    def threads(self) -> int | None:
        value = (self.cell.settings or {}).get("threads")
        return int(value) if isinstance(value, int) else None

    @property
    def label(self) -> str:
        return f"cell {self.cell.cell} ({self.cell.variant} on {self.cell.runtime}, batch {self.cell.batch_size})"

    def model_file(self) -> Path:
        """The variant's model file in the data folder; UserError when it is gone."""
        path = Path(self.cell.variant_path or "")
        if not self.cell.variant_path or not path.is_file():
            raise UserError(f"the model file of {self.label} is no longer in the data folder; run the study again "
                            "(python -m engine bench, or the Benchmark page), then deploy")
        return path

    def variant_files(self) -> list[tuple[Path, str]]:
        """(source, name in the bundle) of every file the variant loads: its model file, named model.onnx or
        model.pt, and for ONNX the external-data files beside it (a built variant's or an uploaded zip's folder)."""
        main = self.model_file()
        if self.cell.target == "torchscript":
            return [(main, "model.pt")]
        files = [(main, "model.onnx")]
        # an upload's folder holds artifact.json, a built variant's variant.json: Paretoscope's records, not the model's
        for path in sorted(main.parent.rglob("*")):
            if path.is_file() and path != main and path.name not in ("artifact.json", "variant.json"):
                files.append((path, path.relative_to(main.parent).as_posix()))
        return files

    def provenance(self, target: str) -> dict[str, Any]:
        """What the bundle records about where it came from (no path, no secret)."""
        latency = self.cell.latency_ms
        return {"paretoscope_bundle": BUNDLE_FORMAT, "target": target, "study": self.study_id,
                "study_name": self.study_name, "model_name": self.model_name, "cell": self.cell.cell,
                "variant": self.cell.variant, "measured_runtime": self.cell.runtime,
                "batch_size": self.cell.batch_size, "recommended": self.recommended,
                "p50_ms": latency.p50 if latency else None, "p99_ms": latency.p99 if latency else None}


def _bundleable_instead(cells: list[CellResult], like: CellResult) -> list[CellResult]:
    """Measured cells that can be bundled, the same variant at the same batch size first, fastest first."""
    ok = [c for c in cells if (c.status == Status.OK and c.runtime in _BUNDLEABLE and c.variant_path)
          or generative_cells.servable(c)]
    return sorted(ok, key=lambda c: (c.variant != like.variant, c.batch_size != like.batch_size,
                                     c.latency_ms.p50 if c.latency_ms and c.latency_ms.p50 is not None else 1e30))


def _refuse_unbundleable(cells: list[CellResult], cell: CellResult, label: str) -> None:
    if cell.runtime in _BUNDLEABLE:
        return
    if generative_cells.is_generation_cell(cell):  # served by the generative bundle, or refused naming a cell that is
        generative_cells.check_servable(cells, cell, label)
        return
    from engine.runtimes import get

    try:
        consumes = get(cell.runtime).consumes
    except UserError:
        consumes = "?"
    what = ("an in-memory PyTorch module, with no file to bundle" if consumes == "torch"
            else f"a runtime ({cell.runtime}) that no bundle target runs")
    instead = _bundleable_instead(cells, cell)
    hint = (f"deploy cell {instead[0].cell} instead ({instead[0].variant} on {instead[0].runtime}, batch "
            f"{instead[0].batch_size}): --cell {instead[0].cell}" if instead else
            "add onnxruntime, openvino or torchscript to the study's runtimes, run it, then deploy that cell")
    raise UserError(f"{label} runs {what}; {hint}")


def choose_cell(report: dict[str, Any], cell: int | None) -> tuple[CellResult, bool]:
    """The cell to bundle and whether it is the recommendation: `cell` when given (it must have run), else the
    Results page's pick under its default constraints."""
    cells = [CellResult.from_json(row) for row in report["results"]]
    study_id = report["study"]["id"]
    if not cells:
        raise UserError(f"study {study_id} has no cells")
    if cell is None:
        picked = recommended_cell(report)
        if picked is None:
            raise UserError(f"study {study_id} has no measured cell to recommend; pick one with --cell N "
                            "(the # column of `python -m engine report`)")
        chosen = next(c for c in cells if c.cell == picked)
        _refuse_unbundleable(cells, chosen, f"the recommended cell {picked} ({chosen.variant} on {chosen.runtime})")
        return chosen, True
    by_number = {c.cell: c for c in cells}
    chosen_or_none = by_number.get(cell)
    if chosen_or_none is None:
        numbers = sorted(n for n in by_number if n is not None)
        raise UserError(f"study {study_id} has cells {numbers[0]}-{numbers[-1]}; pick one with --cell")
    chosen = chosen_or_none
    if chosen.status != Status.OK:
        ran = [c for c in _bundleable_instead(cells, chosen) if c.cell != cell]
        hint = f"pick a measured one, e.g. --cell {ran[0].cell}" if ran else "run the study again, then deploy"
        raise UserError(f"cell {cell} of study {study_id} is {chosen.status}"
                        + (f" ({chosen.error.splitlines()[0][:120]})" if chosen.error else "") + f": {hint}")
    _refuse_unbundleable(cells, chosen, f"cell {cell} ({chosen.variant} on {chosen.runtime})")
    return chosen, False


def recommended_cell(report: dict[str, Any]) -> int | None:
    """The cell the Results page's ship panel recommends under its default constraints (none changed)."""
    from engine.report.html import default_constraints
    from engine.report.pareto import accuracy_column, recommend
    from engine.report.tables import results_table

    if generative_cells.is_generation_study(report):
        return generative_cells.recommended(report)
    frame = results_table(report)
    if frame.empty:
        return None
    accuracy, _ = accuracy_column(frame)
    best = recommend(frame, default_constraints(frame), accuracy)
    return None if best is None else int(best["cell"])


def deploy_cell(report: dict[str, Any], cell: int | None) -> DeployCell:
    """The study's cell to bundle, from its results JSON."""
    chosen, recommended = choose_cell(report, cell)
    study = report["study"]
    environment = report.get("environment")
    libraries = environment.get("libraries") if isinstance(environment, dict) else None
    return DeployCell(study_id=int(study["id"]), study_name=str(study.get("name") or ""),
                      model_name=str(study["model"].get("name") or "model"), cell=chosen,
                      spec=InputSpec.from_json(study["model"]["spec"]), libraries=dict(libraries or {}),
                      recommended=recommended)


def load_deploy_cell(study_id: int, cell: int | None) -> DeployCell:
    """deploy_cell on a stored study; UserError when no study has this id."""
    from engine.report.source import results_json
    from storage.db import session

    with session(write=False) as s:
        try:
            report = results_json(s, study_id)
        except KeyError:
            raise UserError(f"no study with id {study_id}; list them in the dashboard") from None
    return deploy_cell(report, cell)


# --- the files every target shares ---------------------------------------------------------------------------


def pinned(package: str, libraries: dict[str, str | None]) -> str:
    """`package==version` with the version the cell was measured with (else this machine's), or the bare name."""
    version = libraries.get(package)
    if not version:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return package
    return f"{package}=={version.split('+')[0]}"  # torch's local "+cpu" is an index, not a version


def runtime_requirements(deployed: DeployCell) -> list[str]:
    """What the bundle's runtime needs from PyPI, as requirements.txt lines."""
    if deployed.served_runtime == "onnxruntime":
        return [pinned("onnxruntime-gpu", deployed.libraries) if deployed.gpu
                else pinned("onnxruntime", deployed.libraries)]
    if deployed.served_runtime == "openvino":
        return [pinned("openvino", deployed.libraries)]
    torch = pinned("torch", deployed.libraries)
    # the CPU wheel unless the cell ran on a GPU: PyPI's default torch pulls in CUDA (gigabytes)
    return [torch] if deployed.gpu else ["--extra-index-url https://download.pytorch.org/whl/cpu", torch]


def standalone_source(module: str, allowed: frozenset[str] = frozenset()) -> str:
    """engine/deploy/<module>.py as a bundle carries it: its `engine.deploy.served_model` import pointed at the
    bundle's own served_model.py, and nothing imported that the bundle's requirements (and `allowed`) do not
    install."""
    source = (HERE / f"{module}.py").read_text(encoding="utf-8")
    source = re.sub(r"^from engine\.deploy\.served_model import", "from served_model import", source,
                    flags=re.MULTILINE)
    foreign = foreign_imports(source, _IMPORTABLE | allowed)
    if foreign:
        raise RuntimeError(f"{module}.py imports {foreign[0]}, which a bundle does not install")
    return source


def write_serving_files(deployed: DeployCell, folder: Path, target: str, model_dir: str = "model") -> None:
    """The model's files under `model_dir`, spec.json, bundle.json and served_model.py: what serve.py and handler.py
    load."""
    for source, name in deployed.variant_files():
        dest = folder / model_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    spec = deployed.spec.to_json()
    (folder / "spec.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    model = "model.pt" if deployed.cell.target == "torchscript" else "model.onnx"
    manifest: dict[str, Any] = {**deployed.provenance(target), "runtime": deployed.served_runtime,
                                "model": f"{model_dir}/{model}", "threads": deployed.threads}
    settings = deployed.cell.settings or {}
    if deployed.served_runtime == "onnxruntime":
        manifest["providers"] = [{"name": p, "options": _provider_options(p, deployed)} for p in deployed.providers]
    elif deployed.served_runtime == "openvino":
        manifest["inference_precision"] = settings.get("inference_precision") or "f32"
    else:
        manifest["freeze"] = bool(settings.get("freeze", True))
        manifest["device"] = "cuda" if deployed.gpu else "cpu"
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (folder / "served_model.py").write_text(standalone_source("served_model"), encoding="utf-8")


def _provider_options(provider: str, deployed: DeployCell) -> dict[str, Any]:
    # device 0: the bundle runs on another machine; CUDA_VISIBLE_DEVICES picks the GPU there
    tf32 = bool((deployed.cell.settings or {}).get("tf32", False))
    if provider == "CUDAExecutionProvider":
        return {"device_id": 0, "use_tf32": int(tf32)}
    if provider == "TensorrtExecutionProvider":
        options: dict[str, Any] = {"device_id": 0}
        if deployed.precision == "FP16":
            options["trt_fp16_enable"] = True
        elif deployed.precision == "INT8":
            options["trt_int8_enable"] = True  # the variant's QDQ nodes carry the scales
        return options
    return {}


def example_inputs(spec: InputSpec) -> dict[str, Any]:
    """A request body for one sample: zeros of each input's shape (dynamic axes at 1, or the sequence length)."""
    body: dict[str, Any] = {}
    for tensor in spec.inputs:
        shape = [d if isinstance(d, int) else (1 if i == 0 else (spec.seq_len or 8))
                 for i, d in enumerate(tensor.shape)]
        value: Any = False if tensor.dtype == "bool" else (
            (tensor.value_range[0] if tensor.value_range else 0) if tensor.dtype.startswith(("int", "uint")) else 0.0)
        if tensor.role == "attention_mask":
            value = True if tensor.dtype == "bool" else 1
        for size in reversed(shape):
            value = [value] * size if not isinstance(value, list) else [list(value) for _ in range(size)]
        body[tensor.name] = value
    return {"inputs": body}
