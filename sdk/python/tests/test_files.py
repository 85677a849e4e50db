"""Files: read, write, list, exists, delete, stat, mkdir, move, absolute paths, directory
transfer as tar."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_sandbox_sdk import Sandbox, SandboxPathError, SandboxRequestError
from agent_sandbox_sdk.sandbox import _Paths


def test_round_trip_binary_and_text(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * 1000
    sandbox.files.write("bin/data.bin", data)
    assert sandbox.files.read("bin/data.bin") == data
    sandbox.files.write("text.txt", "héllo\n")
    assert sandbox.files.read("text.txt").decode() == "héllo\n"
    assert sandbox.commands.run("cat text.txt").stdout == "héllo\n"


def test_absolute_paths_under_the_root(sandbox: Sandbox) -> None:
    sandbox.files.write("/workspace/abs/a.txt", "abs")
    assert sandbox.commands.run("cat /workspace/abs/a.txt").stdout == "abs"
    assert sandbox.files.read("abs/a.txt") == b"abs"


def test_absolute_paths_anywhere_under_a_root_of_slash(sandbox: Sandbox) -> None:
    # The example image's sandboxd serves / and starts in /workspace: an absolute path outside
    # the work directory is still under the root and means what it says.
    sandbox.files.write("/tmp/x.txt", "x")
    assert sandbox.commands.run("cat /tmp/x.txt").stdout == "x"
    assert sandbox.files.read("/bin/busybox")[:4] == b"\x7fELF"
    assert not sandbox.files.exists("tmp/x.txt"), "relative paths start in /workspace"


def test_absolute_paths_outside_a_narrower_root_are_refused(sandbox: Sandbox) -> None:
    # A sandboxd started with --root-dir /workspace would re-root /tmp/x.txt below it.
    paths = _Paths(sandbox)
    paths._root = "/workspace"
    assert paths.file("/workspace/a.txt") == "/workspace/a.txt"
    assert paths.file("rel.txt") == "rel.txt"
    with pytest.raises(SandboxPathError) as e:
        paths.file("/tmp/x.txt")
    assert "outside the directory this sandbox serves files from (/workspace)" in str(e.value)


def test_list_exists_delete(sandbox: Sandbox) -> None:
    sandbox.files.write("ls/b.txt", "bb")
    sandbox.files.write("ls/a.txt", "a", mode="0600")
    sandbox.files.mkdir("ls/sub")
    entries = sandbox.files.list("ls")
    assert [(e.name, e.type) for e in entries] == [("a.txt", "file"), ("b.txt", "file"),
                                                   ("sub", "directory")]
    assert entries[0].mode == "0600" and entries[1].size == 2
    assert entries[0].modified.tzinfo is not None
    assert sandbox.files.exists("ls/a.txt") and not sandbox.files.exists("ls/none")
    with pytest.raises(SandboxRequestError) as e:
        sandbox.files.delete("ls")
    assert e.value.status_code == 409
    sandbox.files.delete("ls/a.txt")
    assert not sandbox.files.exists("ls/a.txt")
    sandbox.files.delete("ls", recursive=True)
    assert not sandbox.files.exists("ls")


def test_missing_file_error(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxRequestError) as e:
        sandbox.files.read("no/such/file")
    assert e.value.status_code == 404 and e.value.code == "NOT_FOUND"
    assert "no/such/file" in str(e.value)


def test_stat_move(sandbox: Sandbox) -> None:
    sandbox.files.write("mv/src.txt", "m")
    sandbox.files.move("mv/src.txt", "mv/dst/dst.txt")
    info = sandbox.files.stat("mv/dst/dst.txt")
    assert info.type == "file" and info.size == 1 and info.name == "dst.txt"
    assert not sandbox.files.exists("mv/src.txt")


def test_upload_and_download_dir(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    (src / "pkg" / "deep" / "blob.bin").write_bytes(os.urandom(200_000))
    (src / "main.py").write_text("import pkg\nprint(pkg.VALUE)\n")
    os.symlink("main.py", src / "link.py")
    summary = sandbox.files.upload_dir(src, "proj")
    assert summary.files == 3 and summary.symlinks == 1 and summary.directories >= 2
    assert summary.bytes == 200_000 + 11 + 28
    assert sandbox.commands.run("python3 main.py", cwd="proj").stdout == "42\n"
    assert sandbox.commands.run("readlink proj/link.py").stdout == "main.py\n"

    sandbox.commands.run("mkdir -p proj/out && echo made > proj/out/new.txt")
    dst = tmp_path / "dst"
    sandbox.files.download_dir("proj", dst)
    assert (dst / "out" / "new.txt").read_text() == "made\n"
    assert (dst / "pkg" / "deep" / "blob.bin").read_bytes() == \
        (src / "pkg" / "deep" / "blob.bin").read_bytes()
    assert os.readlink(dst / "link.py") == "main.py"
