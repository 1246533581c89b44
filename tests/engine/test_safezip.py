"""Unpacking untrusted zips: names that escape, links, member counts, and the size cap counted while streaming."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from engine import safezip
from engine.errors import UserError


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Make the zip's headers lie about a member's uncompressed size (central directory and local header)."""
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(member).header_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 22:offset + 26] = struct.pack("<I", size)  # local file header: uncompressed size
    name = member.encode()
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack("<H", raw[at + 28:at + 30])[0]
        if raw[at + 46:at + 46 + name_len] == name:
            raw[at + 24:at + 28] = struct.pack("<I", size)  # central directory: uncompressed size
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo(member).file_size == size


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.txt", r"points outside the archive \('..'\); re-create the archive"),
        ("model/../../evil.txt", r"points outside the archive"),
        ("/etc/evil.txt", r"has an absolute path; re-create the archive with relative paths"),
        ("C:/evil.txt", r"has an absolute path"),
        ("c:evil.txt", r"has an absolute path"),
        ("model\\..\\..\\evil.txt", r"has a backslash in its path; re-create the archive with '/' paths"),
    ],
)
def test_names_that_could_escape_are_rejected(name: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        safezip.check_member_name(name, "up.zip")
    assert str(info.value).startswith("up.zip: member ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["model.onnx", "folder/sub/weights.bin", "folder/..data", "a..b/c", "model:v1.onnx"])
def test_ordinary_names_pass(name: str) -> None:
    safezip.check_member_name(name, "up.zip")


def test_symlink_member_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", b"\x08\x07")
        link = zipfile.ZipInfo("weights.bin")
        link.create_system = 3  # Unix: the mode bits in external_attr are honoured
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with zipfile.ZipFile(path) as archive, pytest.raises(UserError, match=r"'weights\.bin' is a symbolic link; zip"):
        safezip.checked_members(archive, "link.zip")


def test_member_count_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safezip, "MAX_MEMBERS", 5)
    ok = make_zip(tmp_path / "ok.zip", {f"f{i}": b"" for i in range(5)})
    with zipfile.ZipFile(ok) as archive:
        assert len(safezip.checked_members(archive, "ok.zip")) == 5
    many = make_zip(tmp_path / "many.zip", {f"f{i}": b"" for i in range(6)})
    with zipfile.ZipFile(many) as archive, pytest.raises(UserError, match="has 6 members, more than 5; zip only"):
        safezip.checked_members(archive, "many.zip")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(UserError, match=r"broken.zip: not a readable zip archive .*; re-create the file"):
        safezip.open_zip(path, "broken.zip")


def test_extract_strips_the_prefix_and_skips_other_folders(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "m.zip", {"top/model.onnx": b"m", "top/sub/w.bin": b"ww", "other/x": b"x"})
    dest = tmp_path / "out"
    dest.mkdir()
    with zipfile.ZipFile(path) as archive:
        total = safezip.safe_extract(archive, safezip.checked_members(archive, "m.zip"), dest, "m.zip",
                                     strip_prefix="top/")
    assert total == 3
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == ["model.onnx", "sub/w.bin"]
    assert (dest / "sub" / "w.bin").read_bytes() == b"ww"


def test_zip_bomb_stops_at_the_cap_and_leaves_nothing(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {"model.onnx": b"m", "weights.bin": b"\0" * (4 << 20)})
    assert path.stat().st_size < 64 << 10  # highly compressible: the archive itself is small
    dest = tmp_path / "out"
    dest.mkdir()
    with zipfile.ZipFile(path) as archive, pytest.raises(UserError, match=r"unpacks to more than 1.0 MiB .*zip bomb"):
        safezip.safe_extract(archive, archive.infolist(), dest, "bomb.zip", max_bytes=1 << 20)
    assert not dest.exists()
    with zipfile.ZipFile(path) as archive, pytest.raises(UserError, match=r"unpacks to more than 1.0 MiB"):
        safezip.stream_check(archive, archive.infolist(), "bomb.zip", max_bytes=1 << 20)


def test_the_cap_counts_streamed_bytes_not_header_sizes(tmp_path: Path) -> None:
    """Headers claim 1 GiB; the streamed count is the real size, and the cap judges that."""
    path = make_zip(tmp_path / "claims.zip", {"w.bin": b"\1" * 1000})
    set_declared_size(path, "w.bin", 1 << 30)
    with zipfile.ZipFile(path) as archive:
        assert safezip.stream_check(archive, archive.infolist(), "claims.zip", max_bytes=4096) == 1000


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_a_header_that_understates_the_size_is_an_error_not_a_crash(tmp_path: Path, compression: int) -> None:
    path = make_zip(tmp_path / "liar.zip", {"w.bin": b"\0" * (2 << 20)}, compression)
    set_declared_size(path, "w.bin", 100)
    dest = tmp_path / "out"
    dest.mkdir()
    with zipfile.ZipFile(path) as archive:
        with pytest.raises(UserError, match=r"liar.zip: cannot read member 'w.bin' .*; re-create the archive"):
            safezip.stream_check(archive, archive.infolist(), "liar.zip", max_bytes=1 << 20)
        with pytest.raises(UserError, match=r"cannot read member 'w.bin'"):
            safezip.safe_extract(archive, archive.infolist(), dest, "liar.zip", max_bytes=1 << 20)


def test_corrupt_compressed_data_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bad.zip", {"w.bin": bytes(range(256)) * 400})
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("w.bin")
        start = info.header_offset + 30 + len(info.filename.encode())
    raw = bytearray(path.read_bytes())
    for i in range(start + 10, start + 60):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as archive, pytest.raises(UserError, match=r"cannot read member 'w.bin'"):
        safezip.stream_check(archive, archive.infolist(), "bad.zip")


def test_a_file_and_a_folder_of_the_same_path_clash(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "clash.zip", {"a": b"x", "a/b": b"y"})
    dest = tmp_path / "out"
    dest.mkdir()
    with zipfile.ZipFile(path) as archive, pytest.raises(UserError, match="'a/b' clashes with a file or folder"):
        safezip.safe_extract(archive, archive.infolist(), dest, "clash.zip")
    path = make_zip(tmp_path / "clash2.zip", {"a/b": b"y", "a": b"x"})
    dest = tmp_path / "out2"
    dest.mkdir()
    with zipfile.ZipFile(path) as archive, pytest.raises(UserError, match="'a' clashes with a file or folder"):
        safezip.safe_extract(archive, archive.infolist(), dest, "clash2.zip")
