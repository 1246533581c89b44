"""Crafted `.pt2` archives whose pickles would run code: refused before any loader reads them, on every path."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from engine.artifacts import intake
from engine.errors import UserError
from engine.modules import load_module
from engine.pickles import check_exported_archive


class _Payload:
    """Unpickling this creates the marker file: what an attacker's pickle would do, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _rewrite(src: Path, dest: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with members replaced (by their name under the top folder) or added."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w") as new:
        top = old.namelist()[0].split("/")[0]
        for info in old.infolist():
            inner = info.filename[len(top) + 1:]
            new.writestr(info.filename, replace.get(inner, old.read(info.filename)))
        for inner, data in (add or {}).items():
            new.writestr(f"{top}/{inner}", data)
    return dest


def _constants_config(src: Path) -> tuple[str, dict]:  # type: ignore[type-arg]
    with zipfile.ZipFile(src) as archive:
        name = next(n for n in archive.namelist() if n.endswith("_constants_config.json"))
        return name.split("/", 1)[1], json.loads(archive.read(name))


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A real torch.export archive with a weight, a buffer and a tensor constant."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)
            self.offset = torch.tensor([1.0, 2.0])  # a lifted tensor constant

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + self.offset

    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(Model().eval(), (torch.randn(3, 4),)), str(path))
    return path


def _crafted(kind: str, exported: Path, marker: Path) -> Path:
    dest = exported.parent / f"{kind}.pt2"
    evil = _saved(_Payload(marker))
    if kind == "sample-inputs":
        return _rewrite(exported, dest, {"data/sample_inputs/model.pt": evil})
    if kind == "constant":
        name, config = _constants_config(exported)
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        return _rewrite(exported, dest, {name: json.dumps(config).encode(),
                                         f"data/constants/{entry['path_name']}": evil})
    if kind == "opaque-constant":
        name, config = _constants_config(exported)
        entry = next(iter(config["config"].values()))
        entry["path_name"] = "opaque_obj_0"
        return _rewrite(exported, dest, {name: json.dumps(config).encode()},
                        {"data/constants/opaque_obj_0": evil})
    if kind == "legacy-weights":
        return _rewrite(exported, dest, {}, {"data/weights/model.pt": evil})
    return _rewrite(exported, dest, {}, {"data/notes.pkl": evil})  # any other member


KINDS = ["sample-inputs", "constant", "opaque-constant", "legacy-weights", "other-member"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_pickle_that_would_run_code_is_refused_on_every_path(kind: str, exported: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    crafted = _crafted(kind, exported, marker)
    with pytest.raises(UserError) as refused:
        check_exported_archive(crafted)
    message = str(refused.value)
    assert "\n" not in message and "member '" in message, message
    with pytest.raises(UserError):
        intake(crafted)  # the upload and the CLI's inspection
    with pytest.raises(UserError):
        load_module(crafted, "pt2")  # the reference and every cell's child
    assert not marker.exists(), "the archive's pickle ran"


def test_the_crafted_sample_inputs_would_have_run_code_in_torch_itself(exported: Path, tmp_path: Path) -> None:
    """What the check stands in front of: torch.export.load falls back to an unrestricted unpickler."""
    marker = tmp_path / "ran.txt"
    crafted = _crafted("sample-inputs", exported, marker)
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(crafted)!r})"],
                   capture_output=True, timeout=300, check=False)
    if not marker.exists():
        pytest.skip("this torch no longer unpickles sample inputs without an allow-list")


def test_a_plain_exported_archive_passes_and_loads(exported: Path) -> None:
    check_exported_archive(exported)
    module = load_module(exported, "pt2")
    assert module(torch.randn(3, 4)).shape == (3, 2)


def test_aotinductor_members_are_refused(exported: Path) -> None:
    crafted = _rewrite(exported, exported.parent / "aoti.pt2", {}, {"data/aotinductor/model/model.so": b"\x7fELF"})
    with pytest.raises(UserError, match="compiled native code"):
        check_exported_archive(crafted)
