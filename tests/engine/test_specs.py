"""InputSpec: parsing explicit specs, shapes for a batch, JSON round trips, and the errors a user sees."""

from __future__ import annotations

import json

import pytest

from engine.errors import UserError
from engine.specs import BATCH_AXIS, DEFAULT_INT_RANGE, DEFAULT_SEQ_LEN, InputSpec, TensorSpec


def test_parse_one_image_input() -> None:
    spec = InputSpec.parse("x:float32[B,3,224,224]")
    (x,) = spec.inputs
    assert (x.name, x.dtype, x.shape, x.value_range) == ("x", "float32", (BATCH_AXIS, 3, 224, 224), None)
    assert x.dynamic_batch
    assert spec.fixed_batch is None
    assert spec.shapes(4) == {"x": (4, 3, 224, 224)}


def test_parse_several_inputs_with_ranges_and_named_axes() -> None:
    spec = InputSpec.parse(
        " input_ids : int64[B, S]{0,30522} ; attention_mask:int64[B,S]{0, 2};token_type_ids:int32[B,S];", seq_len=16
    )
    assert spec.names == ["input_ids", "attention_mask", "token_type_ids"]
    ids, mask, types = spec.inputs
    assert ids.shape == (BATCH_AXIS, "S") and ids.value_range == (0, 30522)
    assert mask.value_range == (0, 2)
    assert types.dtype == "int32" and types.value_range == DEFAULT_INT_RANGE  # integers always get a range
    assert spec.seq_len == 16
    assert spec.shapes(3) == {"input_ids": (3, 16), "attention_mask": (3, 16), "token_type_ids": (3, 16)}


def test_named_axes_default_to_the_default_sequence_length() -> None:
    spec = InputSpec.parse("ids:int64[N,T]{0,10}")
    assert spec.shapes(2) == {"ids": (2, DEFAULT_SEQ_LEN)}
    assert spec.with_seq_len(7).shapes(2) == {"ids": (2, 7)}


def test_names_with_dots_and_slashes_as_onnx_exporters_write_them() -> None:
    spec = InputSpec.parse("input.1:float32[B,8];encoder/x-0:float16[B,4]")
    assert spec.names == ["input.1", "encoder/x-0"]


def test_fixed_batch_and_what_a_batch_size_can_run() -> None:
    spec = InputSpec.parse("x:float32[1,16];y:float32[1,4]")
    assert spec.fixed_batch == 1
    assert spec.shapes(1) == {"x": (1, 16), "y": (1, 4)}
    with pytest.raises(UserError, match=r"fixed batch dimension of 1; batch size 8 cannot run \(re-export"):
        spec.shapes(8)
    # one dynamic input means the batch is not fixed for the model as a whole
    assert InputSpec.parse("x:float32[1,16];y:float32[B,4]").fixed_batch is None


@pytest.mark.parametrize(
    "text",
    ["x:float32[B,3,224,224]", "ids:int64[B,S]{0,30522};mask:int64[B,S]{0,2}", "a:float16[2,3];b:bool[B]",
     "scalar:float32[]"],
)
def test_describe_parses_back_to_the_same_spec(text: str) -> None:
    spec = InputSpec.parse(text)
    assert InputSpec.parse(spec.describe()) == spec


def test_json_round_trip_keeps_everything() -> None:
    inputs = InputSpec.parse("ids:int64[B,S]{5,30522};x:float16[B,3,8]").inputs
    outputs = (TensorSpec("logits", "float32", (BATCH_AXIS, 2)),)
    spec = InputSpec(inputs, outputs, seq_len=12)
    again = InputSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    assert again.inputs[0].value_range == (5, 30522)
    assert again.outputs[0].shape == (BATCH_AXIS, 2)
    assert again.seq_len == 12


def test_with_outputs_and_with_seq_len_keep_the_rest() -> None:
    spec = InputSpec.parse("x:float32[B,S]", seq_len=9)
    out = (TensorSpec("y", "float32", (BATCH_AXIS,)),)
    assert spec.with_outputs(out).seq_len == 9
    assert spec.with_outputs(out).with_seq_len(3).outputs == out


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"--input-spec is empty; write it like"),
        (" ; ", r"--input-spec is empty"),
        ("x float32[B,3]", r"cannot read input spec 'x float32\[B,3\]'; write it like"),
        ("x:float32(B,3)", r"cannot read input spec"),
        ("x:float32[B,3]{0}", r"cannot read input spec"),
        ("x:complex64[B,3]", r"dtype 'complex64'; use one of .*float32"),
        ("x:float32[B,3.5]", r"bad dimension '3.5'"),
        ("x:float32[B,-1]", r"bad dimension '-1'"),
        ("ids:int64[B,S]{7,7}", r"empty value range \{7,7\}"),
        ("ids:int64[B,S]{9,2}", r"empty value range"),
        ("x:float32[B,3];x:float32[B,4]", r"input names repeat in the spec: x, x"),
    ],
)
def test_bad_explicit_specs_say_how_to_write_them(text: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        InputSpec.parse(text)
    assert "\n" not in str(info.value)


def test_seq_len_must_be_positive() -> None:
    with pytest.raises(UserError, match="--seq-len must be a positive integer, got 0"):
        InputSpec.parse("x:int64[B,S]", seq_len=0)


def test_a_spec_needs_inputs_and_valid_dims() -> None:
    with pytest.raises(UserError, match="the model has no inputs; give them with --input-spec"):
        InputSpec(())
    with pytest.raises(UserError, match="negative dimension -2"):
        TensorSpec("x", "float32", (BATCH_AXIS, -2))
