"""int8-static:max_drop: the layers int8 breaks stay float until the held-out cosine meets the budget."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.optimizations import parse_chain
from engine.optimizations.build import build_variant
from engine.variants import BuildContext

# one channel of the damaged layer's input this many times larger than the rest: a per-tensor int8 scale
# wide enough for it rounds the ordinary channels to a few levels
OUTLIER = 500.0
LAYERS = ("fc1", "fc2", "fc3", "fc4")
DAMAGED = "fc2"  # reads fc1's outlier channel
# ONNX Runtime's pre-processing fuses each MatMul and its bias Add into a Gemm, named after the MatMul
FUSED = f"{DAMAGED}/MatMulAddFusion"
BUDGET = 0.01


def _mlp(path: Path, outlier: float) -> Path:
    """Four Linear layers (MatMul + bias Add + Relu). fc1's output channel 0 is `outlier` times larger and fc2's
    weights read it back at the ordinary scale (as a LayerNorm's gain tames BERT's outlier channels), so that
    channel carries no more of the answer than any other, but the int8 scale of fc2's input is set by it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = (16, 32, 32, 32, 8)
    inits, nodes, x = [], [], "x"
    for i, name in enumerate(LAYERS):
        w = rng.normal(0.0, 1.0 / np.sqrt(sizes[i]), (sizes[i], sizes[i + 1])).astype(np.float32)
        if name == "fc1":
            w[:, 0] *= outlier
        if name == DAMAGED:
            w[0, :] /= outlier
        b = rng.normal(0.0, 0.1, sizes[i + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
        out = "y" if name == LAYERS[-1] else f"{name}.relu"
        nodes.append(helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}.mm"], name=name))
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.bias"],
                                      [out if name == LAYERS[-1] else f"{name}.add"], name=f"{name}.add"))
        if name != LAYERS[-1]:
            nodes.append(helper.make_node("Relu", [f"{name}.add"], [out], name=f"{name}.act"))
        x = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def outlier_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mlp(tmp_path_factory.mktemp("sensitivity") / "outlier_mlp.onnx", OUTLIER)


@pytest.fixture(scope="module")
def plain_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mlp(tmp_path_factory.mktemp("sensitivity") / "plain_mlp.onnx", 1.0)


def _build(path: Path, chain: str) -> Any:
    from engine.artifacts import intake

    model = intake(path)
    return build_variant(model, parse_chain(chain), "onnx", BuildContext(model.spec))


def _cosine(path: Path, variant: Any) -> float:
    """Cosine to the fp32 model on inputs neither the calibration nor the held-out check saw."""
    from engine.measure.accuracy import fidelity
    from engine.runtimes import get

    feeds = {"x": np.random.default_rng(7).standard_normal((64, 16)).astype(np.float32)}
    outputs = []
    for built in (_build(path, "baseline"), variant):
        with get("onnxruntime").create(threads=1).load(built) as session:
            outputs.append(session.fetch(session.run(session.prepare(feeds))))
    return float(fidelity(outputs[0], outputs[1])["cosine"])


