"""Safe reading and unpacking of untrusted zip archives (zip-slip, symlinks, zip bombs)."""

from __future__ import annotations

import io
import lzma
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from engine.errors import UserError

MAX_MEMBERS = 10_000
# Uncompressed bytes allowed in one upload: the members' declared sizes are summed before anything is read,
# and the bytes are counted again while streaming. 4 GiB holds a 1B-parameter model in float32.
DEFAULT_MAX_UNPACKED = 4 * 1024**3
MAX_UNPACKED_ENV = "PARETOSCOPE_MAX_UNPACKED_BYTES"
# Deflate tops out near 1032:1 on zeros; trained weights compress by well under 2:1, and torch writes its
# archives uncompressed. A large member expanding past this ratio is a zip bomb's mark, refused before it
# is written. Smaller members are left to the size cap: a small table of zeros may compress that well.
MAX_RATIO = 200
RATIO_MIN_BYTES = 64 * 1024**2
_CHUNK = 1 << 20
_MAX_NAME_PART = 255  # bytes in one file or folder name on Linux, macOS and Windows file systems
# What zipfile raises on a corrupt archive besides BadZipFile: an offset past the file (OSError), a name that
# is not UTF-8 (UnicodeDecodeError), an unknown version or method (NotImplementedError), broken streams.
CORRUPT = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, RuntimeError, zlib.error,
            lzma.LZMAError)


def max_unpacked_bytes() -> int:
    """The cap on an upload's unpacked bytes: `PARETOSCOPE_MAX_UNPACKED_BYTES`, default 4 GiB."""
    raw = os.environ.get(MAX_UNPACKED_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_UNPACKED
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{MAX_UNPACKED_ENV} is '{raw}'; set it to a positive number of bytes")
    return value


def shown(name: str | bytes) -> str:
    """A name fit for a one-line message: control characters escaped (bytes, which protobuf returns for a string
    field that is not UTF-8, shown as text)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="backslashreplace")
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def check_member_name(name: str, label: str) -> None:
    """Reject names that could escape the destination folder, or that name nothing."""
    if not name:
        raise UserError(f"{label}: a member has an empty name; re-create the archive")
    if "\\" in name:
        raise UserError(f"{label}: member '{shown(name)}' has a backslash in its path; re-create the archive with "
                        "'/' paths")
    if name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        raise UserError(f"{label}: member '{shown(name)}' has an absolute path; re-create the archive with relative "
                        "paths")
    if ".." in PurePosixPath(name).parts:
        raise UserError(f"{label}: member '{shown(name)}' points outside the archive ('..'); re-create the archive")
    if any(len(part.encode()) > _MAX_NAME_PART for part in name.split("/")):
        raise UserError(f"{label}: member '{shown(name[:60])}...' has a file or folder name longer than "
                        f"{_MAX_NAME_PART} bytes, more than a file system holds; re-create the archive")


def _is_dir(info: zipfile.ZipInfo) -> bool:
    return info.filename.endswith("/")  # ZipInfo.is_dir() fails on an empty name


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def checked_members(archive: zipfile.ZipFile, label: str, max_bytes: int | None = None) -> list[zipfile.ZipInfo]:
    """The archive's members after the name, link, count and declared-size checks (nothing read yet)."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise UserError(
            f"{label}: the archive has {len(members)} members, more than {MAX_MEMBERS}; zip only the model folder"
        )
    seen: set[str] = set()
    for info in members:
        check_member_name(info.filename, label)
        if _is_symlink(info):
            raise UserError(f"{label}: member '{shown(info.filename)}' is a symbolic link; zip the real files instead")
        if info.filename in seen:
            # zipfile reads the last copy, torch's and other readers the first: a check could pass one file
            # while a loader reads another
            raise UserError(f"{label}: member '{shown(info.filename)}' appears twice in the archive; re-create it")
        seen.add(info.filename)
    check_declared_sizes(members, label, max_bytes, _archive_size(archive))
    return members


def _archive_size(archive: zipfile.ZipFile) -> int | None:
    try:
        return os.fstat(archive.fp.fileno()).st_size if archive.fp is not None else None
    except (OSError, ValueError):  # an archive in memory has no file descriptor
        return None


