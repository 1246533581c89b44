"""Safe reading and unpacking of untrusted zip archives (zip-slip, symlinks, zip bombs)."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from engine.errors import UserError

MAX_MEMBERS = 10_000
# Uncompressed bytes allowed in one upload, counted while streaming (headers can lie).
DEFAULT_MAX_UNPACKED = int(os.environ.get("PARETOSCOPE_MAX_UNPACKED_BYTES", 16 * 1024**3))
_CHUNK = 1 << 20


def check_member_name(name: str, label: str) -> None:
    """Reject names that could escape the destination folder."""
    if "\\" in name:
        raise UserError(f"{label}: member '{name}' has a backslash in its path; re-create the archive with '/' paths")
    if name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        raise UserError(f"{label}: member '{name}' has an absolute path; re-create the archive with relative paths")
    if ".." in PurePosixPath(name).parts:
        raise UserError(f"{label}: member '{name}' points outside the archive ('..'); re-create the archive")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def checked_members(archive: zipfile.ZipFile, label: str) -> list[zipfile.ZipInfo]:
    """The archive's members after the name, link and count checks."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise UserError(
            f"{label}: the archive has {len(members)} members, more than {MAX_MEMBERS}; zip only the model folder"
        )
    for info in members:
        check_member_name(info.filename, label)
        if _is_symlink(info):
            raise UserError(f"{label}: member '{info.filename}' is a symbolic link; zip the real files instead")
    return members


def open_zip(path: Path, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{label}: not a readable zip archive ({exc}); re-create the file") from exc


def stream_check(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], label: str,
                 max_bytes: int = DEFAULT_MAX_UNPACKED) -> int:
    """Decompress every member without writing it, counting bytes against the cap; return the total."""
    total = 0
    for info in members:
        if info.is_dir():
            continue
        for chunk in _chunks(archive, info, label):
            total += len(chunk)
            if total > max_bytes:
                raise _too_big(label, max_bytes)
    return total


def safe_extract(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: Path, label: str,
                 max_bytes: int = DEFAULT_MAX_UNPACKED, strip_prefix: str = "") -> int:
    """Extract members under `dest` (already created), stripping `strip_prefix`; return bytes written."""
    dest = dest.resolve()
    total = 0
    for info in members:
        name = info.filename
        if strip_prefix:
            if not name.startswith(strip_prefix):
                continue
            name = name[len(strip_prefix):]
        if not name or info.is_dir():
            continue
        target = (dest / name).resolve()
        if dest not in target.parents:
            raise UserError(
                f"{label}: member '{info.filename}' resolves outside the destination; re-create the archive"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise _clash(label, info) from exc
        if target.is_dir():
            raise _clash(label, info)
        with open(target, "wb") as out:
            for chunk in _chunks(archive, info, label):
                total += len(chunk)
                if total > max_bytes:
                    out.close()
                    shutil.rmtree(dest, ignore_errors=True)
                    raise _too_big(label, max_bytes)
                out.write(chunk)
    return total


def _chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> Iterator[bytes]:
    """A member's decompressed bytes in chunks; a corrupt member (bad CRC, a size its header
    misstates, a broken stream) is the user's to fix, not a crash."""
    try:
        with archive.open(info) as src:
            while chunk := src.read(_CHUNK):
                yield chunk
    except (NotImplementedError, RuntimeError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise UserError(f"{label}: cannot read member '{info.filename}' ({exc}); re-create the archive") from exc


def _clash(label: str, info: zipfile.ZipInfo) -> UserError:
    return UserError(f"{label}: member '{info.filename}' clashes with a file or folder of the same path; "
                     "re-create the archive")


def _too_big(label: str, max_bytes: int) -> UserError:
    return UserError(
        f"{label}: unpacks to more than {_human(max_bytes)} (a zip bomb or a too-large model); "
        "raise PARETOSCOPE_MAX_UNPACKED_BYTES if it is genuine"
    )


def _human(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
