"""Sizes checked before anything is allocated: a Hugging Face config against the limits and its own weights,
an archive's declared sizes and compression ratios, an .npy header's shape against the bytes it comes with."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import modules, safezip
from engine.artifacts import HF, intake
from engine.data import load_npz
from engine.errors import UserError
from engine.specs import InputSpec
from tests.engine.test_safezip import make_zip, set_declared_size

MLP = InputSpec.parse("x:float32[B,16]")
# The upload that passed 6 GB during inspection: a 63 KB zip whose config asks for 2,000 layers of width 4,096.
HUGE = {"num_hidden_layers": 2000, "hidden_size": 4096, "intermediate_size": 16384, "num_attention_heads": 64}
# About 300 million parameters (1.2 GB in float32): under the memory limit, far beyond the tiny weights beside it.
LARGE = {"num_hidden_layers": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16}


def one_line(info: pytest.ExceptionInfo[UserError], name: str) -> str:
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: "), message
    return message


# --- Hugging Face: config.json judged before transformers builds anything -------------------------------


def bert_members(bert_hf_zip: Path) -> tuple[dict[str, Any], bytes]:
    with zipfile.ZipFile(bert_hf_zip) as archive:
        return (json.loads(archive.read("tiny-bert/config.json")),
                archive.read("tiny-bert/model.safetensors"))


def bert_zip(tmp_path: Path, bert_hf_zip: Path, name: str = "bert.zip", weights: bytes | None = None,
             **changes: Any) -> Path:
    config, stored = bert_members(bert_hf_zip)
    config.update(changes)
    return make_zip(tmp_path / name, {"tiny-bert/config.json": json.dumps(config).encode(),
                                      "tiny-bert/model.safetensors": stored if weights is None else weights})


@pytest.fixture
def never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers must not be asked to build the model: the refusal comes first."""
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_hf was called: the model would have been allocated")

    monkeypatch.setattr(modules, "load_hf", fail)


