"""Safe archive extraction: traversal, links, member maps, corrupt input."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from delfx.errors import DelfxError
from delfx.io.archives import extract, flatten_images, keep_last_components


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz"):
    with tarfile.open(path, mode) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_flatten_and_skip(tmp_path):
    fifo = tarfile.TarInfo("paris/fifo")
    fifo.type = tarfile.FIFOTYPE
    arc = make_tar(
        tmp_path / "a.tgz",
        [
            ("paris/defense/paris_defense_000000.jpg", b"1"),
            ("paris/eiffel/paris_eiffel_000001.JPG", b"2"),
            ("paris/eiffel/._paris_eiffel_000001.jpg", b"mac"),
            ("paris/notes.txt", b"t"),
            link("paris/inside.jpg", "defense/paris_defense_000000.jpg"),
            fifo,
        ],
    )
    out = tmp_path / "out"
    written = extract(arc, out, flatten_images())
    assert written == ["paris_defense_000000.jpg", "paris_eiffel_000001.JPG"]
    assert leftovers(out) == ["paris_defense_000000.jpg", "paris_eiffel_000001.JPG"]
    assert leftovers(tmp_path) == ["a.tgz", "out"]  # staging removed


def test_keep_last_components_plain_tar(tmp_path):
    arc = make_tar(tmp_path / "ims.tar", [("ims/ab/cd/ef/00efcdab", b"x"), ("ims/x", b"y")], "w")
    extract(arc, tmp_path / "ims", keep_last_components(4))
    assert (tmp_path / "ims" / "ab" / "cd" / "ef" / "00efcdab").read_bytes() == b"x"
    assert not (tmp_path / "ims" / "x").exists()


def test_several_archives_fill_one_folder(tmp_path):
    a = make_tar(tmp_path / "a.tgz", [("x/a.jpg", b"a")])
    b = make_tar(tmp_path / "b.tgz", [("y/b.jpg", b"b")])
    extract(a, tmp_path / "jpg", flatten_images())
    extract(b, tmp_path / "jpg", flatten_images())
    assert leftovers(tmp_path / "jpg") == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("../../evil.jpg", b"x"), "contains '..'"),
        (("/tmp/evil.jpg", b"x"), "absolute path"),
        (link("jpg/evil.jpg", "../../../etc/passwd"), "points outside"),
        (link("jpg/evil.jpg", "/etc/passwd"), "points outside"),
        (link("jpg/evil.jpg", "../../etc/passwd", tarfile.LNKTYPE), "points outside"),
    ],
)
def test_unsafe_members_refuse_the_archive(tmp_path, member, message):
    arc = make_tar(tmp_path / "bad.tgz", [("jpg/good.jpg", b"g"), member])
    out = tmp_path / "out"
    with pytest.raises(DelfxError, match=message) as err:
        extract(arc, out, flatten_images())
    assert str(err.value).startswith(f"{arc}: ")
    assert leftovers(out) == []  # nothing half-extracted, not even the good member
    assert leftovers(tmp_path) == ["bad.tgz", "out"]


def test_unsafe_destination_from_member_map(tmp_path):
    arc = make_tar(tmp_path / "a.tgz", [("a.jpg", b"a")])
    with pytest.raises(DelfxError, match="destination of member"):
        extract(arc, tmp_path / "out", lambda name: "../" + name)


def test_truncated_archive(tmp_path):
    arc = make_tar(tmp_path / "a.tgz", [(f"d/{i}.jpg", bytes(5000)) for i in range(20)])
    data = arc.read_bytes()
    arc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DelfxError, match="corrupt or truncated"):
        extract(arc, tmp_path / "out", flatten_images())
    not_tar = tmp_path / "b.tgz"
    not_tar.write_bytes(b"this is not an archive")
    with pytest.raises(DelfxError, match="corrupt or truncated"):
        extract(not_tar, tmp_path / "out", flatten_images())
