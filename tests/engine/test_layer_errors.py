"""Which layers lost accuracy: per-layer errors against the fp32 reference (engine/measure/layers.py), and the
same variant rebuilt with the worst layers kept in float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import diagnostics, job
from engine.artifacts import intake
from engine.errors import NotApplicable
from engine.measure import layers
from engine.measure.latency import MeasureSettings
from engine.optimizations import parse_chain
from engine.plan import Cell, StudySettings
from tests.engine.variants import build_onnx

# the layer reading the outlier channel: per-tensor int8 activations flatten every other channel of its input
CULPRIT = 4


def _outlier_mlp() -> Any:
    """Four Linear layers; channel 5 of layer 2's output is 1000x larger and layer 4 reads it 1000x smaller, so the
    function is an ordinary MLP's, but the activation layer 4 reads has one outlier channel."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    with torch.no_grad():
        model[2].weight[5] *= 1000
        model[2].bias[5] *= 1000
        model[CULPRIT].weight[:, 5] /= 1000
    return model


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("outlier") / "outlier.onnx"
    torch.onnx.export(_outlier_mlp(), (torch.randn(2, 16),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def _inputs(n: int = 8) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)}


@pytest.mark.parametrize("chain", ["int8-static", "int8-dynamic"])
def test_the_layer_reading_an_outlier_channel_is_named_first(outlier_onnx: Path, chain: str) -> None:
    reference, variant = build_onnx(outlier_onnx, "baseline"), build_onnx(outlier_onnx, chain)
    found, notes = layers.onnx_layer_errors(reference.file, variant.file, _inputs(), 4, 1)
    assert notes == [] and found[0].layer == f"/{CULPRIT}/Gemm"
    assert {e.layer for e in found} == {"/0/Gemm", "/2/Gemm", "/4/Gemm", "/6/Gemm"}
    worst, rest = found[0], found[1:]
    assert worst.own is not None and all(worst.own > 10 * (e.own or 0) for e in rest)
    # what reaches the last layer carries the culprit's error: large there too, but not its own
    last = next(e for e in found if e.layer == "/6/Gemm")
    assert last.error > 0.1 and last.own is not None and last.own < worst.own / 10


def test_a_torch_variants_layers_are_compared_by_forward_hooks() -> None:
    import torch

    quantized = torch.ao.quantization.quantize_dynamic(_outlier_mlp(), {torch.nn.Linear}, dtype=torch.qint8)
    found, notes = layers.torch_layer_errors(_outlier_mlp(), quantized, diagnostics._torch_call(["x"]), _inputs(), 4)
    assert notes == [] and found[0].layer == str(CULPRIT) and found[0].op_type == "Linear"
    assert [e.layer for e in found[1:]] and all((found[0].own or 0) > 5 * (e.own or 0) for e in found[1:])


def test_layers_are_compared_a_slice_at_a_time(outlier_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marked: list[int] = []
    original = layers._with_outputs

    def counting(model: Any, tensors: list[str]) -> Any:
        marked.append(len(tensors))
        return original(model, tensors)

    monkeypatch.setattr(layers, "SLICE", 3)
    monkeypatch.setattr(layers, "_with_outputs", counting)
    reference, variant = build_onnx(outlier_onnx, "baseline"), build_onnx(outlier_onnx, "int8-static")
    found, _ = layers.onnx_layer_errors(reference.file, variant.file, _inputs(), 4, 1)
    assert marked == [3, 3, 1, 1]  # reference and variant, 3 tensors then the fourth: never all at once
    assert found[0].layer == f"/{CULPRIT}/Gemm"  # the slices' feeders still see each other


def test_a_cells_result_carries_its_layer_errors(tmp_path: Path, outlier_onnx: Path) -> None:
    model = intake(outlier_onnx)
    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.0, rounds=0), threads=1)
    job.compute_reference(tmp_path, model, None, settings, lambda phase, fraction: None)

    def run(text: str) -> Any:
        chain = parse_chain(text)
        return job.run_cell(tmp_path, model, Cell(0, chain.name, tuple(chain.to_json()), "onnxruntime", 1), settings,
                            None, lambda phase, fraction: None)

    quantized = run("int8-static")
    errors = quantized.diagnostics["layer_errors"]
    assert errors[0]["layer"] == f"/{CULPRIT}/Gemm" and set(errors[0]) == {"layer", "op_type", "error", "own"}
    compare = quantized.diagnostics["layer_compare"]
    assert compare["samples"] == 8 and compare["compared"] == 4 and compare["ms"] > 0
    assert "layer_errors" not in run("baseline").diagnostics  # the reference itself: nothing to compare

    # one click's worth: the same chain with the worst layer kept in float, measured again
    rebuilt_chain = diagnostics.with_float_layers(parse_chain("int8-static"), [errors[0]["layer"]])
    assert rebuilt_chain is not None and rebuilt_chain.name == f"int8-static:exclude=/{CULPRIT}/Gemm"
    rebuilt = run(rebuilt_chain.name)
    assert rebuilt.diagnostics["quantization"]["float_nodes"] == [f"/{CULPRIT}/Gemm"]
    culprit_now = next(e for e in rebuilt.diagnostics["layer_errors"] if e["layer"] == f"/{CULPRIT}/Gemm")
    assert culprit_now["own"] < errors[0]["own"] / 10
    assert rebuilt.fidelity.cosine > quantized.fidelity.cosine and rebuilt.fidelity.cosine > 0.99


