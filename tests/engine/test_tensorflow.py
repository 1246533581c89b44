"""TensorFlow models (the optional extra): SavedModel and Keras uploads, tf2onnx conversion, the tensorflow runtime.

The models are a tiny Keras CNN made once per session and saved both ways. Tests that need TensorFlow skip with
the reason when the extra is not installed; CI installs it (`make test TF=1`), so there they run.
"""

from __future__ import annotations

import importlib.util
import io
import json
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.__main__ import main
from engine.errors import UserError

HAS_TF = importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("tf2onnx") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="the TensorFlow extra is not installed "
                                                 "(pip install -r requirements-tf.txt, or make install TF=1)")
FAST = ["--iterations", "5", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1", "--timeout", "300",
        "--rounds", "0"]
SHAPE = (12, 12, 3)


def _zip_folder(folder: Path, dst: Path) -> Path:
    with zipfile.ZipFile(dst, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder)}")  # zipped as a folder usually is
    return dst


@pytest.fixture(scope="session")
def keras_cnn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Keras CNN (image: float32[batch,12,12,3] -> 5 logits) as a zipped SavedModel (model.export) and a
    .keras file, with a fixed input and TensorFlow's own outputs on it."""
    import keras

    folder = tmp_path_factory.mktemp("tf")
    keras.utils.set_random_seed(0)
    image = keras.Input(SHAPE, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(5, name="logits")(x)
    model = keras.Model(image, logits)
    model.export(str(folder / "cnn_saved"), verbose=False)
    model.save(str(folder / "cnn.keras"))
    sample = np.random.default_rng(0).standard_normal((4, *SHAPE)).astype(np.float32)
    return {"saved_zip": _zip_folder(folder / "cnn_saved", folder / "cnn_saved.zip"),
            "keras": folder / "cnn.keras", "x": sample, "y": np.asarray(model(sample, training=False))}


# --- without TensorFlow: detection, refusals and what to install ----------------------------------


def test_a_legacy_h5_file_is_refused_from_its_bytes(tmp_path: Path) -> None:
    from engine.artifacts import intake

    path = tmp_path / "model.bin"  # the name does not matter: the HDF5 signature does
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(UserError) as info:
        intake(path)
    message = str(info.value)
    assert message.startswith("model.bin: a legacy Keras .h5 file is not accepted"), message
    assert "model.keras" in message and "\n" not in message


def test_a_savedmodel_zip_with_a_symlink_is_refused(tmp_path: Path) -> None:
    from engine.artifacts import intake

    path = tmp_path / "linked.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("saved/saved_model.pb", b"\x08\x01")
        link = zipfile.ZipInfo("saved/variables/variables.index")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UserError, match=r"^linked\.zip: member 'saved/variables/variables\.index' is a symbolic "
                                        r"link; zip the real files instead$"):
        intake(path)


def test_without_tensorflow_an_upload_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.artifacts import detect_format, intake

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError, as uninstalled
    path = tmp_path / "saved.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("saved/saved_model.pb", b"\x08\x01")
        archive.writestr("saved/variables/variables.index", b"")
    assert detect_format(path) == "savedmodel"
    with pytest.raises(UserError) as info:
        intake(path)
    message = str(info.value)
    assert message == ("saved.zip: SavedModel and Keras models need the TensorFlow extra, which is not installed; "
                       "pip install -r requirements-tf.txt (or make install TF=1)"), message


def test_the_tensorflow_runtime_is_listed_unavailable_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.runtimes import availability

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    row = {r["id"]: r for r in availability()}["tensorflow"]
    assert row["available"] is False
    assert row["reason"] == ("TensorFlow is not installed (an optional extra): pip install -r requirements-tf.txt "
                             "(or make install TF=1)")
    assert row["consumes"] == "tensorflow"


def test_runtimes_lists_tensorflow() -> None:
    out = io.StringIO()
    assert main(["runtimes", "--json"], out=out) == 0
    row = {r["id"]: r for r in json.loads(out.getvalue())}["tensorflow"]
    assert row["available"] is HAS_TF, row
    assert (row["reason"] is None) is HAS_TF


def test_tensorflow_cells_of_other_formats_are_not_applicable() -> None:
    from engine.optimizations import parse_chain
    from engine.optimizations.build import not_applicable_reason

    assert not_applicable_reason("onnx", parse_chain("baseline"), "tensorflow", "cpu") == (
        "the tensorflow runtime runs TensorFlow models (a SavedModel or a .keras file) only")
    assert not_applicable_reason("keras", parse_chain("int8-dynamic"), "tensorflow", "cpu") == (
        "int8-dynamic has no TensorFlow implementation; its variants run on the ONNX runtimes")
    assert not_applicable_reason("savedmodel", parse_chain("int8-dynamic+fp16"), "onnx", "cpu") is None
    assert "needs a torch model" in str(not_applicable_reason("keras", parse_chain("prune-structured:0.5"), "onnx",
                                                              "cpu"))


# --- with TensorFlow ------------------------------------------------------------------------------


