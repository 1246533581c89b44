"""Fuzzing intake: a mutated upload ends as a model or as a one-line UserError, never another exception or a hang.

Hypothesis draws the mutations of benchmarks/fuzz_intake.py (which runs thousands of them) from the tiny valid
seeds of the fixtures, a few hundred inputs in all: derandomized, so every CI run tries the same inputs, and
without an example database. ONNX, zipped ONNX, Hugging Face zips (safetensors, config.json) and .npz run in this
process under an address-space cap. TorchScript and .pt2 are loaded by torch's C++ readers, which a corrupt file
could crash: they run in a worker process, as production runs every intake in a limited child (engine.inspection).
Below them, one test per bug the fuzzing found, each on a hand-made input.
"""

from __future__ import annotations

import itertools
import json
import struct
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, configuration, given, settings
from hypothesis import strategies as st

from benchmarks import fuzz_intake as fuzz
from engine import modules, pickles
from engine.artifacts import intake
from engine.data import load_npz
from engine.errors import UserError
from engine.specs import InputSpec
from tests.engine.test_safezip import make_zip

MLP = InputSpec.parse("x:float32[B,16]")
# Hypothesis's plugin caches constants it reads from the source under ./.hypothesis while collecting: in tmp instead.
configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "paretoscope-hypothesis")
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# An allowance far above what intake of these seeds needs; a mutation that makes it allocate more is a bug.
MEMORY_MB = 3072
_names = itertools.count()


class HypothesisDraw:
    """benchmarks.fuzz_intake's Draw, backed by hypothesis so that a failing input shrinks."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return int(self.data.draw(st.integers(low, high)))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(list(options)))


@pytest.fixture(scope="module")
def seeds(mlp_onnx: Path, bert_hf_zip: Path, mlp_torchscript: Path, mlp_pt2: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return {"onnx": mlp_onnx.read_bytes(),
            "onnx-zip": fuzz.onnx_zip(mlp_onnx, tmp_path_factory.mktemp("onnx-ext")),
            "hf-zip": bert_hf_zip.read_bytes(), "torchscript": mlp_torchscript.read_bytes(),
            "pt2": mlp_pt2.read_bytes()}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzz.Worker]:
    folder = tmp_path_factory.mktemp("fuzz-worker")
    process = fuzz.Worker(folder / "data", folder / "worker.log", timeout_s=120, memory_mb=MEMORY_MB)
    yield process
    process.close()


def mutated(kind: str, seed: bytes, data: st.DataObject, folder: Path) -> tuple[str, Path]:
    names, content = fuzz.mutate(kind, seed, HypothesisDraw(data))
    path = folder / f"{next(_names)}-{fuzz.KINDS[kind]}"
    path.write_bytes(content)
    return names, path


def in_process(kind: str, seed: bytes, data: st.DataObject, folder: Path) -> None:
    names, path = mutated(kind, seed, data, folder)
    with fuzz.memory_cap(MEMORY_MB):
        outcome = fuzz.run_one(kind, path)
    assert outcome.good, f"{names}: {outcome.status}: {outcome.detail}"
    path.unlink()


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_onnx(data: st.DataObject, seeds: dict[str, bytes], tmp_path: Path) -> None:
    in_process("onnx", seeds["onnx"], data, tmp_path)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_onnx_zip_with_external_data(data: st.DataObject, seeds: dict[str, bytes], tmp_path: Path) -> None:
    in_process("onnx-zip", seeds["onnx-zip"], data, tmp_path)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_hugging_face_zip(data: st.DataObject, seeds: dict[str, bytes], tmp_path: Path) -> None:
    """Zip, config.json, the safetensors length prefix and JSON header, the weights' bytes."""
    in_process("hf-zip", seeds["hf-zip"], data, tmp_path)


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_npz(data: st.DataObject, mlp_npz: Path, tmp_path: Path) -> None:
    in_process("npz", mlp_npz.read_bytes(), data, tmp_path)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_torchscript_in_a_worker(data: st.DataObject, seeds: dict[str, bytes], worker: fuzz.Worker,
                                 tmp_path: Path) -> None:
    names, path = mutated("torchscript", seeds["torchscript"], data, tmp_path)
    outcome = worker.run("torchscript", path)
    assert outcome.good, f"{names}: {outcome.status}: {outcome.detail}"


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_pt2_in_a_worker(data: st.DataObject, seeds: dict[str, bytes], worker: fuzz.Worker, tmp_path: Path) -> None:
    names, path = mutated("pt2", seeds["pt2"], data, tmp_path)
    outcome = worker.run("pt2", path)
    assert outcome.good, f"{names}: {outcome.status}: {outcome.detail}"


def test_the_worker_reports_a_crash_and_goes_on(worker: fuzz.Worker, mlp_onnx: Path) -> None:
    """The harness itself: a segfault in the worker is the input's outcome, and the next input gets a new worker."""
    outcome = worker.run("segfault", mlp_onnx)
    assert outcome.status == "crash" and "SIGSEGV" in outcome.detail, outcome
    assert worker.run("onnx", mlp_onnx).status == "ok"