def _float_layers(variant: Any) -> set[str]:
    """The MatMul/Gemm nodes of the built graph that read no DequantizeLinear output (left in float)."""
    import onnx

    graph = onnx.load(str(variant.path)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    layers = [node for node in graph.node if node.op_type in ("MatMul", "Gemm")]
    assert len(layers) == len(LAYERS)
    return {node.name for node in layers if not any(producers.get(i) == "DequantizeLinear" for i in node.input)}


def test_max_drop_keeps_the_damaged_layer_float_and_meets_the_budget(outlier_mlp: Path) -> None:
    plain = _build(outlier_mlp, "int8-static")
    start = time.perf_counter()
    aware = _build(outlier_mlp, f"int8-static:max_drop={BUDGET}")
    seconds = time.perf_counter() - start
    # the mode must have had something to do: plain int8 misses the budget on the outlier channel
    assert _cosine(outlier_mlp, plain) < 1 - BUDGET
    assert _cosine(outlier_mlp, aware) >= 1 - BUDGET
    record = aware.details["int8-static"]
    assert record["float_nodes"] == [FUSED], record
    assert record["met"] and record["cosine"] >= 1 - BUDGET > record["plain_cosine"], record
    assert record["sensitivity"][0]["node"] == FUSED and record["candidates"] == len(LAYERS), record
    # 64 synthesized calibration samples: 16 held out, the recipe calibrates on the other 48
    assert record["held_out_samples"] == 16
    assert any("calibrated on 48 samples" in note for note in aware.notes), aware.notes
    assert _float_layers(aware) == {FUSED} and not _float_layers(plain)
    note = next(n for n in aware.notes if n.startswith(f"int8-static:max_drop={BUDGET}"))
    assert f"kept 1 of 4 Gemm in float ({FUSED})" in note and "on 16 samples" in note, note
    assert seconds < 30, seconds  # one trial per layer and per node kept float, on a tiny model: seconds


def test_a_budget_the_plain_recipe_meets_keeps_everything_int8(plain_mlp: Path) -> None:
    variant = _build(plain_mlp, f"int8-static:max_drop={BUDGET}")
    record = variant.details["int8-static"]
    assert record["met"] and record["float_nodes"] == [] and record["sensitivity"] == [], record
    assert any("the plain recipe met the budget" in note for note in variant.notes), variant.notes
    assert not _float_layers(variant)


def test_a_budget_out_of_reach_keeps_the_best_found_and_says_so(outlier_mlp: Path) -> None:
    variant = _build(outlier_mlp, "int8-static:max_drop=1e-07")
    record = variant.details["int8-static"]
    # a quarter of the 4 MatMuls may stay float: the worst one, which helps most
    assert not record["met"] and record["float_nodes"] == [FUSED], record
    assert record["cosine"] > record["plain_cosine"], record
    note = next(n for n in variant.notes if "missed its budget" in n)
    assert "at most 1 of 4 Gemm may stay float" in note and f"1 in float ({FUSED})" in note, note
    assert _float_layers(variant) == {FUSED}


def test_the_record_survives_the_build_cache(outlier_mlp: Path) -> None:
    first = _build(outlier_mlp, "int8-static:max_drop=0.02")
    again = _build(outlier_mlp, "int8-static:max_drop=0.02")
    assert not first.cached and again.cached
    assert again.details == first.details and again.details["int8-static"]["float_nodes"] == [FUSED]


def test_a_convolutional_model_ranks_its_convolutions(cnn_pt2: Path) -> None:
    # every op is quantized in a conv net; the search measures the weight-carrying ones (Conv, Gemm)
    variant = _build(cnn_pt2, "int8-static:max_drop=1e-07")
    record = variant.details["int8-static"]
    assert record["candidates"] == 2 and len(record["sensitivity"]) == 2, record
    assert len(record["float_nodes"]) == 1 and record["cosine"] >= record["plain_cosine"], record
    assert any("missed its budget" in note and "of 2 Conv/Gemm may stay float" in note for note in variant.notes), \
        variant.notes


def test_the_result_json_names_the_float_layers(tmp_path: Path, outlier_mlp: Path) -> None:
    import io
    import json

    from engine.__main__ import main

    out_json = tmp_path / "results.json"
    code = main(["bench", str(outlier_mlp), "--variants", f"baseline,int8-static:max_drop={BUDGET}",
                 "--runtimes", "onnxruntime", "--batch-sizes", "8", "--iterations", "3", "--min-seconds", "0.01",
                 "--warmup", "1", "--threads", "1", "--timeout", "300", "--json", str(out_json)], out=io.StringIO())
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())["results"]}
    aware = rows[f"int8-static:max_drop={BUDGET}"]
    assert aware["status"] == "ok", aware
    assert aware["build_details"]["int8-static"]["float_nodes"] == [FUSED], aware["build_details"]
    assert any(f"in float ({FUSED})" in note for note in aware["notes"]), aware["notes"]
    # on the study's own evaluation inputs, which the build never saw
    assert aware["accuracy"]["fidelity"]["cosine"] >= 1 - BUDGET, aware["accuracy"]
    assert rows["baseline"]["build_details"] is None


def test_the_variant_name_and_validation() -> None:
    assert parse_chain("int8-static:max_drop=0.01").name == "int8-static:max_drop=0.01"
    assert parse_chain("int8-static:max_drop=0").name == "int8-static"
    from engine.optimizations.quantize import Int8StaticConfig

    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=f"max_drop={bad}"):
            Int8StaticConfig(max_drop=bad)
