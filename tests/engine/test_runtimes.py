"""Runtimes on tiny real models: agreement with torch, GPU runtimes refusing a CPU fallback, lifecycle, threads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import Unavailable, UserError
from engine.measure.devices import cuda_devices
from engine.config import describe
from engine.runtimes import REGISTRY, RuntimeOptions, RuntimeSettings, Session, availability, get
from engine.variants import Variant

CPU_RUNTIMES = [("torch", "torch"), ("torchscript", "torchscript"), ("onnxruntime", "onnx"), ("openvino", "onnx")]
NO_GPU = not cuda_devices()[0]


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """Restore torch's thread count after each test: loading a torch runtime sets it process-wide."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _feeds(n: int = 5) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)}


def _reference(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    from engine.modules import load_module

    with torch.inference_mode():
        return load_module(model.path, model.format)(torch.from_numpy(feeds["input"])).numpy()  # type: ignore[no-any-return]


def _infer(runtime_id: str, variant: Variant, feeds: dict[str, np.ndarray], threads: int = 1,
           **options: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    with get(runtime_id).create(threads, options).load(variant) as session:
        outputs = session.fetch(session.run(session.prepare(feeds)))
        return outputs, dict(session.applied)


def test_registry_declares_consumes_and_device() -> None:
    assert {"torch", "torch-compile", "torchscript", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt",
            "openvino"} <= set(REGISTRY)
    rows = {row["id"]: row for row in availability()}
    assert rows.keys() == REGISTRY.keys()
    for rid, cls in REGISTRY.items():
        assert cls.id == rid and cls.device in ("cpu", "cuda")
        assert cls.consumes in ("torch", "torchscript", "onnx", "tensorflow")
        assert rows[rid]["available"] == (rows[rid]["reason"] is None)
    for rid, _ in CPU_RUNTIMES:
        assert rows[rid]["available"], rows[rid]["reason"]
    with pytest.raises(UserError, match="nope"):
        get("nope")


@pytest.mark.parametrize(("runtime_id", "target"), CPU_RUNTIMES)
def test_cpu_runtimes_agree_with_torch(shared_build, mlp_pt2: Path, runtime_id: str, target: str) -> None:
    model, variant = shared_build(mlp_pt2, "baseline", target)
    assert get(runtime_id).consumes == target
    for n in (1, 5):
        feeds = _feeds(n)
        outputs, applied = _infer(runtime_id, variant, feeds)
        assert len(outputs) == 1 and outputs[0].dtype == np.float32
        np.testing.assert_allclose(outputs[0], _reference(model, feeds), atol=1e-4, rtol=0)
    assert applied["intra_op_threads"] == 1


def test_onnxruntime_and_openvino_run_an_uploaded_onnx_file(shared_build, mlp_onnx: Path) -> None:
    import torch

    from tests.conftest import _mlp

    _, variant = shared_build(mlp_onnx)
    feeds = {"x": _feeds(4)["input"]}
    with torch.inference_mode():
        reference = _mlp()(torch.from_numpy(feeds["x"])).numpy()
    for runtime_id in ("onnxruntime", "openvino"):
        outputs, _ = _infer(runtime_id, variant, feeds)
        np.testing.assert_allclose(outputs[0], reference, atol=1e-4, rtol=0)


def test_onnx_runtimes_feed_inputs_by_name(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from engine.artifacts import intake

    graph = helper.make_graph(
        [helper.make_node("Sub", ["a", "b"], ["d"])], "sub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "sub.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = intake(path)
    variant = Variant("baseline", "onnx", model.path, model.size_bytes, [], 0.0, False, input_names=model.spec.names)
    feeds = {"b": np.ones((2, 3), np.float32), "a": np.full((2, 3), 5, np.float32), "extra": np.zeros(1, np.float32)}
    for runtime_id in ("onnxruntime", "openvino"):
        outputs, _ = _infer(runtime_id, variant, feeds)
        np.testing.assert_array_equal(outputs[0], np.full((2, 3), 4, np.float32))


def test_torch_compile_compiles_and_agrees(shared_build, mlp_pt2: Path) -> None:
    model, variant = shared_build(mlp_pt2, "baseline", "torch")
    feeds = _feeds(3)
    outputs, applied = _infer("torch-compile", variant, feeds)
    assert applied["backend"] == "inductor" and applied["compile_mode"] == "default"
    np.testing.assert_allclose(outputs[0], _reference(model, feeds), atol=1e-4, rtol=0)


# --- GPU runtimes on a machine without one ----------------------------------------------------


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU")
@pytest.mark.parametrize("runtime_id", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_gpu_runtimes_are_unavailable_with_a_reason(runtime_id: str) -> None:
    ok, reason = get(runtime_id).available()
    assert not ok and reason


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU")
@pytest.mark.parametrize("runtime_id", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_gpu_runtimes_never_fall_back_to_the_cpu(shared_build, mlp_onnx: Path, runtime_id: str) -> None:
    # load() is called without available(): the check after session creation must still refuse
    _, variant = shared_build(mlp_onnx)
    runtime = get(runtime_id).create(threads=1)
    with pytest.raises(Unavailable, match="did not activate") as info:
        runtime.load(variant)
    assert runtime.provider in str(info.value) and "CPUExecutionProvider" in str(info.value)  # type: ignore[attr-defined]


# --- lifecycle --------------------------------------------------------------------------------


@pytest.mark.parametrize(("runtime_id", "target"), CPU_RUNTIMES)
def test_a_closed_session_refuses_to_run(shared_build, mlp_pt2: Path, runtime_id: str, target: str) -> None:
    _, variant = shared_build(mlp_pt2, "baseline", target)
    session = get(runtime_id).create(threads=1).load(variant)
    with session:
        prepared = session.prepare(_feeds(2))
        session.run(prepared)
    with pytest.raises(RuntimeError, match="closed"):
        session.run(prepared)
    with pytest.raises(RuntimeError, match="closed"):
        session.prepare(_feeds(2))
    session.close()  # closing twice is harmless


@pytest.mark.parametrize(("runtime_id", "target"), CPU_RUNTIMES)
def test_missing_inputs_give_a_clear_error(shared_build, mlp_pt2: Path, runtime_id: str, target: str) -> None:
    _, variant = shared_build(mlp_pt2, "baseline", target)
    with get(runtime_id).create(threads=1).load(variant) as session:
        with pytest.raises(UserError, match=r"inputs \['input'\] are missing; the model takes \['input'\]"):
            session.prepare({"x": _feeds(2)["input"]})


def test_the_base_session_checks_state_for_every_runtime() -> None:
    calls: list[str] = []

    class Echo(Session):
        def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
            calls.append("prepare")
            return feeds

        def _run(self, prepared: Any) -> Any:
            calls.append("run")
            return [prepared["a"] * 2]

        def _fetch(self, outputs: Any) -> list[np.ndarray]:
            return list(outputs)

        def _close(self) -> None:
            calls.append("close")

    with Echo(["a"]) as session:
        assert session.fetch(session.run(session.prepare({"a": np.ones(2), "b": np.zeros(1)})))[0].tolist() == [2, 2]
    session.close()
    assert calls == ["prepare", "run", "close"]


# --- settings ---------------------------------------------------------------------------------


def test_threads_must_be_positive() -> None:
    from engine.runtimes.onnxruntime import OrtOptions

    with pytest.raises(UserError, match="at least 1"):
        RuntimeSettings(threads=0, options=RuntimeOptions())
    with pytest.raises(UserError, match="at least 1"):
        get("onnxruntime").create(threads=0)
    settings = RuntimeSettings(threads=3, options=OrtOptions(graph_optimization_level="basic"))
    assert settings.to_json() == {"threads": 3, "graph_optimization_level": "basic"}
    assert get("onnxruntime")(settings).settings.options.graph_optimization_level == "basic"


def test_a_runtime_takes_only_its_own_options() -> None:
    from engine.runtimes.openvino import OpenVinoOptions

    with pytest.raises(TypeError, match="onnxruntime takes OrtOptions, not OpenVinoOptions"):
        get("onnxruntime")(RuntimeSettings(threads=1, options=OpenVinoOptions()))
    assert type(get("onnxruntime").create(threads=1).settings.options).__name__ == "OrtOptions"  # the defaults


@pytest.mark.parametrize("runtime_id", ["torch", "torchscript"])
def test_torch_runtimes_apply_the_thread_setting(shared_build, mlp_pt2: Path, runtime_id: str) -> None:
    import torch

    target = get(runtime_id).consumes
    _, variant = shared_build(mlp_pt2, "baseline", target)
    for threads in (2, 1):
        with get(runtime_id).create(threads=threads).load(variant) as session:
            assert torch.get_num_threads() == threads
            assert session.applied["intra_op_threads"] == threads


def test_onnxruntime_records_the_options_it_applied(shared_build, mlp_pt2: Path) -> None:
    _, variant = shared_build(mlp_pt2)
    _, applied = _infer("onnxruntime", variant, _feeds(2), threads=2, graph_optimization_level="basic")
    assert applied["intra_op_threads"] == 2 and applied["inter_op_threads"] == 1
    assert applied["graph_optimization_level"] == "basic"
    assert applied["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="graph_optimization_level=fast"):
        _infer("onnxruntime", variant, _feeds(2), graph_optimization_level="fast")


def test_openvino_runs_fp32_unless_asked_and_records_threads(shared_build, mlp_pt2: Path) -> None:
    _, variant = shared_build(mlp_pt2)
    _, applied = _infer("openvino", variant, _feeds(2), threads=2)
    assert applied["inference_precision"] == "f32"
    assert applied["intra_op_threads"] == 2 and applied["num_streams"] == 1


# --- runtime options ------------------------------------------------------------------------------


def test_runtime_options_parse_to_typed_values() -> None:
    from engine.runtimes import parse_runtime_options

    parsed = parse_runtime_options(["torch-cuda.cuda_graph=true", "tensorrt.workspace_mb=2048", "",
                                    " onnxruntime.graph_optimization_level = basic ",
                                    "openvino.inference_precision=f16", "torch-cuda.tf32=False"])
    assert parsed == {"torch-cuda": {"cuda_graph": True, "tf32": False}, "tensorrt": {"workspace_mb": 2048},
                      "onnxruntime": {"graph_optimization_level": "basic"},
                      "openvino": {"inference_precision": "f16"}}


@pytest.mark.parametrize(("item", "match"), [
    ("torch-cuda.cuda_grpah=true", r"torch-cuda has no option 'cuda_grpah' \(its options: cuda_graph, device, tf32\)"),
    ("torch.threads=2", r"torch has no option 'threads' \(its options: none\)"),
    ("onnx.graph_optimization_level=all", r"unknown runtime 'onnx'"),
    ("onnxruntime.graph_optimization_level", r"must look like RUNTIME\.KEY=VALUE"),
    ("graph_optimization_level=all", r"must look like RUNTIME\.KEY=VALUE"),
    ("onnxruntime.graph_optimization_level=", r"must look like RUNTIME\.KEY=VALUE"),
])
def test_runtime_option_typos_are_errors_not_ignored_settings(item: str, match: str) -> None:
    from engine.runtimes import parse_runtime_options

    with pytest.raises(UserError, match=match):
        parse_runtime_options([item])


@pytest.mark.parametrize("runtime_id", sorted(REGISTRY))
def test_every_runtime_declares_its_options_as_a_frozen_typed_dataclass(runtime_id: str) -> None:
    """The Options dataclass is the one declaration: defaults, help texts and types live there, nowhere else."""
    import dataclasses
    import typing

    options_cls = REGISTRY[runtime_id].Options
    assert issubclass(options_cls, RuntimeOptions) and dataclasses.is_dataclass(options_cls)
    defaults = options_cls()  # every option has a default
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.device = "cuda:1"  # type: ignore[misc]
    hints = typing.get_type_hints(options_cls)
    for f in dataclasses.fields(options_cls):
        assert f.metadata.get("help"), f"{runtime_id}.{f.name} has no help text"
        # a type the shared converter reads from text and checks in stored JSON
        assert hints[f.name] in (bool, int, float, str) or typing.get_origin(hints[f.name]) is typing.Literal, f.name


@pytest.mark.parametrize("runtime_id", sorted(REGISTRY))
def test_every_runtime_options_round_trip_through_json(runtime_id: str) -> None:
    import dataclasses
    import json
    import typing

    options_cls = REGISTRY[runtime_id].Options
    hints = typing.get_type_hints(options_cls)
    changed: dict[str, Any] = {}
    for f in dataclasses.fields(options_cls):  # a value other than the default for every option
        hint = hints[f.name]
        if hint is bool:
            changed[f.name] = not f.default
        elif hint is int:
            changed[f.name] = f.default + 1
        elif typing.get_origin(hint) is typing.Literal:
            changed[f.name] = next(c for c in typing.get_args(hint) if c != f.default)
        elif f.name == "device":
            changed[f.name] = "cuda:1"
    for options in (options_cls(), options_cls(**changed)):
        stored = json.loads(json.dumps(options.to_json()))
        assert options_cls.from_json(stored) == options
        assert get(runtime_id).create(1, stored).settings.options == options
        hash(options)
    assert options_cls(**changed).to_json() == {**options_cls().to_json(), **changed}


def test_availability_lists_the_help_texts_of_the_options_dataclasses() -> None:
    rows = {row["id"]: row for row in availability()}
    for runtime_id, cls in REGISTRY.items():
        assert rows[runtime_id]["options"] == describe(cls.Options)
        assert list(rows[runtime_id]["options"]) == list(cls.Options.field_names())
    assert rows["torch"]["options"] == {}
    assert rows["tensorrt"]["options"] == {"device": "the CUDA device, e.g. cuda:1 (default cuda:0)",
                                           "tf32": "allow TF32 math for fp32 matmuls and convolutions; fp32 means "
                                                   "fp32 unless asked (default false)",
                                           "workspace_mb": "TensorRT's workspace limit in MB (default 4096)"}
    assert rows["onnxruntime"]["options"] == {
        "graph_optimization_level": "ONNX Runtime's graph optimizations: disable, basic, extended or all "
                                    "(default all)"}


def test_the_cells_input_shapes_are_the_engines_never_a_users_option() -> None:
    from engine.runtimes import check_runtime_options, parse_runtime_options

    with pytest.raises(UserError, match=r"tensorrt has no option 'input_shapes' \(its options: device, tf32, "
                                        r"workspace_mb\)"):
        parse_runtime_options(["tensorrt.input_shapes=x:1x16"])
    with pytest.raises(UserError, match=r"tensorrt has no option 'input_shapes'"):
        check_runtime_options({"tensorrt": {"input_shapes": {"x": [1, 16]}}})  # nor from stored settings
    runtime = get("tensorrt").create(1, {}, input_shapes={"x": (4, 16)})
    assert runtime.settings.input_shapes == {"x": (4, 16)} and "input_shapes" not in runtime.settings.to_json()


def test_submitted_settings_are_checked_too(mlp_onnx: Path, data_dir: Path) -> None:
    from engine.artifacts import intake
    from engine.measure.latency import MeasureSettings
    from engine.optimizations import parse_chain
    from engine.plan import StudySettings
    from engine.study import submit_study

    settings = StudySettings(measure=MeasureSettings(), threads=1, runtime_options={"onnxruntime": {"level": 1}})
    with pytest.raises(UserError, match="onnxruntime has no option 'level'"):
        submit_study(intake(mlp_onnx), [parse_chain("baseline")], ["onnxruntime"], [1], settings)


@pytest.mark.parametrize(("item", "match"), [
    ("onnxruntime.graph_optimization_level=fast", r"takes one of disable, basic, extended, all"),
    ("torch-cuda.cuda_graph=maybe", r"^runtime option torch-cuda\.cuda_graph=maybe is not valid; it takes true or "
                                    r"false$"),
    ("tensorrt.workspace_mb=1.5", r"tensorrt\.workspace_mb=1\.5 is not valid; it takes a valid int"),
    ("torch-cuda.device=gpu1", r"takes cuda or cuda:N"),
    ("tensorrt.workspace_mb=-5", r"takes a positive integer"),
    ("openvino.inference_precision=int8", r"takes one of f32, bf16, f16"),
])
def test_runtime_option_values_are_checked_before_any_cell_runs(item: str, match: str) -> None:
    from engine.runtimes import parse_runtime_options

    with pytest.raises(UserError, match=match):
        parse_runtime_options([item])


def test_runtime_options_read_text_as_the_optimizations_do() -> None:
    """One converter for both: the same spellings of true and false, choices in any case."""
    from engine.optimizations import parse_chain
    from engine.runtimes import parse_runtime_options

    assert parse_runtime_options(["torch-cuda.cuda_graph=yes", "torch-cuda.tf32=off",
                                  "onnxruntime.graph_optimization_level=BASIC"]) == {
        "torch-cuda": {"cuda_graph": True, "tf32": False}, "onnxruntime": {"graph_optimization_level": "basic"}}
    assert parse_chain("int8-dynamic:per_channel=off").steps[0].config.per_channel is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(("stored", "match"), [
    ({"torch-cuda": {"cuda_graph": "yes"}}, r"^runtime option torch-cuda\.cuda_graph=yes is not valid; it takes "
                                            r"true or false$"),
    ({"tensorrt": {"workspace_mb": 0}}, r"^runtime option tensorrt\.workspace_mb=0 is not valid; it takes a positive "
                                        r"integer$"),
    ({"tensorrt": {"workspace_mb": True}}, r"workspace_mb=true is not valid; it takes a valid int"),
    ({"openvino": {"inference_precision": "int8"}}, r"inference_precision=int8 is not valid; it takes one of f32, "
                                                    r"bf16, f16"),
    ({"torch-compile-cuda": {"device": "gpu"}}, r"device=gpu is not valid; it takes cuda or cuda:N"),
    ({"tensorrt": {"bogus": 1}}, r"^tensorrt has no option 'bogus' \(its options: device, tf32, workspace_mb\)$"),
    ({"torch": {"freeze": False}}, r"^torch has no option 'freeze' \(its options: none\)$"),
    ({"trt": {}}, r"unknown runtime 'trt'"),
])
def test_stored_runtime_options_are_checked_with_the_same_messages(stored: dict[str, Any], match: str) -> None:
    """Stored studies keep the JSON form (`{runtime: {name: value}}`); a bad one names the value and what it takes."""
    from engine.runtimes import check_runtime_options

    with pytest.raises(UserError, match=match):
        check_runtime_options(stored)
    runtime_id, values = next(iter(stored.items()))
    if runtime_id in REGISTRY:
        with pytest.raises(UserError, match=match):
            get(runtime_id).create(1, values)


def test_options_made_in_code_name_a_bad_value() -> None:
    from engine.runtimes.tensorrt import TensorRTOptions

    with pytest.raises(ValueError, match=r"workspace_mb=-5 is not a positive integer"):
        TensorRTOptions(workspace_mb=-5)
    with pytest.raises(ValueError, match=r"device=cpu is not cuda or cuda:N"):
        TensorRTOptions(device="cpu")
    with pytest.raises(ValueError, match=r"tf32=1 is not true or false"):
        TensorRTOptions(tf32=1)  # type: ignore[arg-type]