@needs_tf
@pytest.mark.parametrize("kind", ["saved_zip", "keras"])
def test_intake_reads_the_signature_and_tf2onnx_matches_tensorflow(kind: str, keras_cnn: dict[str, Any]) -> None:
    """Intake reads names, dtypes and the dynamic batch; the recorded onnx-export (tf2onnx) gives ONNX Runtime the
    outputs TensorFlow gives (atol 1e-5), and says which converter and opset made it."""
    import onnxruntime as ort

    from engine.artifacts import intake
    from engine.optimizations.base import Chain
    from engine.optimizations.build import build_variant
    from engine.variants import BuildContext

    artifact = intake(keras_cnn[kind])
    assert artifact.format == ("savedmodel" if kind == "saved_zip" else "keras")
    (image,) = artifact.spec.inputs
    assert (image.name, image.dtype, image.shape) == ("image", "float32", ("batch", *SHAPE))
    assert [o.shape for o in artifact.spec.outputs] == [("batch", 5)]
    assert artifact.info["parameters"] > 0
    variant = build_variant(artifact, Chain(()), "onnx", BuildContext(artifact.spec))
    session = ort.InferenceSession(str(variant.file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    (got,) = session.run(None, {"image": keras_cnn["x"]})
    np.testing.assert_allclose(got, keras_cnn["y"], atol=1e-5)
    assert any(n.startswith("converted to ONNX with tf2onnx 1.17") and "(opset 18)" in n for n in variant.notes), \
        variant.notes
    assert variant.details["onnx-export"]["converter"] == "tf2onnx"


@needs_tf
def test_a_savedmodel_study_measures_variants_against_tensorflow(tmp_path: Path, keras_cnn: dict[str, Any]) -> None:
    """The normal path (bench: inspection in a child, the reference, each cell in its child): the tensorflow runtime
    is the baseline the reference and the speedups come from; int8-dynamic and fp16 run converted on ONNX Runtime;
    OpenVINO reads the SavedModel with its own frontend and says so."""
    out_json = tmp_path / "results.json"
    out = io.StringIO()
    code = main(["bench", str(keras_cnn["saved_zip"]), "--variants", "baseline,int8-dynamic,fp16", "--runtimes",
                 "tensorflow,onnxruntime", "--batch-sizes", "2", *FAST, "--json", str(out_json)], out=out)
    assert code == 0, out.getvalue()
    rows = {(r["variant"], r["runtime"]): r for r in json.loads(out_json.read_text())["results"]}
    assert rows[("int8-dynamic", "tensorflow")]["status"] == "n/a"
    for key in [("baseline", "tensorflow"), ("baseline", "onnxruntime"), ("int8-dynamic", "onnxruntime"),
                ("fp16", "onnxruntime")]:
        assert rows[key]["status"] == "ok", (key, rows[key]["error"])
    base = rows[("baseline", "tensorflow")]
    assert base["speedup_vs_baseline"] == 1.0
    assert base["accuracy"]["fidelity"]["max_abs"] == 0.0  # the reference is TensorFlow's own output
    assert base["settings"]["call"] == "serving signature"
    onnx = rows[("baseline", "onnxruntime")]
    assert onnx["accuracy"]["fidelity"]["max_abs"] < 1e-5
    assert onnx["speedup_vs_baseline"] > 0
    assert any("tf2onnx" in n for n in onnx["notes"])
    assert rows[("fp16", "onnxruntime")]["accuracy"]["fidelity"]["cosine"] > 0.99
    assert rows[("int8-dynamic", "onnxruntime")]["accuracy"]["fidelity"]["cosine"] > 0.9


@needs_tf
def test_openvino_reads_the_savedmodel_itself_and_records_it(tmp_path: Path, keras_cnn: dict[str, Any]) -> None:
    from engine.artifacts import intake
    from engine.optimizations.base import Chain
    from engine.optimizations.build import build_variant
    from engine.runtimes import get
    from engine.variants import BuildContext

    artifact = intake(keras_cnn["saved_zip"])
    variant = build_variant(artifact, Chain(()), "onnx", BuildContext(artifact.spec))
    assert variant.source == artifact.path
    runtime = get("openvino").create(1)
    with runtime.load(variant) as session:
        (got,) = session.fetch(session.run(session.prepare({"image": keras_cnn["x"]})))
        assert session.applied["model_source"] == "savedmodel"
    np.testing.assert_allclose(got, keras_cnn["y"], atol=1e-4)
    assert "OpenVINO read the SavedModel with its TensorFlow frontend" in variant.notes[-1]
    with get("openvino").create(1, {"tensorflow_frontend": False}).load(variant) as session:
        assert session.applied["model_source"] == "onnx"


@needs_tf
def test_a_savedmodel_without_a_serving_signature_is_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    from engine.artifacts import intake

    module = tf.Module()
    module.w = tf.Variable(tf.ones([4, 2]))
    folder = tmp_path / "nosig"
    tf.saved_model.save(module, str(folder), signatures={})
    with pytest.raises(UserError) as info:
        intake(_zip_folder(folder, tmp_path / "nosig.zip"))
    message = str(info.value)
    assert message.startswith("nosig.zip: the SavedModel has no serving signature 'serving_default' "
                              "(signatures: none)"), message
    assert "\n" not in message


@needs_tf
def test_a_keras_file_with_a_lambda_layer_is_refused_in_safe_mode(tmp_path: Path) -> None:
    import keras

    from engine.artifacts import intake

    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2)(x))
    model.save(str(tmp_path / "lambda.keras"))
    with pytest.raises(UserError) as info:
        intake(tmp_path / "lambda.keras")
    message = str(info.value)
    assert message.startswith("lambda.keras: the Keras file does not load in safe mode"), message
    assert "\n" not in message
