"""A full disk while an upload is staged is one line that says what to do, and leaves nothing behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from engine.errors import UserError, disk_full
from pages import common


def test_a_full_disk_while_staging_an_upload_is_one_line(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, data: bytes) -> int:
        self.write_text("partial")  # what a disk that filled up midway leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(UserError, match=r"the disk of the data folder is full \(No space left on device\): free"):
        common.stage_upload("model.onnx", b"bytes")
    assert not any((data_dir / "uploads").iterdir())


def test_other_os_errors_are_not_dressed_as_a_full_disk() -> None:
    assert disk_full(OSError(errno.EACCES, "Permission denied"), "the data folder") is None
    quota = disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), "the data folder")
    assert quota is not None and "(Disk quota exceeded)" in str(quota)
