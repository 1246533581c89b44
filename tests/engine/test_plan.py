"""Study planning: variant lists, batch sizes, cells and why a cell cannot run."""

from __future__ import annotations

import pytest

from engine.errors import UserError
from engine.optimizations import parse_chain
from engine.plan import StudySettings, expand, parse_batch_sizes, parse_variants, split_variants
from engine.specs import InputSpec


@pytest.mark.parametrize(("text", "expected"), [
    ("baseline,int8-dynamic", ["baseline", "int8-dynamic"]),
    ("baseline,int8-static:method=entropy,per_channel=false,fp16",
     ["baseline", "int8-static:method=entropy,per_channel=false", "fp16"]),
    ("int8-static:activation_type=int8,samples=64", ["int8-static:activation_type=int8,samples=64"]),
    (" baseline , ,fp16 ", ["baseline", "fp16"]),
])
def test_split_variants_keeps_parameters_with_their_chain(text: str, expected: list[str]) -> None:
    assert split_variants(text) == expected


def test_parse_variants_deduplicates_by_canonical_name() -> None:
    chains = parse_variants(["baseline", "int8-static:method=minmax", "int8-static", "fp16"])
    assert [c.name for c in chains] == ["baseline", "int8-static", "fp16"]


@pytest.mark.parametrize("text", ["0", "1,x", "", "-4"])
def test_bad_batch_sizes(text: str) -> None:
    with pytest.raises(UserError, match="batch-sizes"):
        parse_batch_sizes(text)


def test_expand_explains_every_cell_that_cannot_run() -> None:
    spec = InputSpec.parse("x:float32[B,16]")
    chains = [parse_chain("baseline"), parse_chain("int8-static"), parse_chain("fp16")]
    cells = expand("onnx", spec, chains, ["torch", "onnxruntime", "onnxruntime-cuda"], [1, 8])
    assert len(cells) == 18
    by = {(c.variant, c.runtime, c.batch_size): c for c in cells}
    assert by[("baseline", "onnxruntime", 8)].runnable
    assert by[("baseline", "torch", 1)].status == "n/a"
    assert by[("int8-static", "onnxruntime-cuda", 1)].status == "unavailable"
    assert by[("int8-static", "onnxruntime-cuda", 1)].reason
    assert [c.index for c in cells] == list(range(18))


def test_torch_model_cells() -> None:
    spec = InputSpec.parse("x:float32[B,16]")
    cells = expand("torchscript", spec, [parse_chain("int8-static"), parse_chain("fp16")],
                   ["torchscript", "torch"], [1])
    reasons = {(c.variant, c.runtime): c.reason for c in cells}
    assert "no TorchScript implementation" in (reasons[("int8-static", "torchscript")] or "")
    assert "CUDA" in (reasons[("fp16", "torchscript")] or "")
    assert "TorchScript archive" in (reasons[("int8-static", "torch")] or "")


def test_fixed_batch_model() -> None:
    spec = InputSpec.parse("x:float32[1,16]")
    cells = expand("onnx", spec, [parse_chain("baseline")], ["onnxruntime"], [1, 4])
    assert [c.status for c in cells] == ["pending", "n/a"]


def test_settings_round_trip_and_validation() -> None:
    settings = StudySettings(threads=3, timeout_s=30, memory_limit_mb=4096)
    assert StudySettings.from_json(settings.to_json()) == settings
    with pytest.raises(UserError, match="threads"):
        StudySettings(threads=0)
    with pytest.raises(UserError, match="memory-limit"):
        StudySettings(memory_limit_mb=1)


def test_default_runtimes_are_those_that_run_the_models_format() -> None:
    from engine.plan import runtimes_for

    everything = ["torch", "torchscript", "onnxruntime", "openvino", "tensorflow"]
    assert runtimes_for("onnx", everything) == ["onnxruntime", "openvino"]
    assert "tensorflow" not in runtimes_for("hf", everything) and "torch" in runtimes_for("hf", everything)
    assert runtimes_for("onnx", ["torch"]) == ["torch"]  # none fits: all kept, and the cells say why