def test_the_63_kb_zip_asking_for_2000_layers_is_refused_in_the_child(tmp_path: Path, bert_hf_zip: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported case, through the inspecting child as the dashboard runs it: refused by the estimate, not by
    passing the child's memory limit."""
    from engine.inspection import inspect_model

    monkeypatch.setenv("PARETOSCOPE_INSPECT_MEMORY_MB", "3000")
    path = bert_zip(tmp_path, bert_hf_zip, "huge.zip", **HUGE)
    assert path.stat().st_size < 100_000
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        inspect_model(path)
    assert time.monotonic() - started < 60
    message = one_line(info, "huge.zip")
    assert "config.json describes a model of about 402.7 billion parameters (1,500.0 GiB of weights), more than " \
           "the inspection's memory limit of 3000 MB (PARETOSCOPE_INSPECT_MEMORY_MB)" in message, message


def test_a_config_beyond_the_memory_limit_is_refused_before_allocating(tmp_path: Path, bert_hf_zip: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      never_built: None) -> None:
    monkeypatch.setenv("PARETOSCOPE_INSPECT_MEMORY_MB", "1000")
    path = bert_zip(tmp_path, bert_hf_zip, **LARGE)
    with pytest.raises(UserError, match=r"about 302\.2 million parameters \(1\.1 GiB of weights\), more than the "
                                        r"inspection's memory limit of 1000 MB") as info:
        intake(path)
    one_line(info, "bert.zip")


def test_half_precision_weights_count_half(tmp_path: Path, bert_hf_zip: Path, monkeypatch: pytest.MonkeyPatch,
                                          never_built: None) -> None:
    """transformers loads a model in the dtype its config names: bfloat16 takes half the memory of float32."""
    monkeypatch.setenv("PARETOSCOPE_INSPECT_MEMORY_MB", "1000")
    path = bert_zip(tmp_path, bert_hf_zip, dtype="bfloat16", **LARGE)
    with pytest.raises(UserError, match=r"but its safetensors hold [\d,]+ values; upload the complete folder"):
        intake(path)  # 0.6 GiB fits the limit: what refuses it is the disagreement with its weights


def test_parameter_cap_from_the_environment(tmp_path: Path, bert_hf_zip: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSCOPE_MAX_MODEL_PARAMS", "10000")
    with pytest.raises(UserError, match=r"describes a model of about 2[\d,]+ parameters, more than "
                                        r"PARETOSCOPE_MAX_MODEL_PARAMS \(10,000\); raise it if") as info:
        intake(bert_hf_zip)
    one_line(info, bert_hf_zip.name)
    monkeypatch.setenv("PARETOSCOPE_MAX_MODEL_PARAMS", "1e9")
    assert intake(bert_hf_zip).format == HF
    monkeypatch.setenv("PARETOSCOPE_MAX_MODEL_PARAMS", "lots")
    with pytest.raises(UserError, match=r"PARETOSCOPE_MAX_MODEL_PARAMS is 'lots'; set it to a positive number"):
        modules.max_model_params()


def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(tmp_path: Path, bert_hf_zip: Path,
                                                                          never_built: None) -> None:
    """Under every limit, but transformers would fill 300 million missing values with random numbers."""
    path = bert_zip(tmp_path, bert_hf_zip, **LARGE)
    with pytest.raises(UserError, match=r"config.json describes a model of about 302\.2 million parameters but "
                                        r"its safetensors hold 2[\d,]+ values; upload the complete folder written "
                                        r"by save_pretrained") as info:
        intake(path)
    one_line(info, "bert.zip")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_attention_heads": 0}, r"config.json has num_attention_heads 0; it must be a positive integer"),
        ({"hidden_size": "32"}, r"config.json has hidden_size '32'; it must be a positive integer"),
        ({"num_hidden_layers": True}, r"config.json has num_hidden_layers True; it must be a positive integer"),
        ({"type_vocab_size": -1}, r"config.json has type_vocab_size -1"),
        ({"id2label": 1.5}, r"config.json has id2label 1.5; it must be an object"),
        ({"model_type": ["bert"]}, r"config.json has model_type \['bert'\]; it must be a name such as 'bert'"),
        ({"dtype": 7}, r"config.json has dtype 7; it must name a torch dtype such as 'float32'"),
        ({"dtype": "x"}, r"config.json has dtype 'x'; it must name a torch dtype"),
        ({"architectures": [None]}, r"config.json has architectures \[None\]; it must be a list of class names"),
        ({"pad_token_id": 120}, r"config.json has pad_token_id 120, outside its vocabulary of 120 tokens"),
    ],
)
def test_config_values_transformers_would_trip_on(tmp_path: Path, bert_hf_zip: Path, never_built: None,
                                                  changes: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        intake(bert_zip(tmp_path, bert_hf_zip, **changes))
    one_line(info, "bert.zip")


def test_an_architecture_of_another_model_kind_is_not_used(tmp_path: Path, bert_hf_zip: Path) -> None:
    """A BERT config naming a GPT-2 head: the class for the config is built, not one that cannot read it."""
    artifact = intake(bert_zip(tmp_path, bert_hf_zip, architectures=["GPT2LMHeadModel"]))
    assert artifact.info["architecture"] == "BertModel"


def _safetensors(header: dict[str, Any], data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (_safetensors({}, b"", length=2**40), r"its header length 1,099,511,627,776 exceeds the file's"),
        (b"\x05\x00\x00", r"the file is shorter than its 8-byte header length"),
        (_safetensors({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}, b"\0" * 16),
         r"tensor 'w' of shape \[1000000, 1000000\] and dtype F32 needs 4,000,000,000,000 bytes but its header "
         r"gives it 16"),
        (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**40]}}, b"\0" * 16),
         r"tensor 'w' has data offsets \[0, 1099511627776\] outside the file"),
        (_safetensors({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16),
         r"tensor 'w' has shape \[-4\] in its header"),
        (_safetensors({"w": {"dtype": "X9", "shape": [10**9], "data_offsets": [0, 16]}}, b"\0" * 16),
         r"tensor 'w' of shape \[1000000000\] holds more values than its 16 bytes can"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00{\"a\"", r"its header is not valid JSON"),
        (_safetensors([], b""), r"its header is not a JSON object"),  # type: ignore[arg-type]
    ],
)
def test_safetensors_headers_are_checked_against_their_file(tmp_path: Path, bert_hf_zip: Path, never_built: None,
                                                            weights: bytes, match: str) -> None:
    with pytest.raises(UserError, match=r"bert.zip: the Hugging Face model cannot be built from its safetensors "
                                        r"\(model.safetensors: .*\); save it again with save_pretrained") as info:
        intake(bert_zip(tmp_path, bert_hf_zip, weights=weights))
    message = one_line(info, "bert.zip")
    assert re.search(match, message), message