def test_a_float_rebuild_adds_to_the_exclusions_of_the_int8_step() -> None:
    chain = parse_chain("prune-structured:0.3+int8-dynamic:exclude=a")
    rebuilt = diagnostics.with_float_layers(chain, ["b", "a"])
    assert rebuilt is not None and rebuilt.name == "prune-structured:ratio=0.3+int8-dynamic:exclude=a|b"
    assert parse_chain(rebuilt.name) == rebuilt  # the name is a chain the CLI and the pages read back
    assert diagnostics.with_float_layers(parse_chain("fp16"), ["a"]) is None


@pytest.mark.parametrize("chain", ["int8-static:exclude=/9/Gemm", "int8-dynamic:exclude=/9/Gemm"])
def test_an_exclusion_naming_no_node_is_refused(outlier_onnx: Path, chain: str) -> None:
    with pytest.raises(NotApplicable, match=r"exclude=/9/Gemm: no node of the graph has that name"):
        build_onnx(outlier_onnx, chain)


def test_torch_int8_dynamic_keeps_excluded_layers_float() -> None:
    import torch

    from engine.optimizations.quantize import Int8DynamicConfig, int8_dynamic_torch
    from engine.specs import InputSpec
    from engine.variants import BuildContext

    ctx = BuildContext(InputSpec.from_json({"inputs": [{"name": "x", "dtype": "float32", "shape": ["B", 16]}]}))
    module = int8_dynamic_torch(_outlier_mlp(), Int8DynamicConfig(exclude=(str(CULPRIT),)), ctx)
    assert type(module[CULPRIT]) is torch.nn.Linear and type(module[0]) is not torch.nn.Linear
    assert "kept in float (4)" in ctx.notes[-1]
    with pytest.raises(NotApplicable, match="no Linear layer of that name"):
        int8_dynamic_torch(_outlier_mlp(), Int8DynamicConfig(exclude=("9",)), ctx)
    every = torch.ao.quantization.quantize_dynamic(_outlier_mlp(), {torch.nn.Linear}, dtype=torch.qint8)
    assert _error(module) < _error(every) / 3  # the mode does something: the culprit in float helps


