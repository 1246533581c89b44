"""Content-addressed files beside the database: data/blobs/ab/abcdef... named by their sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from storage.paths import data_dir, sub_dir

_CHUNK = 1 << 20
# Files being written into the store: .incoming-<pid of the writer>-<random>, renamed when complete.
INCOMING = ".incoming-"


def root() -> Path:
    return sub_dir("blobs")


def path_of(sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return root() / sha256[:2] / sha256


def exists(sha256: str) -> bool:
    return path_of(sha256).is_file()


def incoming_prefix() -> str:
    """The temp-file prefix of this process's writes: a worker that starts later tells a dead writer's leftovers
    from a live one's by the pid."""
    return f"{INCOMING}{os.getpid()}-"


def put_file(src: str | Path) -> str:
    """Copy a file into the store (temp file, fsync, atomic rename); return its sha256."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=incoming_prefix(), dir=root())
    try:
        with open(src, "rb") as fh, os.fdopen(fd, "wb") as out:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return _commit(Path(tmp_name), digest.hexdigest())
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def put_bytes(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if exists(digest):
        return digest
    fd, tmp_name = tempfile.mkstemp(prefix=incoming_prefix(), dir=root())
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return _commit(Path(tmp_name), digest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _commit(tmp: Path, sha256: str) -> str:
    final = path_of(sha256)
    if final.is_file():
        return sha256  # same content already stored
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    _fsync_dir(final.parent)  # the rename itself survives a power cut, not only the bytes
    return sha256


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def collect_garbage(referenced: Iterable[str]) -> int:
    """Delete blobs no row references; return the bytes freed."""
    keep = set(referenced)
    freed = 0
    for path in root().glob("*/*"):
        if path.is_file() and path.name not in keep:
            freed += path.stat().st_size
            path.unlink()
    return freed


@dataclass(frozen=True)
class SizeReport:
    """Disk use of the data folder by kind, for the System page."""

    blobs_bytes: int
    blob_count: int
    models_bytes: int
    variants_bytes: int
    studies_bytes: int
    database_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.blobs_bytes + self.models_bytes + self.variants_bytes + self.studies_bytes + self.database_bytes


def _tree_size(path: Path) -> tuple[int, int]:
    if not path.exists():
        return 0, 0
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def size_report() -> SizeReport:
    base = data_dir()
    blobs_bytes, blob_count = _tree_size(base / "blobs")
    db_bytes = sum(p.stat().st_size for p in base.glob("paretoscope.db*") if p.is_file())
    return SizeReport(blobs_bytes, blob_count, _tree_size(base / "models")[0], _tree_size(base / "variants")[0],
                      _tree_size(base / "studies")[0], db_bytes)


def remove_tree(path: Path) -> None:
    """Remove a folder inside the data folder (never outside it)."""
    base = data_dir().resolve()
    target = path.resolve()
    if base not in target.parents:
        raise ValueError(f"refusing to delete {target}: it is outside the data folder {base}")
    shutil.rmtree(target, ignore_errors=True)