def test_the_estimate_is_a_lower_bound_close_to_the_real_count() -> None:
    """Too high would refuse real models: for common architectures it stays under their real count, and near it."""
    import torch
    import transformers

    configs = {
        "bert": transformers.BertConfig(),
        "distilbert": transformers.DistilBertConfig(),
        "albert": transformers.AlbertConfig(),  # shares one layer's weights across its 12
        "gpt2": transformers.GPT2Config(),
        "t5": transformers.T5Config(),
        "llama-gqa": transformers.LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                              num_attention_heads=8, num_key_value_heads=2, vocab_size=32000),
        "mixtral": transformers.MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                              num_local_experts=4, vocab_size=1000),
    }
    for name, config in configs.items():
        with torch.device("meta"):
            model = transformers.AutoModel.from_config(config)
        real = sum(p.numel() for p in model.parameters())
        estimate = modules.estimate_hf_parameters(config.to_dict())
        assert real / 2 <= estimate <= real * 1.05, (name, estimate, real)


# --- archives: declared sizes and ratios, before anything is read ------------------------------------------


def test_the_default_cap_is_4_gib_and_the_environment_changes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARETOSCOPE_MAX_UNPACKED_BYTES", raising=False)
    assert safezip.max_unpacked_bytes() == 4 * 1024**3
    monkeypatch.setenv("PARETOSCOPE_MAX_UNPACKED_BYTES", "12345")
    assert safezip.max_unpacked_bytes() == 12345
    monkeypatch.setenv("PARETOSCOPE_MAX_UNPACKED_BYTES", "16G")
    with pytest.raises(UserError, match=r"PARETOSCOPE_MAX_UNPACKED_BYTES is '16G'; set it to a positive number"):
        safezip.max_unpacked_bytes()


def test_declared_sizes_past_the_cap_are_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                mlp_onnx: Path) -> None:
    path = make_zip(tmp_path / "claims.zip", {"model.onnx": mlp_onnx.read_bytes(), "w.bin": b"\1" * 1000})
    set_declared_size(path, "w.bin", 3 << 30)  # what the central directory says; the data holds 1000 bytes

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was read")

    with zipfile.ZipFile(path) as archive:
        monkeypatch.setattr(archive, "open", no_reading)
        with pytest.raises(UserError, match=r"claims.zip: unpacks to more than 1.0 GiB \(a zip bomb or a too-large "
                                            r"model\); raise PARETOSCOPE_MAX_UNPACKED_BYTES if it is genuine"):
            safezip.checked_members(archive, "claims.zip", max_bytes=1 << 30)
    monkeypatch.setenv("PARETOSCOPE_MAX_UNPACKED_BYTES", str(1 << 30))
    with pytest.raises(UserError, match=r"unpacks to more than 1.0 GiB"):
        intake(path)  # the environment's cap, applied when the format is detected


def test_a_large_member_expanding_like_a_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safezip, "RATIO_MIN_BYTES", 1 << 20)  # the real threshold is 64 MiB: same rule, less disk
    zeros = b"\0" * (4 << 20)
    bomb = make_zip(tmp_path / "bomb.zip", {"small.bin": b"\0" * (512 << 10), "weights.bin": zeros})
    with zipfile.ZipFile(bomb) as archive, pytest.raises(
            UserError, match=r"bomb.zip: member 'weights.bin' expands \d+:1 to 4.0 MiB, the mark of a zip bomb "
                             r"\(the limit is 200:1\); if it is genuine, zip it without compression \(zip -0\)"):
        safezip.checked_members(archive, "bomb.zip")
    # the remedy the message names works; a small member may compress that well
    stored = make_zip(tmp_path / "stored.zip", {"small.bin": b"\0" * (512 << 10), "weights.bin": zeros},
                      zipfile.ZIP_STORED)
    with zipfile.ZipFile(stored) as archive:
        assert len(safezip.checked_members(archive, "stored.zip")) == 2


def test_a_member_claiming_more_stored_bytes_than_the_archive_has(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "stored.zip", {"w.bin": b"\1" * 1000}, zipfile.ZIP_STORED)
    set_declared_size(path, "w.bin", 1 << 30)  # uncompressed size only: a stored member's two sizes disagree
    with zipfile.ZipFile(path) as archive, pytest.raises(
            UserError, match=r"member 'w.bin' declares sizes its archive cannot hold \(1,000 stored bytes for "
                             r"1,073,741,824\); re-create the archive"):
        safezip.checked_members(archive, "stored.zip")