def _error(module: Any) -> float:
    """The relative error of a module's outputs against the fp32 MLP's."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(_inputs(32)["x"])
        got, want = module(x).numpy(), _outlier_mlp()(x).numpy()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_a_distilled_students_layers_map_to_the_teachers_it_kept() -> None:
    rename = diagnostics.student_renames([{"kind": "keep_layers", "target": "encoder.layer", "keep": [0, 2, 4]}])
    assert rename is not None
    assert rename("encoder.layer.4.attention.self.query") == "encoder.layer.2.attention.self.query"
    assert rename("/encoder/layer.2/attention/self/query/MatMul_output_0") == (
        "/encoder/layer.1/attention/self/query/MatMul_output_0")
    assert rename("encoder.layer.3.output.dense") is None  # a dropped layer: no counterpart
    assert rename("pooler.dense") == "pooler.dense"
    assert rename("encoder.layer.40.x") is None
    assert diagnostics.student_renames([{"kind": "slice", "target": "x", "dim": 0, "keep": [1]}]) is None


def test_a_torchscript_variant_says_where_its_layer_errors_are(outlier_onnx: Path) -> None:
    del outlier_onnx
    from engine.variants import Variant

    model = type("M", (), {"spec": type("S", (), {"fixed_batch": None})()})()
    got = diagnostics.layer_errors(model, Variant("x", "torchscript", Path("m.pt"), 1, [], 0.0, False), ["fp16"],
                                   [], _inputs(), 1)
    assert got["layer_errors"] is None and "no forward hooks in TorchScript" in got["layer_errors_error"]


def test_a_conv_whose_relu_the_quantizer_dropped_is_compared_where_its_readers_read(tmp_path: Path) -> None:
    import onnx
    import torch

    from tests.conftest import _cnn

    path = tmp_path / "cnn.onnx"
    torch.onnx.export(_cnn(), (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    reference, variant = build_onnx(path, "baseline"), build_onnx(path, "int8-static")
    conv_out = next(n.output[0] for n in onnx.load(str(reference.file)).graph.node if n.op_type == "Conv")
    variant_tensors = {o for n in onnx.load(str(variant.file)).graph.node for o in n.output}
    # the exporter folded the BatchNormalization into the Conv, and the quantizer dropped the ReLU (unsigned int8
    # clamps it): the variant's Conv writes the ReLU's tensor unclamped, its readers read its Q/DQ round trip
    assert conv_out not in variant_tensors and "/2/Relu_output_0" in variant_tensors
    images = {"x": np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    found, notes = layers.onnx_layer_errors(reference.file, variant.file, images, 2, 1)
    assert notes == [] and {(e.op_type, e.layer.split("/")[-1]) for e in found} == {("Conv", "Conv"), ("Gemm", "Gemm")}
    assert all(0 < e.error < 0.2 for e in found), found


def test_a_distilled_students_layers_are_named_as_the_student_names_them() -> None:
    """The rebuild's exclude= names the variant's layers: for a student that kept teacher layers 0, 2 and 4, the
    teacher's layer 4 is the student's layer 2."""
    import copy

    import torch

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(6))

        def forward(self, x: Any) -> Any:
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    torch.manual_seed(0)
    teacher = Stack().eval()
    student = copy.deepcopy(teacher)
    student.layers = torch.nn.ModuleList([student.layers[i] for i in (0, 2, 4)])
    with torch.no_grad():
        student.layers[2].weight.mul_(1.5)  # the student's layer 2 (the teacher's 4) drifted in training
    rename = diagnostics.student_renames([{"kind": "keep_layers", "target": "layers", "keep": [0, 2, 4]}])
    found, _ = layers.torch_layer_errors(teacher, student, diagnostics._torch_call(["x"]), _inputs(), 4, rename)
    assert (found[0].layer, found[0].reference) == ("layers.2", "layers.4")
    assert {(e.layer, e.reference) for e in found[1:]} == {("layers.0", None), ("layers.1", "layers.2")}
    assert found[0].to_json()["reference"] == "layers.4"
    assert "reference" not in next(e for e in found if e.layer == "layers.0").to_json()


def test_a_float_rebuild_is_queued_on_the_same_runtime_batch_and_machine_kind(outlier_onnx: Path) -> None:
    from engine.errors import UserError
    from engine.study import rebuild_with_float_layers, submit_study
    from storage import queue
    from storage.db import session
    from storage.results import study_jobs

    settings = StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.0, rounds=0), threads=1)
    study_id, _ = submit_study(intake(outlier_onnx), [parse_chain("int8-static")], ["onnxruntime"], [4], settings)
    with session() as s:
        [(job, _)] = study_jobs(s, study_id)
        job.machine = "cpu-avx2"  # a Ray study's cell, placed on one kind of machine
        queue.add_cells(s, study_id, [{**Cell(0, job.variant, tuple(job.chain), job.runtime, 4).to_json(),
                                       "machine": "node-b"}])
    assert rebuild_with_float_layers(study_id, 0, ["/4/Gemm"]) == (2, "int8-static:exclude=/4/Gemm")
    assert rebuild_with_float_layers(study_id, 1, ["/4/Gemm"])[0] == 3  # the same variant on the other kind
    with pytest.raises(UserError, match="cell 2 of this study is that variant already"):
        rebuild_with_float_layers(study_id, 0, ["/4/Gemm"])
    with pytest.raises(UserError, match="pick at least one layer to keep in float"):
        rebuild_with_float_layers(study_id, 0, [])  # nothing picked: said before anything is looked up
    with session(write=False) as s:
        jobs = {job.cell: job for job, _ in study_jobs(s, study_id)}
    assert [(jobs[c].machine, jobs[c].runtime, jobs[c].batch_size, jobs[c].status) for c in (2, 3)] == [
        ("cpu-avx2", "onnxruntime", 4, "queued"), ("node-b", "onnxruntime", 4, "queued")]