# --- what the fuzzing found, each on a hand-made input ----------------------------------------------------


def one_line(info: pytest.ExceptionInfo[UserError], name: str) -> str:
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: "), message
    return message


def _central(raw: bytearray) -> int:
    return raw.find(b"PK\x01\x02")


def _central_directory_further(raw: bytearray) -> None:
    """The end record places the central directory past where it is: members' offsets turn negative."""
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 16:end + 20] = struct.pack("<I", _central(raw) + 64)


def _name_flagged_utf8(raw: bytearray) -> None:
    raw[_central(raw) + 8:_central(raw) + 10] = struct.pack("<H", 0x800)
    raw[_central(raw) + 46] = 0xE4


def _version_12_8(raw: bytearray) -> None:
    raw[_central(raw) + 6] = 128


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_central_directory_further, r"cannot read member 'model.onnx' \(\[Errno 22\] Invalid argument\); re-create"),
        (_name_flagged_utf8, r"not a readable zip archive \('utf-8' codec can't decode byte 0xe4.*\); re-create the"),
        (_version_12_8, r"not a readable zip archive \(zip file version 12.8\)"),
    ],
)
def test_corrupt_zip_structures_are_one_line_errors(tmp_path: Path, mlp_onnx: Path, edit: Any, match: str) -> None:
    """zipfile raised OSError, UnicodeDecodeError and NotImplementedError on these."""
    path = make_zip(tmp_path / "m.zip", {"model.onnx": mlp_onnx.read_bytes(), "b.bin": b"x" * 100})
    raw = bytearray(path.read_bytes())
    edit(raw)
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=match) as info:
        intake(path)
    one_line(info, "m.zip")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", r"a member has an empty name; re-create the archive"),  # ZipInfo.is_dir() raised IndexError
        ("w" * 300, r"member 'w{60}\.\.\.' has a file or folder name longer than 255 bytes"),  # OSError on writing
        ("x/../../a\nb.bin", r"member 'x/../../a\\nb.bin' points outside the archive"),  # escaped: one line
    ],
)
def test_member_names_refused_in_one_line(tmp_path: Path, mlp_onnx: Path, name: str, match: str) -> None:
    path = make_zip(tmp_path / "m.zip", {"model.onnx": mlp_onnx.read_bytes()})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(UserError, match=match) as info:
        intake(path)
    one_line(info, "m.zip")


def test_duplicate_member_names_are_refused(tmp_path: Path, mlp_onnx: Path, mlp_pt2: Path) -> None:
    """zipfile reads the last copy of a name and torch's reader the first: a check could pass one file while the
    loader reads another, so an archive that names a member twice is refused everywhere."""
    path = make_zip(tmp_path / "m.zip", {"model.onnx": mlp_onnx.read_bytes()})
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as archive:
        archive.writestr("model.onnx", b"\x08\x07")
    with pytest.raises(UserError, match=r"m.zip: member 'model.onnx' appears twice in the archive; re-create it"):
        intake(path)
    twice = tmp_path / "twice.pt2"
    twice.write_bytes(mlp_pt2.read_bytes())
    with zipfile.ZipFile(twice) as archive:
        sample = next(n for n in archive.namelist() if "sample_inputs" in n)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(twice, "a") as archive:
        archive.writestr(sample, b"\x80\x02cos\nsystem\nq\x00.")
    with pytest.raises(UserError, match=r"twice.pt2: a member name appears twice in the archive"):
        pickles.check_exported_archive(twice)


def test_onnx_names_that_are_not_utf8(tmp_path: Path, mlp_onnx: Path) -> None:
    """protobuf returns such a string field as bytes, which the checks after it took for text."""
    content = mlp_onnx.read_bytes()
    assert b"0.weight" in content
    path = tmp_path / "m.onnx"
    path.write_bytes(content.replace(b"0.weight", b"0.wei\xe7ht"))
    with pytest.raises(UserError, match=r"m.onnx: the model names a tensor or file with bytes that are not UTF-8 "
                                        r"text \('0.wei\\xe7ht'\); export it again") as info:
        intake(path)
    one_line(info, "m.onnx")


