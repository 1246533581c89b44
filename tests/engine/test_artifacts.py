"""Model intake: formats judged from bytes, safe unpacking, content-addressed storage and the InputSpec read."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.artifacts import EXPORTED, HF, ONNX, TORCHSCRIPT, Artifact, detect_format, intake, load_artifact
from engine.errors import UserError
from engine.specs import BATCH_AXIS, DEFAULT_INT_RANGE, InputSpec
from tests.engine.test_safezip import make_zip, set_declared_size

MLP_PARAMS = 16 * 32 + 32 + 32 * 4 + 4


# --- fixtures: more small models, made once per module ------------------------------------------


@pytest.fixture(scope="module")
def onnx_ext_folder(mlp_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MLP saved with every weight in an external-data file beside the .onnx file."""
    import onnx

    folder = tmp_path_factory.mktemp("onnx-ext")
    onnx.save_model(onnx.load(str(mlp_onnx)), str(folder / "net.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="net.data", size_threshold=0)
    return folder


@pytest.fixture(scope="module")
def onnx_ext_zip(onnx_ext_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of net.onnx + net.data at the top level."""
    from tests.conftest import zip_folder

    return zip_folder(onnx_ext_folder, tmp_path_factory.mktemp("z") / "net.zip", prefix="")


@pytest.fixture(scope="module")
def onnx_ext_zip_top(onnx_ext_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same files under a top folder inside the zip."""
    from tests.conftest import zip_folder

    return zip_folder(onnx_ext_folder, tmp_path_factory.mktemp("z") / "net-top.zip", prefix="exported")


@pytest.fixture(scope="module")
def bert_flat_zip(bert_hf_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT zipped without a top folder: config.json and model.safetensors at the root."""
    dest = tmp_path_factory.mktemp("z") / "bert-flat.zip"
    with zipfile.ZipFile(bert_hf_zip) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename.split("/", 1)[1], src.read(info))
    return dest


@pytest.fixture(scope="module")
def scripted_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scripted (not traced) TorchScript model: it stores no example inputs."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()), str(path))
    return path


@pytest.fixture(scope="module")
def gather_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ids feed two embeddings (50 and 30 rows), plus a mask and a plain integer input no Gather indexes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tables = [numpy_helper.from_array(np.ones((rows, 4), np.float32), f"emb{rows}") for rows in (50, 30)]
    nodes = [
        helper.make_node("Gather", ["emb50", "ids"], ["a"]),
        helper.make_node("Gather", ["emb30", "ids"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
        helper.make_node("Mul", ["ab", "m3"], ["out"]),
        helper.make_node("Identity", ["count"], ["count_out"]),
    ]
    axis = numpy_helper.from_array(np.array([2], np.int64), "axis")
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("count", TensorProto.INT32, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 4]),
         helper.make_tensor_value_info("count_out", TensorProto.INT32, [None])],
        [*tables, axis],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("onnx") / "gather.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def embedding_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token classifier exported by torch: the exporter's Gather on the embedding table gives the vocab."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(77, 8), torch.nn.Linear(8, 2)).eval()
    path = tmp_path_factory.mktemp("onnx") / "embed.onnx"
    torch.onnx.export(model, (torch.zeros(2, 5, dtype=torch.int64),), str(path), dynamo=False,
                      input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}})
    return path


# --- helpers ---------------------------------------------------------------------------------------


def data_folder() -> Path:
    return Path(os.environ["PARETOSCOPE_DATA_DIR"])


def stored_folders() -> list[Path]:
    models = data_folder() / "models"
    return sorted(models.iterdir()) if models.is_dir() else []


def reject(path: Path, match: str, **kwargs: object) -> str:
    """Intake must refuse the file with a one-line UserError and leave nothing behind anywhere."""
    data = data_folder()
    around = {p.name for p in data.parent.iterdir()} - {data.name}
    with pytest.raises(UserError, match=match) as info:
        intake(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name}: ")
    assert stored_folders() == [], "a rejected model left files (or a staging folder) in the data folder"
    if data.exists():
        assert [p.name for p in data.iterdir()] in ([], ["models"])
    assert {p.name for p in data.parent.iterdir()} - {data.name} == around, "intake wrote beside the data folder"
    return message


def zip_with(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    return make_zip(tmp_path / name, members)


# --- format detection from bytes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "name", "expected"),
    [
        ("mlp_onnx", "model.onnx", ONNX),
        ("mlp_onnx", "model.bin", ONNX),
        ("mlp_onnx", "model.pt", ONNX),
        ("onnx_ext_zip", "model.zip", ONNX),
        ("onnx_ext_zip", "model.onnx", ONNX),
        ("onnx_ext_zip_top", "upload", ONNX),
        ("mlp_torchscript", "model.pt", TORCHSCRIPT),
        ("mlp_torchscript", "model.onnx", TORCHSCRIPT),
        ("mlp_pt2", "model.pt2", EXPORTED),
        ("mlp_pt2", "model.pt", EXPORTED),
        ("bert_hf_zip", "bert.zip", HF),
        ("bert_hf_zip", "model.onnx", HF),
        ("bert_flat_zip", "model.pt2", HF),
    ],
)
def test_format_is_judged_from_bytes_not_the_name(request: pytest.FixtureRequest, copy_to, fixture: str,  # type: ignore[no-untyped-def]
                                                   name: str, expected: str) -> None:
    path = copy_to(request.getfixturevalue(fixture), name)
    assert detect_format(path) == expected


# --- intake of each format and the spec it reads ---------------------------------------------------


def test_onnx_with_a_dynamic_batch(mlp_onnx: Path, copy_to) -> None:  # type: ignore[no-untyped-def]
    artifact = intake(copy_to(mlp_onnx, "weights.bin"))
    sha = hashlib.sha256(mlp_onnx.read_bytes()).hexdigest()
    assert artifact.format == ONNX
    assert artifact.sha256 == sha
    assert artifact.path == data_folder().resolve() / "models" / sha / "model.onnx"
    assert artifact.path.read_bytes() == mlp_onnx.read_bytes()
    assert artifact.size_bytes == mlp_onnx.stat().st_size
    (x,) = artifact.spec.inputs
    assert (x.name, x.dtype, x.shape, x.value_range) == ("x", "float32", (BATCH_AXIS, 16), None)
    assert [o.describe() for o in artifact.spec.outputs] == ["logits:float32[batch,4]"]
    assert artifact.spec.fixed_batch is None
    assert artifact.info["parameters"] == MLP_PARAMS
    assert artifact.info["external_data"] is False
    assert artifact.info["opset"] >= 13


def test_onnx_with_a_fixed_batch(mlp_onnx_fixed: Path) -> None:
    artifact = intake(mlp_onnx_fixed)
    assert artifact.spec.inputs[0].shape == (1, 16)
    assert artifact.spec.fixed_batch == 1
    with pytest.raises(UserError, match="fixed batch dimension of 1; batch size 4 cannot run"):
        artifact.spec.shapes(4)


@pytest.mark.parametrize("fixture", ["onnx_ext_zip", "onnx_ext_zip_top"])
def test_onnx_zip_with_external_data(request: pytest.FixtureRequest, onnx_ext_folder: Path, mlp_onnx: Path,
                                     fixture: str) -> None:
    import onnx

    artifact = intake(request.getfixturevalue(fixture))
    assert artifact.format == ONNX
    assert artifact.path.name == "net.onnx"
    assert sorted(p.name for p in artifact.folder.iterdir()) == ["net.data", "net.onnx"]
    assert artifact.folder.parent == data_folder().resolve() / "models" / artifact.sha256
    assert artifact.info["external_data"] is True
    assert artifact.info["parameters"] == MLP_PARAMS
    assert artifact.spec.describe() == "x:float32[batch,16]"
    assert artifact.size_bytes == sum(p.stat().st_size for p in onnx_ext_folder.iterdir())
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(artifact.path)).graph.initializer}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(mlp_onnx)).graph.initializer}
    assert stored.keys() == original.keys()
    for name, value in original.items():
        np.testing.assert_array_equal(stored[name], value)


def test_gather_indices_take_the_embedding_rows_as_their_range(gather_onnx: Path) -> None:
    spec = intake(gather_onnx, seq_len=12).spec
    by_name = {t.name: t for t in spec.inputs}
    assert by_name["ids"].bound == (0, 30)  # the smaller of the two tables it indexes
    # token ids: the table without its first vocab/20 rows, where tokenizers keep [PAD], [CLS] and the like
    assert by_name["ids"].value_range == (1, 30) and by_name["ids"].role == "input_ids"
    assert by_name["ids"].shape == (BATCH_AXIS, "seq")
    assert by_name["attention_mask"].value_range == (0, 2) and by_name["attention_mask"].role == "attention_mask"
    assert by_name["count"].value_range == DEFAULT_INT_RANGE and by_name["count"].role is None
    assert spec.shapes(3) == {"ids": (3, 12), "attention_mask": (3, 12), "count": (3,)}


def test_gather_range_from_a_torch_exported_embedding(embedding_onnx: Path) -> None:
    spec = intake(embedding_onnx).spec
    assert spec.describe() == "input_ids:int64[batch,sequence]{3,77}"
    assert spec.inputs[0].bound == (0, 77)


def test_torchscript_reads_its_traced_inputs(mlp_torchscript: Path) -> None:
    artifact = intake(mlp_torchscript)
    assert artifact.format == TORCHSCRIPT
    assert artifact.path.name == "model.pt"
    assert artifact.spec.describe() == "input:float32[batch,16]"
    assert [o.describe() for o in artifact.spec.outputs] == ["output_0:float32[batch,4]"]
    assert artifact.info["parameters"] == MLP_PARAMS


def test_scripted_torchscript_needs_an_explicit_spec(scripted_pt: Path) -> None:
    reject(scripted_pt, r"stores no example inputs; give them with --input-spec 'x:float32\[B,3,224,224\]'")
    artifact = intake(scripted_pt, input_spec="x:float32[B,6]")
    assert artifact.spec.describe() == "x:float32[batch,6]"
    assert [o.describe() for o in artifact.spec.outputs] == ["output_0:float32[batch,3]"]


@pytest.mark.parametrize(
    ("fixture", "inputs", "outputs"),
    [("mlp_pt2", "input:float32[batch,16]", "output_0:float32[batch,4]"),
     ("cnn_pt2", "input:float32[batch,3,16,16]", "output_0:float32[batch,5]")],
)
def test_pt2_reads_its_example_inputs(request: pytest.FixtureRequest, fixture: str, inputs: str,
                                      outputs: str) -> None:
    artifact = intake(request.getfixturevalue(fixture))
    assert artifact.format == EXPORTED
    assert artifact.path.name == "model.pt2"
    assert artifact.spec.describe() == inputs
    assert [o.describe() for o in artifact.spec.outputs] == [outputs]


def test_hf_zip_with_a_top_folder(bert_hf_zip: Path) -> None:
    artifact = intake(bert_hf_zip)
    assert artifact.format == HF
    assert artifact.path.is_dir()
    assert {"config.json", "model.safetensors"} <= {p.name for p in artifact.path.iterdir()}
    assert artifact.spec.describe() == (
        "input_ids:int64[batch,sequence]{6,119};attention_mask:int64[batch,sequence]{1,2};"
        "token_type_ids:int64[batch,sequence]{0,2}"
    )  # no tokenizer files: token ids leave out the first vocab/20 and the last vocab/100
    # no --seq-len: the default sequence must fit the model's 64 positions
    assert artifact.spec.seq_len == 64
    assert [o.describe() for o in artifact.spec.outputs] == ["logits:float32[batch,3]"]
    assert artifact.info["architecture"] == "BertForSequenceClassification"
    assert artifact.info["max_position_embeddings"] == 64


def test_hf_zip_without_a_top_folder_and_seq_len(bert_flat_zip: Path) -> None:
    artifact = intake(bert_flat_zip, seq_len=16)
    assert artifact.format == HF
    assert artifact.spec.shapes(2) == {"input_ids": (2, 16), "attention_mask": (2, 16), "token_type_ids": (2, 16)}
    # stored once; each call's --seq-len applies to what it returns, and no --seq-len means the default again
    assert intake(bert_flat_zip, seq_len=8).spec.seq_len == 8
    assert intake(bert_flat_zip).spec.seq_len == 64
    assert len(stored_folders()) == 1
    reject_seq = pytest.raises(UserError, match=r"--seq-len 65 is longer than the model's max_position_embeddings "
                                                r"\(64\); use --seq-len 64 or less")
    with reject_seq:
        intake(bert_flat_zip, seq_len=65)


def test_hf_seq_len_longer_than_the_positions_is_refused(bert_hf_zip: Path) -> None:
    reject(bert_hf_zip, r"--seq-len 100 is longer than the model's max_position_embeddings \(64\)", seq_len=100)


def test_hf_explicit_spec(bert_hf_zip: Path) -> None:
    text = "input_ids:int64[B,S]{0,120};attention_mask:int64[B,S]{0,2};token_type_ids:int64[B,S]{0,2}"
    spec = intake(bert_hf_zip, input_spec=text, seq_len=8).spec
    assert spec.inputs == InputSpec.parse(text).inputs
    assert spec.seq_len == 8
    assert [o.describe() for o in spec.outputs] == ["logits:float32[batch,3]"]
    with pytest.raises(UserError, match=r"does not run on inputs .*\{0,1000\}.*index out of range.*; fix --input-spec"):
        intake(bert_hf_zip, input_spec=text.replace("{0,120}", "{0,1000}"), seq_len=8)


# --- explicit specs that do or do not match the model ---------------------------------------------


def test_explicit_spec_that_matches_onnx(mlp_onnx: Path) -> None:
    spec = intake(mlp_onnx, input_spec="x:float32[4,16]").spec
    assert spec.fixed_batch == 4  # fixing a dynamic batch is allowed
    assert [o.name for o in spec.outputs] == ["logits"]


@pytest.mark.parametrize("fixture", ["mlp_onnx", "mlp_torchscript", "mlp_pt2"])
@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("x:float32[B,16,1]", r"--input-spec 'x:float32\[batch,16,1\]' has rank 3 but the model's input '\w+' is"),
        ("x:float32[B,15]", r"--input-spec 'x:float32\[batch,15\]' does not match the model's input \w+:float32"),
        ("x:float32[B,16];y:float32[B,16]", r"--input-spec gives 2 inputs but the model takes 1 \("),
    ],
)
def test_explicit_spec_that_does_not_match(request: pytest.FixtureRequest, fixture: str, spec: str,
                                           match: str) -> None:
    message = reject(request.getfixturevalue(fixture), match, input_spec=spec)
    assert message.endswith("fix --input-spec or leave it out")


@pytest.mark.parametrize(
    ("fixture", "spec", "match"),
    [
        ("mlp_onnx", "y:float32[B,16]", r"names inputs y but the model's inputs are x"),
        ("mlp_onnx", "x:int64[B,16]", r"has dtype int64 but the model's input 'x' is x:float32\[batch,16\]"),
        ("mlp_onnx", "x:float32[B,S]", r"'x:float32\[batch,S\]' does not match the model's input"),
        ("mlp_onnx_fixed", "x:float32[B,16]", r"does not match the model's input x:float32\[1,16\]"),
        ("mlp_pt2", "x:float16[B,16]", r"has dtype float16 but the model's input 'input'"),
        ("mlp_pt2", "x:float32[B,S]", r"does not match the model's input input:float32\[batch,16\]"),
        ("mlp_torchscript", "x:float32[B,S]", r"does not run on inputs x:float32\[batch,S\] \(.*cannot be multiplied"),
        ("mlp_torchscript", "x:int64[B,16]", r"does not run on inputs x:int64.*same dtype.*; fix --input-spec"),
        ("scripted_pt", "x:float32[B,5]", r"does not run on inputs x:float32\[batch,5\] .*; fix --input-spec"),
    ],
)
def test_explicit_spec_the_model_cannot_take(request: pytest.FixtureRequest, fixture: str, spec: str,
                                             match: str) -> None:
    reject(request.getfixturevalue(fixture), match, input_spec=spec)


def test_explicit_spec_with_a_positional_name_is_fine_for_torch(mlp_pt2: Path) -> None:
    assert intake(mlp_pt2, input_spec="features:float32[B,16]").spec.names == ["features"]


def test_pt2_guard_failures_are_user_errors(mlp_pt2: Path) -> None:
    from engine import modules

    artifact = intake(mlp_pt2)
    module = modules.load_module(artifact.path, EXPORTED, artifact.spec)
    with pytest.raises(UserError, match=r"does not run on inputs input:float32\[batch,S\]"):
        modules.probe_outputs(module, InputSpec.parse("input:float32[B,S]", seq_len=8), "mlp.pt2")


# --- bad input ----------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    reject(tmp_path / "model.onnx", r"the file is empty; upload the model file itself")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such file; give the path of a model file"):
        intake(tmp_path / "nope.onnx")


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    message = reject(path, r"(unknown model format|not a valid ONNX model)")
    assert "upload ONNX" in message or "export it again" in message


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("this is not a model\n")
    reject(path, r"unknown model format; upload ONNX \(.onnx or a zip with its external data\), TorchScript")


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.99])
def test_truncated_onnx(mlp_onnx: Path, tmp_path: Path, fraction: float) -> None:
    data = mlp_onnx.read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    reject(path, r"not a valid ONNX model \(truncated or corrupt.*\); export it again")


def test_zip_renamed_onnx_that_holds_no_model(tmp_path: Path) -> None:
    path = zip_with(tmp_path, "model.onnx", {"README.txt": b"hello", "weights/w.bin": b"\0" * 10})
    reject(path, r"the zip holds no model; zip one .onnx file \(with its external data\) or a Hugging Face")


def test_zip_with_two_onnx_files(tmp_path: Path, mlp_onnx: Path) -> None:
    onnx_bytes = mlp_onnx.read_bytes()
    path = zip_with(tmp_path, "two.zip", {"a.onnx": onnx_bytes, "b/b.onnx": onnx_bytes})
    reject(path, r"the zip holds 2 .onnx files; zip one model with its external data")


def test_broken_zip(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(range(200)))
    reject(path, r"not a readable zip archive .*; re-create the file")


@pytest.mark.parametrize("kind", ["zip", "legacy", "legacy-protocol-4"])
def test_torch_save_pickles_are_refused(tmp_path: Path, kind: str) -> None:
    import torch

    path = tmp_path / "checkpoint.pt"
    state = torch.nn.Linear(2, 2).state_dict()
    if kind == "zip":
        torch.save(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=False,
                   pickle_protocol=4 if kind.endswith("4") else 2)
    reject(path, r"\(a pickle\)|Python pickle.*could run code; save the model with torch.jit.save, torch.export.save")


@pytest.mark.parametrize("top", ["tiny-bert/", ""])
def test_hf_zip_with_only_bin_weights(tmp_path: Path, top: str) -> None:
    config = json.dumps({"model_type": "bert", "vocab_size": 10}).encode()
    path = zip_with(tmp_path, "bert.zip", {f"{top}config.json": config, f"{top}pytorch_model.bin": b"\x80\x02}q."})
    reject(path, r"has only pickled weights \(.bin\); convert them to safetensors .*safe_serialization=True")


def test_hf_zip_without_weights(tmp_path: Path) -> None:
    path = zip_with(tmp_path, "bert.zip", {"m/config.json": b"{}", "m/vocab.txt": b"a\nb\n"})
    reject(path, r"has config.json but no \*.safetensors weights; save the model with save_pretrained")


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("remote-code", r"architecture \(evilnet\) is defined by its own Python code \(auto_map / \*.py\), which "
                        r"Paretoscope never runs"),
        ("garbage-weights", r"cannot be built from its safetensors \(.*header.*\); save it again with save_pretrained"),
        ("truncated-weights", r"cannot be built from its safetensors"),
        ("zero-vocab", r"config.json has vocab_size 0; it must be a positive integer"),
        ("config-not-an-object", r"config.json is not a JSON object; save the model with save_pretrained"),
    ],
)
def test_hf_folders_transformers_cannot_build(tmp_path: Path, bert_hf_zip: Path, case: str, match: str) -> None:
    with zipfile.ZipFile(bert_hf_zip) as archive:
        config = json.loads(archive.read("tiny-bert/config.json"))
        weights = archive.read("tiny-bert/model.safetensors")
    if case == "remote-code":  # an architecture transformers lacks, offered as remote code: never run
        config.update(model_type="evilnet", architectures=["EvilModel"], auto_map={"AutoModel": "evil.EvilModel"})
    elif case == "garbage-weights":
        weights = b"\xff" * 64
    elif case == "truncated-weights":
        weights = weights[: len(weights) // 2]
    elif case == "zero-vocab":
        config["vocab_size"] = 0
    elif case == "config-not-an-object":
        config = [config]
    path = zip_with(tmp_path, "bert.zip", {"config.json": json.dumps(config).encode(), "model.safetensors": weights})
    reject(path, match)


@pytest.mark.parametrize(
    ("member", "match"),
    [
        ("../{evil}", r"member '../evil-\w+.txt' points outside the archive \('..'\); re-create the archive"),
        ("model/../../../{evil}", r"points outside the archive"),
        ("/tmp/{evil}", r"has an absolute path; re-create the archive with relative paths"),
        ("C:/{evil}", r"has an absolute path"),
        ("..\\..\\{evil}", r"has a backslash in its path; re-create the archive with '/' paths"),
    ],
)
def test_zip_slip_members_are_refused_and_never_written(tmp_path: Path, mlp_onnx: Path, member: str,
                                                        match: str) -> None:
    evil = f"evil-{uuid.uuid4().hex}.txt"
    path = zip_with(tmp_path, "model.onnx", {"model.onnx": mlp_onnx.read_bytes(), member.format(evil=evil): b"pwned"})
    reject(path, match)
    # wherever the member could have landed: the data folder, each folder above it, the temp folder
    places = [data_folder(), *data_folder().parents, Path(tempfile.gettempdir()), Path("/tmp")]
    assert not [p for p in places if (p / evil).exists()]
    assert not list(tmp_path.rglob(evil))


def test_symlink_member_is_refused(tmp_path: Path, mlp_onnx: Path) -> None:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", mlp_onnx.read_bytes())
        link = zipfile.ZipInfo("model.data")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    reject(path, r"member 'model.data' is a symbolic link; zip the real files instead")


def test_more_than_ten_thousand_members(tmp_path: Path, mlp_onnx: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", mlp_onnx.read_bytes())
        for i in range(10_000):
            archive.writestr(f"junk/{i}", b"")
    reject(path, r"the archive has 10001 members, more than 10000; zip only the model folder")


def test_zip_bomb_is_stopped_by_the_cap(tmp_path: Path, mlp_onnx: Path) -> None:
    path = zip_with(tmp_path, "model.zip", {"model.onnx": mlp_onnx.read_bytes(), "padding.bin": b"\0" * (3 << 20)})
    assert path.stat().st_size < 64 << 10
    reject(path, r"unpacks to more than 1.0 MiB \(a zip bomb or a too-large model\); raise "
                 r"PARETOSCOPE_MAX_UNPACKED_BYTES", max_unpacked=1 << 20)
    assert intake(path, max_unpacked=8 << 20).format == ONNX  # the same file fits a larger cap


def test_zip_bomb_whose_header_understates_its_size(tmp_path: Path, mlp_onnx: Path) -> None:
    path = zip_with(tmp_path, "model.zip", {"model.onnx": mlp_onnx.read_bytes(), "padding.bin": b"\0" * (3 << 20)})
    set_declared_size(path, "padding.bin", 1000)
    reject(path, r"(cannot read member 'padding.bin' .*; re-create the archive|unpacks to more than)",
           max_unpacked=1 << 20)


def test_torchscript_archive_bomb_is_stopped_by_the_cap(tmp_path: Path, mlp_torchscript: Path, copy_to) -> None:  # type: ignore[no-untyped-def]
    path = copy_to(mlp_torchscript, "model.pt")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mlp/extra/padding.bin", b"\0" * (3 << 20))
    assert detect_format(path) == TORCHSCRIPT
    reject(path, r"unpacks to more than 1.0 MiB", max_unpacked=1 << 20)


def _with_location(source: Path, dest: Path, location: str) -> Path:
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize("location", ["../net.data", "../../../../etc/passwd", "/etc/passwd"])
def test_external_data_outside_the_folder(tmp_path: Path, onnx_ext_folder: Path, location: str) -> None:
    onnx_path = _with_location(onnx_ext_folder / "net.onnx", tmp_path / "net.onnx", location)
    (tmp_path / "net.data").write_bytes((onnx_ext_folder / "net.data").read_bytes())  # where '../' would reach
    reject(onnx_path, r"external data '.*' of tensor '.*' lies outside the model's folder; keep the data files")
    zipped = zip_with(tmp_path, "net.zip", {"m/net.onnx": onnx_path.read_bytes(),
                                           "m/net.data": (onnx_ext_folder / "net.data").read_bytes(),
                                           "net.data": (onnx_ext_folder / "net.data").read_bytes()})
    reject(zipped, r"lies outside the model's folder")


def test_external_data_missing(tmp_path: Path, onnx_ext_folder: Path) -> None:
    path = tmp_path / "net.onnx"
    path.write_bytes((onnx_ext_folder / "net.onnx").read_bytes())
    reject(path, r"external data file 'net.data' is missing; upload a zip holding the .onnx file and its data files")
    zipped = zip_with(tmp_path, "net.zip", {"net.onnx": path.read_bytes()})
    reject(zipped, r"external data file 'net.data' is missing")


# --- content addressing -------------------------------------------------------------------------------


def test_same_bytes_are_stored_once(mlp_onnx: Path, copy_to) -> None:  # type: ignore[no-untyped-def]
    first = intake(mlp_onnx)
    model_inode = first.path.stat().st_ino
    second = intake(copy_to(mlp_onnx, "renamed.bin"))
    assert second == first
    assert stored_folders() == [first.path.parent]
    assert first.path.stat().st_ino == model_inode  # the stored file was not written again
    assert [p.name for p in first.path.parent.iterdir() if p.name.startswith(".")] == []
    # an explicit spec for stored bytes applies to that call only and leaves the stored files alone
    explicit = intake(mlp_onnx, input_spec="x:float32[2,16]")
    assert explicit.spec.fixed_batch == 2 and explicit.path == first.path
    assert first.path.stat().st_ino == model_inode
    assert intake(mlp_onnx).spec.fixed_batch is None


def test_different_bytes_get_different_folders(mlp_onnx: Path, mlp_onnx_fixed: Path) -> None:
    a, b = intake(mlp_onnx), intake(mlp_onnx_fixed)
    assert a.sha256 != b.sha256
    assert stored_folders() == sorted([a.path.parent, b.path.parent])


@pytest.mark.parametrize("fixture", ["mlp_onnx", "onnx_ext_zip", "mlp_torchscript", "bert_hf_zip"])
def test_stored_artifact_json_round_trips(request: pytest.FixtureRequest, fixture: str) -> None:
    artifact = intake(request.getfixturevalue(fixture))
    folder = data_folder().resolve() / "models" / artifact.sha256
    assert load_artifact(folder) == artifact
    assert Artifact.from_json(json.loads(json.dumps(artifact.to_json()))) == artifact
    assert [p.name for p in (data_folder() / "models").iterdir()] == [artifact.sha256]  # no staging left


def test_hf_safetensors_missing_weights_are_refused(bert_hf_zip: Path, tmp_path: Path) -> None:
    """transformers would fill missing weights with random values: the upload is refused instead."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "partial"
    with zipfile.ZipFile(bert_hf_zip) as archive:
        archive.extractall(folder)
    top = next(p for p in folder.iterdir() if p.is_dir())
    weights = load_file(str(top / "model.safetensors"))
    dropped = sorted(k for k in weights if "classifier" in k)
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(top / "model.safetensors"),
              metadata={"format": "pt"})
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as out:
        for path in sorted(top.rglob("*")):
            out.write(path, path.relative_to(folder).as_posix())
    message = reject(partial,
                     r"safetensors lack 2 weight\(s\) the config needs \(classifier\.bias, classifier\.weight\)")
    assert "save_pretrained" in message


def test_hf_inputs_carry_the_bounds_their_embeddings_accept(bert_hf_zip: Path) -> None:
    spec = intake(bert_hf_zip).spec
    bounds = {t.name: t.bound for t in spec.inputs}
    assert bounds == {"input_ids": (0, 120), "attention_mask": (0, 2), "token_type_ids": (0, 2)}
    assert InputSpec.from_json(spec.to_json()) == spec  # bounds survive the database


def test_a_bare_encoder_without_pooler_weights_is_accepted(tmp_path: Path) -> None:
    """Sentence encoders are often saved without the pooler, which feeds no output measured (last_hidden_state)."""
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    folder = tmp_path / "encoder"
    transformers.BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    weights = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("pooler.") for k in weights)
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    archive = tmp_path / "encoder.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            out.write(path, path.relative_to(tmp_path).as_posix())
    assert intake(archive).format == HF
