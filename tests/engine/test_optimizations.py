"""Optimization configs, chain parsing, declared capabilities, and the int8 / fp16 passes on tiny real models."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest

from engine.errors import NotApplicable, UserError
from engine.optimizations import REGISTRY, Chain, parse_chain
from engine.optimizations.base import STAGE_ORDER, OptConfig, Step, chain_from_json
from engine.optimizations.build import build_variant, not_applicable_reason
from engine.variants import BuildContext

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_IDS = {"onnx-export", "int8-dynamic", "int8-static", "fp16"}


# --- configs ----------------------------------------------------------------------------------


def _other_value(owner: type, field: dataclasses.Field[Any]) -> Any:
    """A valid value different from the field's default, chosen from its type."""
    hint = typing.get_type_hints(owner)[field.name]
    default: Any = field.default
    if hint is bool:
        return not default
    if hint is int:  # the first neighbour the config accepts (a group size takes powers of two only)
        for candidate in (default - 1, default + 1, default // 2, default * 2):
            if candidate > 0 or default <= 0:
                try:
                    owner(**{field.name: candidate})
                except ValueError:
                    continue
                return candidate
        raise AssertionError(f"no other valid value for {owner.__name__}.{field.name}")
    if hint is float:
        return default - 0.5 if default > 0.5 else (default / 2 if default > 0 else 0.25)  # 0.0 means "auto"
    if get_origin(hint) is Literal:
        return next(c for c in get_args(hint) if c != default)
    if get_origin(hint) is tuple:
        return ("Gemm", "Resize")
    raise AssertionError(f"no test value for {owner.__name__}.{field.name}: {hint}")


def test_every_test_value_differs_from_the_default() -> None:
    for opt in REGISTRY.values():
        for field in dataclasses.fields(opt.config):
            assert _other_value(opt.config, field) != field.default, (opt.id, field.name)


def _config(text: str) -> Any:
    """The config of a one-step chain."""
    return parse_chain(text).steps[0].config


def _non_default(config_cls: type[OptConfig]) -> OptConfig:
    return config_cls(**{f.name: _other_value(config_cls, f) for f in dataclasses.fields(config_cls)})


def test_registry_declares_the_documented_ids_with_consistent_capabilities() -> None:
    assert EXPECTED_IDS <= set(REGISTRY)
    for opt_id, opt in REGISTRY.items():
        assert opt.id == opt_id
        assert opt.stage in STAGE_ORDER
        assert opt.formats and opt.summary
        assert issubclass(opt.config, OptConfig)
        opt.config()  # every parameter has a default
        if opt.stage != "convert":  # conversions are done by the build itself
            assert set(opt.impls) == set(opt.formats), f"{opt_id} declares formats it does not implement"


@pytest.mark.parametrize("opt_id", sorted(REGISTRY))
def test_every_config_round_trips_through_json(opt_id: str) -> None:
    config_cls = REGISTRY[opt_id].config
    for config in (config_cls(), _non_default(config_cls)):
        restored = config_cls.from_json(json.loads(json.dumps(config.to_json())))
        assert restored == config
        assert restored.suffix() == config.suffix()
        hash(restored)  # frozen and hashable, tuples stay tuples


@pytest.mark.parametrize("opt_id", sorted(REGISTRY))
def test_canonical_names_parse_back_to_the_same_step(opt_id: str) -> None:
    config_cls = REGISTRY[opt_id].config
    for config in (config_cls(), _non_default(config_cls)):
        step = Step(opt_id, config)
        assert parse_chain(step.name) == Chain((step,))


def test_configs_are_frozen() -> None:
    config = REGISTRY["int8-static"].config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.samples = 3  # type: ignore[attr-defined,misc]


def test_from_json_rejects_unknown_parameters() -> None:
    with pytest.raises(UserError, match="bogus"):
        REGISTRY["int8-dynamic"].config.from_json({"bogus": 1})


@pytest.mark.parametrize(("opt_id", "kwargs", "named"), [
    ("int8-static", {"method": "foo"}, "method=foo"),
    ("int8-static", {"samples": 0}, "samples=0"),
    ("int8-static", {"percentile": 50.0}, "percentile=50.0"),
    ("int8-static", {"max_drop": 1.0}, "max_drop=1.0"),
    ("int8-static", {"max_drop": -0.01}, "max_drop=-0.01"),
    ("int8-dynamic", {"weight_type": "int4"}, "weight_type=int4"),
    ("int8-dynamic", {"ops": ()}, "ops"),
    ("onnx-export", {"opset": 7}, "opset=7"),
    ("onnx-export", {"exporter": "magic"}, "exporter=magic"),
])
def test_direct_construction_validates_with_a_value_error_naming_the_value(
        opt_id: str, kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        REGISTRY[opt_id].config(**kwargs)


# --- chain parsing ----------------------------------------------------------------------------


def test_parse_chain_gives_canonical_names() -> None:
    assert parse_chain("baseline") == Chain(())
    assert parse_chain("baseline").name == "baseline"
    assert parse_chain("int8-static:method=entropy").name == "int8-static:method=entropy"
    assert parse_chain(" int8-static : method=Entropy ").name == "int8-static:method=entropy"
    assert parse_chain("int8-static:method=minmax").name == "int8-static"  # defaults drop out
    assert parse_chain("int8-static:samples=64,per_channel=off").name == "int8-static:per_channel=false,samples=64"
    assert parse_chain("baseline+int8-dynamic").name == "int8-dynamic"
    assert parse_chain("onnx-export:opset=17+int8-dynamic").name == "onnx-export:opset=17+int8-dynamic"
    assert _config("fp16:op_block_list=Resize|TopK").op_block_list == ("Resize", "TopK")


def test_a_bare_value_fills_the_first_parameter() -> None:
    assert _config("int8-static:percentile").method == "percentile"
    assert _config("int8-static:entropy,samples=16").samples == 16
    assert _config("onnx-export:17").opset == 17
    assert _config("int8-dynamic:false").per_channel is False


@pytest.mark.parametrize(("text", "named"), [
    ("int8-static:method=foo", "foo"),
    ("int8-static:foo", "foo"),
    ("int8-static:samples=0", "samples=0"),
    ("int8-static:samples=abc", "abc"),
    ("int8-static:samples=1.5", "1.5"),
    ("int8-static:percentile=50", "percentile=50"),
    ("int8-dynamic:bogus=1", "bogus"),
    ("int8-dynamic:per_channel=maybe", "maybe"),
    ("int8-dynamic:weight_type=int4", "int4"),
    ("int8-dynamic:ops=", "ops"),
    ("onnx-export:opset=7", "opset=7"),
    ("nope", "nope"),
    ("int8-dynamic+nope:3", "nope"),
    ("int8-static:per_channel=false,entropy", "key=value"),
    ("int8-dynamic+onnx-export", "onnx-export"),
    ("fp16+onnx-export", "first"),
    ("int8-dynamic+int8-dynamic", "twice"),
    ("int8-dynamic:per_channel=false+int8-dynamic", "twice"),
    ("", "baseline"),
    ("   ", "baseline"),
])
def test_bad_chains_give_a_user_error_naming_the_problem(text: str, named: str) -> None:
    with pytest.raises(UserError, match=named):
        parse_chain(text)


def test_unknown_ids_list_the_known_ones() -> None:
    with pytest.raises(UserError) as info:
        parse_chain("int9-static")
    assert "int9-static" in str(info.value) and "int8-static" in str(info.value)


def test_chains_round_trip_through_json() -> None:
    chain = parse_chain("onnx-export:opset=17+fp16:op_block_list=Resize|TopK,keep_io_types=false")
    restored = chain_from_json(json.loads(json.dumps(chain.to_json())))
    assert restored == chain
    assert restored.name == chain.name
    with pytest.raises(UserError, match="nope"):
        chain_from_json([{"id": "nope", "config": {}}])


def test_chain_stages_follow_the_fixed_order() -> None:
    chain = parse_chain("onnx-export+int8-static")
    assert [s.id for s in chain.stage("convert")] == ["onnx-export"]
    assert [s.id for s in chain.stage("format")] == ["int8-static"]
    assert chain.stage("torch") == ()


def test_registry_and_capabilities_need_no_heavy_imports() -> None:
    code = (
        "import sys\n"
        "import engine.optimizations, engine.runtimes\n"
        "from engine.optimizations import parse_chain\n"
        "from engine.optimizations.build import not_applicable_reason\n"
        "from engine.runtimes import REGISTRY\n"
        "assert not_applicable_reason('pt2', parse_chain('int8-static'), 'torchscript', 'cpu')\n"
        "[cls.available() for cls in REGISTRY.values() if cls.device == 'cpu']\n"
        "heavy = ('torch', 'onnxruntime', 'openvino', 'onnx', 'tensorrt', 'transformers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- not applicable ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "chain", "target", "device", "reason"), [
    ("onnx", "baseline", "torch", "cpu", "an ONNX model runs only on ONNX runtimes, not on PyTorch eager"),
    ("onnx", "int8-dynamic", "torchscript", "cpu", "not on TorchScript"),
    ("onnx", "onnx-export", "onnx", "cpu", "needs a torch model"),
    ("pt2", "int8-static", "torchscript", "cpu", "int8-static has no TorchScript implementation"),
    ("hf", "int8-static", "torch", "cpu", "int8-static has no PyTorch eager implementation"),
    ("pt2", "fp16", "torch", "cpu", "fp16 in torch needs a CUDA device"),
    ("hf", "fp16", "torchscript", "cpu", "needs a CUDA device"),
    ("pt2", "onnx-export", "torch", "cpu", "onnx-export produces ONNX, which PyTorch eager does not run"),
    ("hf", "onnx-export+int8-dynamic", "torchscript", "cpu", "which TorchScript does not run"),
    ("torchscript", "baseline", "torch", "cpu", "no eager Python module"),
])
def test_not_applicable_reasons(fmt: str, chain: str, target: str, device: str, reason: str) -> None:
    found = not_applicable_reason(fmt, parse_chain(chain), target, device)
    assert found is not None and reason in found


@pytest.mark.parametrize(("fmt", "chain", "target", "device"), [
    ("onnx", "baseline", "onnx", "cpu"),
    ("onnx", "int8-static+fp16", "onnx", "cpu"),
    ("pt2", "onnx-export+int8-static", "onnx", "cpu"),
    ("pt2", "int8-dynamic", "torch", "cpu"),
    ("hf", "fp16", "torch", "cuda"),
    ("hf", "fp16", "onnx", "cpu"),
    ("torchscript", "baseline", "torchscript", "cpu"),
    ("torchscript", "int8-dynamic", "onnx", "cuda"),
])
def test_applicable_cells_have_no_reason(fmt: str, chain: str, target: str, device: str) -> None:
    assert not_applicable_reason(fmt, parse_chain(chain), target, device) is None


def test_build_raises_not_applicable_with_the_same_reason(mlp_onnx: Path) -> None:
    from engine.artifacts import intake

    model = intake(mlp_onnx)
    with pytest.raises(NotApplicable, match="ONNX model runs only on ONNX runtimes"):
        build_variant(model, parse_chain("baseline"), "torch", BuildContext(model.spec))


# --- int8 and fp16 passes on ONNX -------------------------------------------------------------


def _ops(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _run(variant: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from engine.runtimes import get

    with get("onnxruntime").create(threads=1).load(variant) as session:
        return session.fetch(session.run(session.prepare(feeds)))


def _feeds(spec: Any, n: int = 32) -> dict[str, np.ndarray]:
    from engine.data import synthesize

    return synthesize(spec, n, seed=7)


def _close_to(reference: list[np.ndarray], outputs: list[np.ndarray], cosine: float = 0.99) -> dict[str, Any]:
    from engine.measure.accuracy import fidelity

    result = fidelity(reference, outputs)
    assert result["cosine"] > cosine, result
    return result


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_dynamic_onnx_quantizes_matmuls_and_stays_close(shared_build, mlp_onnx: Path, per_channel: bool) -> None:
    model, base = shared_build(mlp_onnx)
    _, variant = shared_build(mlp_onnx, f"int8-dynamic:per_channel={per_channel}")
    ops = _ops(variant.path)
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "Gemm" not in ops
    scales = [a for name, a in _initializers(variant.path).items() if name.endswith("_scale")]
    assert scales and any(s.size > 1 for s in scales) == per_channel
    feeds = _feeds(model.spec)
    _close_to(_run(base, feeds), _run(variant, feeds))


def test_int8_dynamic_options_reach_the_quantizer(shared_build, mlp_onnx: Path) -> None:
    _, variant = shared_build(mlp_onnx, "int8-dynamic:weight_type=uint8,per_channel=false")
    weights = [a for name, a in _initializers(variant.path).items() if name.endswith("_quantized")]
    assert weights and all(w.dtype == np.uint8 for w in weights)


@pytest.mark.parametrize("chain", [
    "int8-static",
    "int8-static:per_channel=false",
    "int8-static:method=entropy",
    "int8-static:method=percentile",
    "int8-static:method=percentile,per_channel=false,activation_type=int8",
])
def test_int8_static_cnn_is_qdq_and_stays_close(shared_build, cnn_pt2: Path, chain: str) -> None:
    model, base = shared_build(cnn_pt2)
    _, variant = shared_build(cnn_pt2, chain)
    ops = _ops(variant.path)
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 3
    assert any("calibrated on 64 samples" in n for n in variant.notes), variant.notes
    import onnx

    graph = onnx.load(str(variant.path)).graph
    inits = _initializers(variant.path)
    weight_scales = [inits[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim > 1]
    per_channel = _config(chain).per_channel
    assert weight_scales and all((s.size > 1) == per_channel for s in weight_scales)
    feeds = _feeds(model.spec)
    result = _close_to(_run(base, feeds), _run(variant, feeds))
    assert result["top1_agreement"] >= 0.9


def test_int8_static_mlp_stays_close(shared_build, mlp_onnx: Path) -> None:
    model, base = shared_build(mlp_onnx)
    _, variant = shared_build(mlp_onnx, "int8-static")
    assert "QuantizeLinear" in _ops(variant.path)
    feeds = _feeds(model.spec)
    _close_to(_run(base, feeds), _run(variant, feeds))


def _activation_scales(path: Path | None) -> dict[str, float]:
    import onnx

    assert path is not None
    inits = _initializers(path)
    return {n.input[1]: float(inits[n.input[1]]) for n in onnx.load(str(path)).graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_the_calibration_method_changes_the_activation_ranges(shared_build, cnn_pt2: Path) -> None:
    _, minmax = shared_build(cnn_pt2, "int8-static")
    _, clipped = shared_build(cnn_pt2, "int8-static:method=percentile,percentile=99")
    wide, narrow = _activation_scales(minmax.path), _activation_scales(clipped.path)
    assert wide.keys() == narrow.keys()
    assert all(narrow[k] <= wide[k] for k in wide)
    assert any(narrow[k] < 0.9 * wide[k] for k in wide)


def test_entropy_calibration_differs_from_minmax(shared_build, cnn_pt2: Path) -> None:
    _, minmax = shared_build(cnn_pt2, "int8-static")
    _, entropy = shared_build(cnn_pt2, "int8-static:method=entropy")
    # ORT's own Entropy calibrator (128 bins, 128 quantized bins) has one candidate threshold, the full range
    assert _activation_scales(minmax.path) != _activation_scales(entropy.path)


def test_int8_static_uses_the_calibration_data_it_is_given(mlp_onnx: Path) -> None:
    from engine.artifacts import intake

    model = intake(mlp_onnx)
    plain = build_variant(model, parse_chain("int8-static:samples=16"), "onnx", BuildContext(model.spec))
    assert "calibrated on 16 samples (minmax, from synthesized inputs)" in plain.notes[-1]
    rng = np.random.default_rng(3)
    calib = {"x": (rng.standard_normal((40, 16)) * 10).astype(np.float32)}
    ctx = BuildContext(model.spec, calibration_data=lambda n: {k: v[:n] for k, v in calib.items()},
                       calibration_source="the calib split")
    scaled = build_variant(model, parse_chain("int8-static:samples=16"), "onnx", ctx)
    assert scaled.path != plain.path
    assert "calibrated on 16 samples (minmax, from the calib split)" in scaled.notes[-1]
    input_scale = [v for k, v in _activation_scales(scaled.path).items() if k.startswith("x")]
    plain_scale = [v for k, v in _activation_scales(plain.path).items() if k.startswith("x")]
    assert input_scale and input_scale[0] > 5 * plain_scale[0]


def test_int8_static_on_a_fixed_batch_model(mlp_onnx_fixed: Path) -> None:
    from engine.artifacts import intake

    model = intake(mlp_onnx_fixed)
    assert model.spec.fixed_batch == 1
    base = build_variant(model, parse_chain("baseline"), "onnx", BuildContext(model.spec))
    variant = build_variant(model, parse_chain("int8-static:samples=8"), "onnx", BuildContext(model.spec))
    feeds = {"x": _feeds(model.spec, 1)["x"]}
    _close_to(_run(base, feeds), _run(variant, feeds))


def test_fp16_onnx_keeps_fp32_inputs_and_outputs(shared_build, cnn_pt2: Path) -> None:
    import onnx

    model, base = shared_build(cnn_pt2)
    _, variant = shared_build(cnn_pt2, "fp16")
    graph = onnx.load(str(variant.path)).graph
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    weight_bytes = [sum(a.nbytes for a in _initializers(v.path).values()) for v in (base, variant)]
    assert weight_bytes[1] < 0.6 * weight_bytes[0]
    feeds = _feeds(model.spec)
    outputs = _run(variant, feeds)
    assert outputs[0].dtype == np.float32
    result = _close_to(_run(base, feeds), outputs, cosine=0.999)
    assert result["max_abs"] < 1e-2


def test_fp16_parameters_reach_the_converter(shared_build, mlp_onnx: Path) -> None:
    import onnx

    _, typed = shared_build(mlp_onnx, "fp16:keep_io_types=false")
    graph = onnx.load(str(typed.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    _, blocked = shared_build(mlp_onnx, "fp16:op_block_list=Gemm")
    inits = _initializers(blocked.path)
    gemm_weights = [inits[n.input[1]] for n in onnx.load(str(blocked.path)).graph.node if n.op_type == "Gemm"]
    assert gemm_weights and all(w.dtype == np.float32 for w in gemm_weights)


def test_quantizing_a_model_with_nothing_to_quantize_is_not_applicable(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from engine.artifacts import intake

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = intake(path)
    with pytest.raises(NotApplicable, match="found no operator"):
        build_variant(model, parse_chain("int8-dynamic"), "onnx", BuildContext(model.spec))
