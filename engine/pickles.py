"""Pickles inside uploaded archives: each one passes torch's allow-list unpickler before any library reads it.

TorchScript archives are read by TorchScript's own unpickler (no Python objects); their pickles only have to be
well-formed (`check_torchscript_archive`).

`torch.export.load` unpickles with `weights_only=False` (pickled weights and constants), falls back to it for
sample inputs, and unpickles custom and opaque objects with no restriction at all: an uploaded `.pt2` could
run its author's Python. Before any loader touches a `.pt2`, every member must be one the archive format
names, every pickle in it must load under torch's `weights_only` rules (no fallback), and members that carry
code (custom or opaque objects, AOTInductor's compiled libraries) are refused.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from engine import safezip
from engine.errors import UserError

# Members of a torch.export archive (torch 2.6+ "pt2" layout) under its top folder, by what they hold.
_PLAIN = re.compile(r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
                    r"models/[^/]+\.json|data/weights/[^/]+_weights_config\.json|"
                    r"data/constants/[^/]+_constants_config\.json|extra/[^/]+)$")
_WEIGHT_OR_CONSTANT = re.compile(r"^data/(weights|constants)/[^/]+$")
_SAMPLE_INPUTS = re.compile(r"^data/sample_inputs/[^/]+\.pt$")
# Prefixes torch gives constants that are objects rather than tensors: unpickled by TorchScript's or Python's
# own unpickler, with no allow-list.
_CODE_CONSTANTS = ("custom_obj_", "opaque_obj_")


def _refuse(label: str, member: str, why: str) -> UserError:
    return UserError(f"{label}: member '{safezip.shown(member)}' {why}; export the model again with "
                     "torch.export.save from plain tensors, or upload it as ONNX")


def check_safe_unpickle(data: bytes, label: str, member: str) -> None:
    """Load a torch.save payload under torch's allow-list (`weights_only=True`), or refuse the upload."""
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any refusal of the safe loader refuses the file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise _refuse(label, member, f"is a pickle that torch's safe loader refuses ({reason}): it could run "
                                     "code") from None


def _open(path: Path, label: str, kind: str) -> zipfile.ZipFile:
    """The archive, or a one-line error naming what it should have been."""
    try:
        return zipfile.ZipFile(path)
    except safezip.CORRUPT as exc:
        raise UserError(f"{label}: not a readable {kind} archive ({safezip.shown(str(exc))})") from None


def check_exported_archive(path: Path, label: str | None = None) -> None:
    """Refuse a `.pt2` archive unless every member is known and every pickle in it is plain data."""
    label = label or path.name
    with _open(path, label, "torch.export") as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        if len(set(names)) != len(names):
            # this check would read one copy of a name and torch's reader another
            raise UserError(f"{label}: a member name appears twice in the archive; export the model again")
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1:
            raise UserError(f"{label}: a torch.export archive keeps every member under one folder")
        top = next(iter(tops))
        inner = {n[len(top) + 1:]: n for n in names}
        pickled = _pickled_payloads(archive, inner, label)
        for name, full in inner.items():
            if _PLAIN.match(name):
                continue
            if name.startswith("data/aotinductor/"):
                raise _refuse(label, full, "is compiled native code (AOTInductor), which would run when loaded")
            # sample inputs, pickled payloads, and the legacy layout's whole-state-dict files (data/weights/m.pt)
            if _SAMPLE_INPUTS.match(name) or name in pickled or (_WEIGHT_OR_CONSTANT.match(name)
                                                                 and name.endswith(".pt")):
                check_safe_unpickle(_read(archive, full, label), label, full)
                continue
            if _WEIGHT_OR_CONSTANT.match(name):
                if PurePosixPath(name).name.startswith(_CODE_CONSTANTS):
                    raise _refuse(label, full, "is a pickled object (a custom or opaque constant), which runs "
                                               "code when loaded")
                continue  # raw tensor bytes, read with torch.frombuffer
            raise _refuse(label, full, "is not part of the torch.export archive format")


def check_torchscript_archive(path: Path, label: str | None = None) -> None:
    """Refuse a TorchScript archive holding a pickle that is not well-formed, before TorchScript's C++ unpickler
    reads it: on a corrupt one it may try an allocation of any size (found by benchmarks/fuzz_intake.py).

    pickletools parses the opcodes and checks the stack and memo without building an object.
    """
    label = label or path.name
    with _open(path, label, "TorchScript") as archive:
        for info in archive.infolist():
            if not info.filename.endswith("pkl"):  # data.pkl, constants.pkl, *.debug_pkl
                continue
            try:
                pickletools.dis(io.BytesIO(_read(archive, info.filename, label)), out=_Discard())
            except (ValueError, EOFError, OverflowError, IndexError) as exc:  # IndexError: a MARK never set
                raise UserError(f"{label}: member '{safezip.shown(info.filename)}' is not a well-formed pickle "
                                f"({safezip.shown(str(exc)[:200])}); save the model again with torch.jit.save"
                                ) from None


class _Discard(io.StringIO):
    """pickletools.dis's listing, dropped as it is written."""

    def write(self, text: str) -> int:
        return len(text)


def _pickled_payloads(archive: zipfile.ZipFile, inner: dict[str, str], label: str) -> set[str]:
    """Weights and constants whose payload config says they are pickled (torch.load'ed without an allow-list)."""
    pickled: set[str] = set()
    for name, full in inner.items():
        match = re.match(r"^data/(weights|constants)/[^/]+_(weights|constants)_config\.json$", name)
        if not match:
            continue
        try:
            config: Any = json.loads(_read(archive, full, label))
            entries = config["config"].values()
            for entry in entries:
                path_name = str(entry["path_name"])
                if PurePosixPath(path_name).name.startswith(_CODE_CONSTANTS):
                    raise _refuse(label, f"{PurePosixPath(full).parent}/{path_name}",
                                  "is a pickled object (a custom or opaque constant), which runs code when loaded")
                if entry.get("use_pickle"):
                    pickled.add(f"data/{match.group(1)}/{path_name}")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise UserError(f"{label}: member '{safezip.shown(full)}' is not a valid payload config "
                            f"({safezip.shown(str(exc)[:200])}); export the model again with torch.export.save"
                            ) from None
    return pickled


def _read(archive: zipfile.ZipFile, member: str, label: str) -> bytes:
    try:
        return archive.read(member)
    except safezip.CORRUPT as exc:
        raise UserError(f"{label}: cannot read member '{safezip.shown(member)}' ({safezip.shown(str(exc)[:200])}); "
                        "export the model again") from None