@pytest.mark.parametrize("cut", ["short", "offset"])
def test_onnx_external_data_shorter_than_its_tensors_is_refused(tmp_path: Path, mlp_onnx: Path, cut: str) -> None:
    """ONNX Runtime would allocate what the dims claim and read past the data file; intake says so first."""
    import onnx

    folder = tmp_path / "ext"
    folder.mkdir()
    model = onnx.load(str(mlp_onnx))
    onnx.save_model(model, str(folder / "net.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="net.data", size_threshold=0)
    data = (folder / "net.data").read_bytes()
    if cut == "short":
        (folder / "net.data").write_bytes(data[:100])
    else:
        stored = onnx.load(str(folder / "net.onnx"), load_external_data=False)
        for entry in stored.graph.initializer[0].external_data:
            if entry.key == "offset":
                entry.value = str(2**40)
        onnx.save(stored, str(folder / "net.onnx"))
    path = make_zip(tmp_path / "net.zip", {"net.onnx": (folder / "net.onnx").read_bytes(),
                                           "net.data": (folder / "net.data").read_bytes()})
    with pytest.raises(UserError, match=r"net.zip: tensor '.*' needs [\d,]+ bytes at offset [\d,]+ of 'net.data', "
                                        r"which holds [\d,]+; upload the complete data file") as info:
        intake(path)
    one_line(info, "net.zip")


# --- .npz: an array's header against the bytes it comes with ------------------------------------------------


def npz_with(path: Path, members: dict[str, bytes]) -> Path:
    return make_zip(path, members, zipfile.ZIP_STORED)


def npy(array: np.ndarray, shape: tuple[int, ...] | None = None, descr: str | None = None,
        data: bytes | None = None) -> bytes:
    header = np.lib.format.header_data_from_array_1_0(array)
    if shape is not None:
        header["shape"] = shape
    if descr is not None:
        header["descr"] = descr
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    out.write(array.tobytes() if data is None else data)
    return out.getvalue()


def test_a_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = npz_with(tmp_path / "huge.npz", {"x.npy": npy(np.zeros((1, 4), np.float32), shape=(10**12, 4))})

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the array was read")

    monkeypatch.setattr(np.lib.format, "read_array", no_reading)
    with pytest.raises(UserError, match=r"huge.npz: array 'x' is truncated: its header declares shape "
                                        r"\(1000000000000, 4\) of float32 \(16,000,000,000,000 bytes\) but the file "
                                        r"holds 16; save it again with numpy.savez") as info:
        load_npz(path, MLP)
    one_line(info, "huge.npz")


def test_a_truncated_array_is_reported_as_truncated(tmp_path: Path, mlp_npz: Path) -> None:
    with zipfile.ZipFile(mlp_npz) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members["eval/x.npy"] = members["eval/x.npy"][:-100]
    path = npz_with(tmp_path / "cut.npz", members)
    with pytest.raises(UserError, match=r"cut.npz: array 'eval/x' is truncated: its header declares shape \(40, 16\) "
                                        r"of float32 \(2,560 bytes\) but the file holds 2,460") as info:
        load_npz(path, MLP)
    assert "Python objects" not in one_line(info, "cut.npz")


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (("x.npy", b"not an array at all"), r"array 'x' has no valid .npy header \(.*\); save the arrays"),
        (("x", npy(np.zeros((3, 16), np.float32))), r"member 'x' is not a .npy array; save the arrays with numpy"),
        (("x.npy", npy(np.array(["a", "b"]))), r"array 'x' has dtype <U1, not numbers; store plain numeric arrays"),
        (("x.npy", npy(np.zeros((3, 16), np.float32), descr="|O")), r"array 'x' holds Python objects"),
        (("x.npy", npy(np.zeros((3, 16), np.float32), shape=(-3, 16))), r"array 'x' has .*"),
    ],
)
def test_members_that_are_not_plain_arrays(tmp_path: Path, member: tuple[str, bytes], match: str) -> None:
    path = npz_with(tmp_path / "odd.npz", dict([member]))
    with pytest.raises(UserError, match=match) as info:
        load_npz(path, MLP)
    one_line(info, "odd.npz")


def test_an_npz_past_the_unpacked_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, x=np.zeros((4096, 16), np.float32))
    monkeypatch.setenv("PARETOSCOPE_MAX_UNPACKED_BYTES", str(64 << 10))
    with pytest.raises(UserError, match=r"big.npz: unpacks to more than 64.0 KiB"):
        load_npz(path, MLP)
    monkeypatch.delenv("PARETOSCOPE_MAX_UNPACKED_BYTES")
    assert load_npz(path, MLP).split("eval")["x"].shape == (4096, 16)