def test_an_npy_header_numpy_cannot_tokenize(tmp_path: Path) -> None:
    """numpy re-tokenizes a header it cannot parse, and lets tokenize's TokenError out."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (40, 16"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 2560
    path = make_zip(tmp_path / "d.npz", {"x.npy": member})
    with pytest.raises(UserError, match=r"d.npz: array 'x' has no valid .npy header \(.*\); save the arrays") as info:
        load_npz(path, MLP)
    one_line(info, "d.npz")


def _rewrite(src: Path, dest: Path, member_suffix: str, change: Any) -> Path:
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dest, "w") as out:
        for info in archive.infolist():
            content = archive.read(info)
            out.writestr(info, change(content) if info.filename.endswith(member_suffix) else content)
    return dest


def test_a_torchscript_pickle_that_is_not_well_formed(tmp_path: Path, mlp_torchscript: Path) -> None:
    """TorchScript's C++ unpickler tried an allocation of any size on a spliced traced_inputs.pkl (std::bad_alloc
    even with no memory limit); a pickle that does not parse is refused before it reads one."""
    path = _rewrite(mlp_torchscript, tmp_path / "bad.pt", "traced_inputs.pkl", lambda b: b[:-40] + b[8:48])
    with pytest.raises(UserError, match=r"bad.pt: member '.*traced_inputs.pkl' is not a well-formed pickle "
                                        r"\(.*\); save the model again with torch.jit.save") as info:
        intake(path)
    one_line(info, "bad.pt")


def test_a_torchscript_pickle_closing_a_tuple_it_never_opened(tmp_path: Path, mlp_torchscript: Path) -> None:
    """pickletools itself raised IndexError on a TUPLE with no MARK before it."""
    path = _rewrite(mlp_torchscript, tmp_path / "bad.pt", "traced_inputs.pkl", lambda b: b"\x80\x02t.")
    with pytest.raises(UserError, match=r"bad.pt: member '.*traced_inputs.pkl' is not a well-formed pickle"):
        intake(path)


def test_torchscript_loader_errors_of_any_pybind_kind(tmp_path: Path, mlp_torchscript: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """pybind11 turns std::out_of_range into IndexError ("Argument passed to at() was not in the map")."""
    import torch

    def out_of_range(*args: object, **kwargs: object) -> None:
        raise IndexError("Argument passed to at() was not in the map.")

    monkeypatch.setattr(torch.jit, "load", out_of_range)
    path = tmp_path / "model.pt"
    path.write_bytes(mlp_torchscript.read_bytes())
    with pytest.raises(UserError, match=r"model.pt: not a readable TorchScript archive \(Argument passed to at\(\) "
                                        r"was not in the map.\); save the model again with torch.jit.save"):
        intake(path)


def _weights_config(content: bytes) -> bytes:
    config = json.loads(content)
    first = next(iter(config["config"].values()))
    first["tensor_meta"]["storage_offset"] = "x"
    return json.dumps(config).encode()


def _renamed_input(content: bytes) -> bytes:
    program = json.loads(content)
    program["graph_module"]["signature"]["input_specs"][0]["parameter"]["arg"]["name"] = "elsewhere"
    return json.dumps(program).encode()


def _argument_names_a_number(content: bytes) -> bytes:
    program = json.loads(content)
    program["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = 2**31
    return json.dumps(program).encode()


@pytest.mark.parametrize(
    ("member", "change", "match"),
    [
        ("_weights_config.json", _weights_config, r"AssertionError: expected dict, got str"),
        ("models/model.json", _renamed_input, r"SpecViolationError: Input spec name elsewhere does not match"),
        # loads, but torch cannot generate the module's code from it
        ("models/model.json", _argument_names_a_number, r"TypeError: object of type 'int' has no len\(\)"),
    ],
)
def test_pt2_programs_torch_cannot_deserialize(tmp_path: Path, mlp_pt2: Path, member: str, change: Any,
                                               match: str) -> None:
    path = _rewrite(mlp_pt2, tmp_path / "bad.pt2", member, change)
    with pytest.raises(UserError, match=r"bad.pt2: not a readable torch.export program \(" + match) as info:
        intake(path)
    assert one_line(info, "bad.pt2").endswith("; export it again with torch.export.save")


def test_config_fields_of_the_wrong_type_for_transformers(tmp_path: Path, bert_hf_zip: Path) -> None:
    """transformers' strict config fields raise their own exception type, not ValueError."""
    with zipfile.ZipFile(bert_hf_zip) as archive:
        config = json.loads(archive.read("tiny-bert/config.json"))
        weights = archive.read("tiny-bert/model.safetensors")
    config["hidden_dropout_prob"] = "x"
    path = make_zip(tmp_path / "bert.zip", {"config.json": json.dumps(config).encode(), "model.safetensors": weights})
    with pytest.raises(UserError, match=r"bert.zip: config.json cannot be read by transformers \(Validation error "
                                        r"for field 'hidden_dropout_prob':\); save it with save_pretrained") as info:
        intake(path)
    one_line(info, "bert.zip")


def test_the_estimate_ignores_values_of_other_types() -> None:
    """A fuzzed config may hold anything where a size belongs: the estimate counts only positive integers."""
    assert modules.estimate_hf_parameters({"hidden_size": "x", "vocab_size": None, "num_hidden_layers": [1],
                                           "intermediate_size": True, "id2label": 3}) == 0
    assert modules.estimate_hf_parameters({"hidden_size": 2**80, "num_hidden_layers": 2**80}) > 2**240