def check_declared_sizes(members: list[zipfile.ZipInfo], label: str, max_bytes: int | None = None,
                         archive_size: int | None = None) -> int:
    """Refuse, from the central directory alone, an archive whose members declare more than the cap in all,
    expand like a zip bomb, or claim more stored bytes than the archive has; return the declared total.

    zipfile never yields more than a member declares, so a reader may size its buffers by these numbers.
    """
    cap = max_unpacked_bytes() if max_bytes is None else max_bytes
    total = 0
    for info in members:
        if _is_dir(info):
            continue
        stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1  # 0x1: encrypted
        if (archive_size is not None and info.compress_size > archive_size) or (
                stored and info.compress_size != info.file_size):
            raise UserError(f"{label}: member '{shown(info.filename)}' declares sizes its archive cannot hold "
                            f"({info.compress_size:,} stored bytes for {info.file_size:,}); re-create the archive")
        total += info.file_size
        if total > cap:
            raise _too_big(label, cap)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_MIN_BYTES and ratio > MAX_RATIO:
            raise UserError(
                f"{label}: member '{shown(info.filename)}' expands {ratio:.0f}:1 to {_human(info.file_size)}, the "
                f"mark of a zip bomb (the limit is {MAX_RATIO}:1); if it is genuine, zip it without compression "
                "(zip -0)"
            )
    return total


def open_zip(path: Path, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except CORRUPT as exc:
        raise UserError(f"{label}: not a readable zip archive ({_line(exc)}); re-create the file") from exc


def stream_check(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], label: str,
                 max_bytes: int | None = None) -> int:
    """Decompress every member without writing it, counting bytes against the cap; return the total."""
    cap = max_unpacked_bytes() if max_bytes is None else max_bytes
    total = 0
    for info in members:
        if _is_dir(info):
            continue
        for chunk in _chunks(archive, info, label):
            total += len(chunk)
            if total > cap:
                raise _too_big(label, cap)
    return total


def safe_extract(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: Path, label: str,
                 max_bytes: int | None = None, strip_prefix: str = "") -> int:
    """Extract members under `dest` (already created), stripping `strip_prefix`; return bytes written."""
    cap = max_unpacked_bytes() if max_bytes is None else max_bytes
    dest = dest.resolve()
    total = 0
    for info in members:
        name = info.filename
        if strip_prefix:
            if not name.startswith(strip_prefix):
                continue
            name = name[len(strip_prefix):]
        if not name or _is_dir(info):
            continue
        target = (dest / name).resolve()
        if dest not in target.parents:
            raise UserError(
                f"{label}: member '{shown(info.filename)}' resolves outside the destination; re-create the archive"
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
                if total > cap:
                    out.close()
                    shutil.rmtree(dest, ignore_errors=True)
                    raise _too_big(label, cap)
                out.write(chunk)
    return total


def _chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> Iterator[bytes]:
    """A member's decompressed bytes in chunks; a corrupt member (bad CRC, a size its header
    misstates, a broken stream, an offset outside the file) is the user's to fix, not a crash."""
    try:
        with archive.open(info) as src:
            while chunk := src.read(_CHUNK):
                yield chunk
    except CORRUPT as exc:
        raise UserError(f"{label}: cannot read member '{shown(info.filename)}' ({_line(exc)}); re-create the "
                        "archive") from exc


def _line(exc: BaseException) -> str:
    """An exception's message as one short line (zipfile's quote member names, which may hold anything)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return shown(text[:300])


def _clash(label: str, info: zipfile.ZipInfo) -> UserError:
    return UserError(f"{label}: member '{shown(info.filename)}' clashes with a file or folder of the same path; "
                     "re-create the archive")


def _too_big(label: str, max_bytes: int) -> UserError:
    return UserError(
        f"{label}: unpacks to more than {_human(max_bytes)} (a zip bomb or a too-large model); "
        f"raise {MAX_UNPACKED_ENV} if it is genuine"
    )


def _human(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def zip_folder(folder: Path, root: str) -> bytes:
    """Every file under `folder`, in name order, as a zip whose entries sit under `root/` (what Paretoscope hands
    out: a deployment bundle, a Hugging Face Space)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{root}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()
