"""The int8 recipes on the failure they exist for: outlier activations like a pretrained transformer's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.optimizations import parse_chain
from engine.optimizations.build import build_variant
from engine.variants import BuildContext
from tests.engine.variants import build_onnx, run_variant

OUTLIER = 200.0  # the size of all-MiniLM-L6-v2's residual outliers; the other channels stay within a few units


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two MatMuls whose channel 0 comes out ~200x larger than the rest, each scaled back by a float Mul (as a
    LayerNorm's gain does in BERT). One MatMul's output is read only by its Mul (`tamed`); the other's is also
    the input of a third MatMul (`shared`, `projected`), so it gets a Q/DQ pair whatever the recipe."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int, outlier: bool) -> np.ndarray:
        w = rng.normal(0.0, 0.25, (rows, cols)).astype(np.float32)
        if outlier:
            w[:, 0] *= OUTLIER
        return w

    gain = np.ones(32, np.float32)
    gain[0] = 1.0 / OUTLIER
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w_a", weight(16, 32, True)), ("w_b", weight(16, 32, True)), ("w_c", weight(32, 8, False)), ("gain", gain))]
    nodes = [
        helper.make_node("MatMul", ["x", "w_a"], ["h_a"], name="matmul_a"),
        helper.make_node("Mul", ["h_a", "gain"], ["tamed"], name="gain_a"),
        helper.make_node("MatMul", ["x", "w_b"], ["h_b"], name="matmul_b"),
        helper.make_node("Mul", ["h_b", "gain"], ["shared"], name="gain_b"),
        helper.make_node("MatMul", ["h_b", "w_c"], ["projected"], name="matmul_c"),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size])
               for name, size in (("tamed", 32), ("shared", 32), ("projected", 8))]
    graph = helper.make_graph(nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              outputs, inits)
    path = tmp_path_factory.mktemp("recipes") / "outliers.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _cosines(path: Path, variant: Any, runtime: str) -> dict[str, float]:
    """Cosine to the fp32 model per output, on inputs the calibration did not see."""
    from engine.measure.accuracy import fidelity

    feeds = {"x": np.random.default_rng(7).standard_normal((32, 16)).astype(np.float32)}
    reference = run_variant(build_onnx(path, "baseline"), "onnxruntime", feeds)
    outputs = run_variant(variant, runtime, feeds)
    names = ("tamed", "shared", "projected")
    return {n: fidelity([r], [o])["cosine"] for n, r, o in zip(names, reference, outputs, strict=True)}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_matmul_outputs_and_float_readers_stay_float_by_default(outlier_onnx: Path, runtime: str) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino")
    old = build_onnx(outlier_onnx, "int8-static:quantize_outputs=true")
    new = build_onnx(outlier_onnx, "int8-static")
    before, after = _cosines(outlier_onnx, old, runtime), _cosines(outlier_onnx, new, runtime)
    # one int8 scale spans the outlier channel (~±600): the ordinary channels round to a few levels
    assert before["tamed"] < 0.9 and before["shared"] < 0.9, before
    # MatMul outputs are left float, and the Mul beside matmul_c reads h_b, not its int8 round trip
    assert after["tamed"] > 0.999 and after["shared"] > 0.999, after
    assert any("only the inputs of MatMul/Gemm" in note for note in new.notes), new.notes


def test_the_default_graph_quantizes_only_matmul_inputs(outlier_onnx: Path) -> None:
    import onnx

    variant = build_onnx(outlier_onnx, "int8-static")
    graph = onnx.load(str(variant.path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}
    # every MatMul reads dequantized inputs (activation and weight)
    for name in ("matmul_a", "matmul_b", "matmul_c"):
        assert all(producers[i].op_type == "DequantizeLinear" for i in by_name[name].input), name
    # only h_b is quantized, as matmul_c's input; no MatMul output is quantized for its own sake
    quantized = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    assert quantized == {"x", "h_b"}, quantized
    assert list(by_name["gain_a"].input) == ["h_a", "gain"] and list(by_name["gain_b"].input) == ["h_b", "gain"]
    # nothing dangles: each Q/DQ pair left has a reader
    read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    assert all(node.output[0] in read for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear"))


def test_a_convolutional_model_keeps_its_recipe(cnn_pt2: Path) -> None:
    import onnx

    variant = build_onnx(cnn_pt2, "int8-static")
    assert any("outputs included (convolutional model)" in note for note in variant.notes), variant.notes
    assert not any("only the inputs of" in note for note in variant.notes)
    ops = [node.op_type for node in onnx.load(str(variant.path)).graph.node]
    assert ops.count("QuantizeLinear") >= 2  # every op's activations, as before


def test_quantize_outputs_is_part_of_the_variant_name() -> None:
    assert parse_chain("int8-static:quantize_outputs=false").name == "int8-static"
    assert parse_chain("int8-static:quantize_outputs=true").name == "int8-static:quantize_outputs=true"


@pytest.mark.parametrize(("chain", "scheme", "said"), [
    ("int8-dynamic", "torch.per_channel_affine", "per-channel int8 weights"),
    ("int8-dynamic:per_channel=false", "torch.per_tensor_affine", "per-tensor int8 weights"),
])
def test_torch_int8_dynamic_honours_per_channel(bert_hf_zip: Path, chain: str, scheme: str, said: str) -> None:
    import torch

    from engine.artifacts import intake

    model = intake(bert_hf_zip, seq_len=16)
    ctx = BuildContext(model.spec)
    variant = build_variant(model, parse_chain(chain), "torch", ctx)
    linears = [m for m in variant.module.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert linears and {str(m.weight().qscheme()) for m in linears} == {scheme}
    assert any(said in note for note in ctx.notes), ctx.notes


def test_torch_int8_dynamic_refuses_uint8_weights(bert_hf_zip: Path) -> None:
    from engine.artifacts import intake
    from engine.errors import NotApplicable

    model = intake(bert_hf_zip, seq_len=16)
    with pytest.raises(NotApplicable, match="int8 weights only"):
        build_variant(model, parse_chain("int8-dynamic:weight_type=uint8"), "torch", BuildContext(model.spec))


def test_a_pair_left_with_only_float_readers_is_dropped(cnn_pt2: Path) -> None:
    import onnx

    from engine.artifacts import intake
    from engine.measure.accuracy import fidelity

    # ops given: the Conv's output gets a Q/DQ pair of its own, but only the float Relu reads it
    variant = build_onnx(cnn_pt2, "int8-static:ops=Conv")
    graph = onnx.load(str(variant.path)).graph
    read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    pairs = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert pairs and all(node.output[0] in read for node in pairs)
    conv = next(node for node in graph.node if node.op_type == "Conv")
    assert not any(conv.output[0] == node.input[0] for node in graph.node if node.op_type == "QuantizeLinear")
    model = intake(cnn_pt2)
    feeds = {model.spec.names[0]: np.random.default_rng(7).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    base = build_variant(model, parse_chain("baseline"), "onnx", BuildContext(model.spec))
    reference, quantized = run_variant(base, "onnxruntime", feeds), run_variant(variant, "onnxruntime", feeds)
    assert fidelity(reference, quantized)["cosine"] > 0.99
