"""Sample data: loading a user's .npz safely, synthesizing inputs from a spec, and the split fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import data
from engine.data import Dataset, calib_set, eval_set, load_npz, synthesize, take_batch
from engine.errors import UserError
from engine.specs import InputSpec

MLP = InputSpec.parse("x:float32[B,16]")
TEXT = InputSpec.parse("input_ids:int64[B,S]{0,120};attention_mask:int64[B,S]{1,2}", seq_len=8)


def save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def floats(n: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


# --- loading an .npz ------------------------------------------------------------------------------


def test_load_splits_and_labels(mlp_npz: Path) -> None:
    dataset = load_npz(mlp_npz, MLP)
    assert set(dataset.splits) == {"eval", "calib"}
    assert dataset.split("eval")["x"].shape == (40, 16)
    assert dataset.split("calib")["x"].shape == (32, 16)
    labels = dataset.split_labels("eval")
    assert labels is not None and labels.shape == (40,)
    assert dataset.split_labels("calib") is None
    assert not dataset.synthetic


def test_unprefixed_arrays_stand_in_for_every_split(tmp_path: Path) -> None:
    path = save(tmp_path / "d.npz", x=floats(10, 16), labels=np.arange(10) % 4)
    dataset = load_npz(path, MLP)
    assert dataset.has("eval") and dataset.has("calib")
    assert dataset.split("eval")["x"].shape == (10, 16)
    labels = dataset.split_labels("eval")
    assert labels is not None and labels.tolist() == (np.arange(10) % 4).tolist()


def test_integer_data_may_feed_a_float_input_but_not_the_reverse(tmp_path: Path) -> None:
    load_npz(save(tmp_path / "ints.npz", x=np.ones((3, 16), np.int32)), MLP)
    with pytest.raises(UserError, match=r"'input_ids' is float64, the model expects int64"):
        load_npz(save(tmp_path / "f.npz", input_ids=np.ones((3, 8)), attention_mask=np.ones((3, 8), np.int64)), TEXT)


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = save(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UserError, match=r"obj.npz: array 'x' holds Python objects.*store plain numeric arrays"):
        load_npz(path, MLP)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"test/x": floats(4, 16)}, r"array 'test/x' has an unknown split 'test'; use train/, calib/ or eval/"),
        ({"y": floats(4, 16)}, r"arrays \['y'\] match no model input; the inputs are \['x'\]"),
        ({"eval/labels": np.zeros(4)}, r"no input arrays; name them after the model's inputs \(x\)"),
        ({"x": floats(4, 15)}, r"'x' has shape \(4, 15\), the model expects x:float32\[batch,16\]"),
        ({"x": floats(4, 16, 1)}, r"'x' has shape \(4, 16, 1\), the model expects"),
        ({"x": np.float32(1.0)}, r"share a non-empty first \(sample\) axis"),
        ({"x": floats(0, 16)}, r"share a non-empty first \(sample\) axis"),
        ({"x": floats(4, 16), "labels": np.zeros(3)}, r"labels has 3 rows but the inputs have 4; give one label"),
        ({"x": floats(4, 16), "labels": np.int64(2)}, r"labels has 0 rows but the inputs have 4"),
        ({"eval/x": floats(4, 16), "train/labels": np.zeros(4)}, r"'train/labels' has no input arrays beside it"),
    ],
)
def test_data_that_does_not_fit_the_model(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    path = save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=match) as info:
        load_npz(path, MLP)
    assert str(info.value).startswith("bad.npz")
    assert "\n" not in str(info.value)


def test_arrays_of_several_inputs_must_agree_and_be_complete(tmp_path: Path) -> None:
    ids = np.ones((5, 8), np.int64)
    with pytest.raises(UserError, match=r"eval: missing arrays for inputs \['attention_mask'\]"):
        load_npz(save(tmp_path / "a.npz", **{"eval/input_ids": ids}), TEXT)
    with pytest.raises(UserError, match=r"share a non-empty first \(sample\) axis; got \[4, 5\]"):
        load_npz(save(tmp_path / "b.npz", input_ids=ids, attention_mask=ids[:4]), TEXT)
    # named (dynamic) axes take any length in the data
    dataset = load_npz(save(tmp_path / "c.npz", input_ids=np.ones((5, 30), np.int64),
                            attention_mask=np.ones((5, 30), np.int64)), TEXT)
    assert dataset.split("eval")["input_ids"].shape == (5, 30)


@pytest.mark.parametrize("kind", ["text", "npy", "missing"])
def test_files_that_are_not_an_npz(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data.npz"
    if kind == "text":
        path.write_text("x,y\n1,2\n")
    elif kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, floats(4, 16))
    with pytest.raises(UserError, match=r"(not an .npz archive|no such data file); .*numpy.savez") as info:
        load_npz(path, MLP)
    assert "allow_pickle" not in str(info.value)  # the user cannot act on that hint


# --- synthesized inputs --------------------------------------------------------------------------


def test_synthesize_is_deterministic_for_a_seed() -> None:
    spec = InputSpec.parse("x:float32[B,3,4];ids:int64[B,S]{0,50};flag:bool[B];h:float16[B,2]", seq_len=6)
    a, b = synthesize(spec, 5, seed=3), synthesize(spec, 5, seed=3)
    for name in spec.names:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["x"], synthesize(spec, 5, seed=4)["x"])
    assert a["x"].shape == (5, 3, 4) and a["x"].dtype == np.float32
    assert a["ids"].shape == (5, 6) and a["ids"].dtype == np.int64
    assert a["flag"].dtype == np.bool_ and a["h"].dtype == np.float16


def test_synthesized_token_ids_stay_inside_the_range() -> None:
    spec = InputSpec.parse("ids:int64[B,S]{3,7};mask:int32[B,S]{1,2}", seq_len=64)
    arrays = synthesize(spec, 200)
    ids = arrays["ids"]
    assert ids.min() == 3 and ids.max() == 6  # half-open range: every value used, none outside
    assert (arrays["mask"] == 1).all() and arrays["mask"].dtype == np.int32


def test_synthesize_counts_samples_even_when_the_batch_is_fixed() -> None:
    arrays = synthesize(InputSpec.parse("x:float32[1,16]"), 10)
    assert arrays["x"].shape == (10, 16)


def test_bfloat16_inputs_travel_as_float32() -> None:
    spec = InputSpec.parse("x:bfloat16[B,4]")
    inputs, _ = eval_set(None, spec, 3)
    assert inputs["x"].dtype == np.float32 and inputs["x"].shape == (3, 4)


# --- evaluation and calibration sets ----------------------------------------------------------


def test_eval_set_uses_the_eval_split_and_its_labels(mlp_npz: Path) -> None:
    dataset = load_npz(mlp_npz, MLP)
    inputs, labels = eval_set(dataset, MLP, 25)
    assert inputs["x"].shape == (25, 16)
    np.testing.assert_array_equal(inputs["x"], dataset.split("eval")["x"][:25])
    assert labels is not None and labels.shape == (25,)
    np.testing.assert_array_equal(labels, dataset.labels["eval"][:25])


def test_eval_set_falls_back_to_unprefixed_arrays(tmp_path: Path) -> None:
    x = floats(6, 16).astype(np.float64)  # cast to the model's dtype on the way out
    dataset = load_npz(save(tmp_path / "d.npz", x=x, labels=np.arange(6)), MLP)
    inputs, labels = eval_set(dataset, MLP, 100)
    assert inputs["x"].dtype == np.float32 and inputs["x"].shape == (6, 16)
    assert inputs["x"].flags.c_contiguous
    assert labels is not None and labels.tolist() == list(range(6))


def test_eval_set_synthesizes_without_eval_data(tmp_path: Path) -> None:
    calib_only = load_npz(save(tmp_path / "c.npz", **{"calib/x": floats(5, 16)}), MLP)
    for dataset in (None, calib_only):
        inputs, labels = eval_set(dataset, MLP, 1000)
        assert labels is None
        assert inputs["x"].shape == (data.SYNTHETIC_EVAL, 16)
        np.testing.assert_array_equal(inputs["x"], synthesize(MLP, data.SYNTHETIC_EVAL)["x"])
    assert eval_set(None, MLP, 7)[0]["x"].shape == (7, 16)


@pytest.mark.parametrize("prefix", ["calib/", "", "train/", "eval/"])
def test_calib_set_takes_the_best_split_available(tmp_path: Path, prefix: str) -> None:
    x = floats(9, 16, seed=5)
    arrays = {f"{prefix}x": x}
    if prefix != "calib/":
        arrays["eval/x" if prefix != "eval/" else "train/x"] = floats(9, 16, seed=6)
    dataset = load_npz(save(tmp_path / "d.npz", **arrays), MLP)
    expected = x if prefix != "eval/" else floats(9, 16, seed=6)  # train comes before eval
    np.testing.assert_array_equal(calib_set(dataset, MLP, 4)["x"], expected[:4])


def test_calib_set_prefers_the_calib_split(mlp_npz: Path) -> None:
    dataset = load_npz(mlp_npz, MLP)
    np.testing.assert_array_equal(calib_set(dataset, MLP, 100)["x"], dataset.split("calib")["x"])


def test_calib_set_synthesizes_other_samples_than_eval() -> None:
    calib = calib_set(None, TEXT, 1000)
    assert calib["input_ids"].shape == (data.SYNTHETIC_CALIB, 8)
    np.testing.assert_array_equal(calib["input_ids"], calib_set(None, TEXT, 1000)["input_ids"])
    assert not np.array_equal(calib["input_ids"], eval_set(None, TEXT, 1000)[0]["input_ids"])
    assert calib["input_ids"].max() < 120 and (calib["attention_mask"] == 1).all()


# --- batches ---------------------------------------------------------------------------------------


def test_take_batch_wraps_around_so_every_batch_is_full() -> None:
    arrays = {"x": np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), "i": np.arange(5)}
    batch = take_batch(arrays, 3, 4)
    assert batch["i"].tolist() == [3, 4, 0, 1]
    assert batch["x"][:, 0].tolist() == [3, 4, 0, 1] and batch["x"].shape == (4, 3)
    assert take_batch(arrays, 0, 12)["i"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert take_batch(arrays, 7, 2)["i"].tolist() == [2, 3]
    assert all(a.flags.c_contiguous for a in batch.values())


def test_dataset_without_a_split_or_fallback() -> None:
    dataset = Dataset(splits={"calib": {"x": floats(2, 16)}})
    assert not dataset.has("eval")
    assert dataset.split("eval") == {}
    assert dataset.split_labels("eval") is None


def test_token_ids_outside_the_vocabulary_are_refused_once_at_upload(tmp_path: Path) -> None:
    from engine.specs import TensorSpec

    spec = InputSpec((TensorSpec("input_ids", "int64", ("batch", "sequence"), (0, 120), (0, 120)),
                      TensorSpec("attention_mask", "int64", ("batch", "sequence"), (1, 2), (0, 2))), seq_len=8)
    ids = np.random.default_rng(0).integers(0, 120, size=(4, 8))
    mask = np.ones((4, 8), dtype=np.int64)
    mask[:, 6:] = 0  # padding: inside the bound though outside the synthesis range
    good = tmp_path / "good.npz"
    np.savez(good, input_ids=ids, attention_mask=mask)
    assert load_npz(good, spec).has("eval")
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.where(ids > 100, 30000, ids), attention_mask=mask)
    with pytest.raises(UserError, match=r"'input_ids' holds values 0\.\.30000 but the model accepts \[0, 120\); "
                                        r"tokenize with the model's own tokenizer"):
        load_npz(bad, spec)
