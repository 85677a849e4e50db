"""``sandbox.files``: the sandbox's files. The basic calls (write, read, list, exists, delete)
speak the runtime of the connection (sandboxd's ``/v1``, or upstream's python-runtime API);
the others are sandboxd's ``/v2``."""

from __future__ import annotations

import os
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _runtimes
from ._http import TransportError
from .exceptions import SandboxRequestError, SandboxTooLargeError
from .models import FileEntry, FileInfo, TransferSummary

if TYPE_CHECKING:
    from .sandbox import Sandbox


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _v1(path: str) -> str:
    return "/v1/files/" + urllib.parse.quote(path, safe="")


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extracts regular files, directories and symbolic links that stay inside ``dest``;
    anything else (absolute names, ``..``, links leading out, devices, hard links) is skipped."""
    dest = dest.resolve()
    extra: dict[str, Any] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}

    def inside(p: Path) -> bool:
        return p == dest or dest in p.parents

    for m in tar:
        if not (m.isfile() or m.isdir() or m.issym()):
            continue
        name = m.name
        if name.startswith("/") or ".." in name.split("/"):
            continue
        target = dest / name
        if not inside(target.parent.resolve()):
            continue
        if m.issym() and (m.linkname.startswith("/")
                          or not inside((target.parent / m.linkname).resolve())):
            continue
        m.mode &= 0o777
        tar.extract(m, dest, **extra)


def _write_all(destination: Any, data: bytes) -> int:
    done = 0
    while done < len(data):
        n = destination.write(data[done:])
        if n is None:  # a writer that returns None took everything
            return len(data)
        if n <= 0 or n > len(data) - done:
            raise OSError(f"the destination's write() returned {n!r}")
        done += n
    return done


class Files:
    """``sandbox.files``: the sandbox's files. Relative paths start at sandboxd's root directory
    (``/workspace`` in the example image); absolute paths are taken as they are."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _where(self, path: str, upstream_checked: bool, allow_unsafe_paths: bool) -> str:
        """The path as sent. Our configurations: absolute paths must be under sandboxd's root
        (:class:`SandboxPathError` otherwise). Upstream's: write and read take a relative path
        without ``..`` (leading ``/`` dropped; ``ValueError`` otherwise), as upstream's SDK."""
        if self._sb._dp.runtime == "rest":
            return self._sb._paths.file(path)
        if upstream_checked and not allow_unsafe_paths:
            return _runtimes.safe_path(path)
        if not isinstance(path, str) or path == "":
            raise ValueError(f"a file path must be a non-empty string, not {path!r}")
        return path

    def _write(self, path: str, content: _runtimes.Content, timeout: float = 60, *,
              mode: Optional[str] = None, allow_unsafe_paths: bool = False) -> None:
        """Writes a file (bytes, str, or a file opened in binary mode), creating parent
        directories; atomic with sandboxd. ``mode`` like ``"0755"`` (sandboxd only)."""
        runtime = self._sb._dp.runtime
        p = self._where(path, True, allow_unsafe_paths)
        data = _runtimes.content_bytes(content)
        if runtime == "legacy":
            if mode:
                raise NotImplementedError(
                    "files.write(mode=...) needs sandboxd's files API; upstream's python-runtime "
                    "API, which this connection speaks, has no file modes")
            _runtimes.legacy_write(self._sb._dp, p, data, timeout)
            return
        self._sb._dp.request("PUT", self._v1(p), what=f"writing {path}", body=data,
                             params={"mode": mode} if mode else None,
                             headers={"Content-Type": "application/octet-stream"},
                             timeout=timeout, ok=(200, 201, 204))

    def _v1(self, p: str) -> str:
        return _v1(p) if self._sb._dp.runtime == "rest" else _runtimes.v1_path(p)

    def _read(self, path: str, timeout: float = 60, *, allow_unsafe_paths: bool = False) -> bytes:
        """The bytes of a file."""
        p = self._where(path, True, allow_unsafe_paths)
        if self._sb._dp.runtime == "legacy":
            return _runtimes.legacy_read(self._sb._dp, p, timeout)
        r = self._sb._dp.request("GET", self._v1(p), what=f"reading {path}", timeout=timeout)
        if r.headers.get("content-type", "").startswith("application/json") and \
                r.body.startswith(b'{"path"'):
            raise SandboxRequestError(f"reading {path}: it is a directory; use files.list()",
                                      status_code=400, code="IS_A_DIRECTORY")
        return r.body

    def _read_to(self, path: str, destination: Any, timeout: float = 60,
                allow_unsafe_paths: bool = False, max_bytes: Optional[int] = None) -> int:
        """Streams a file into ``destination`` (anything with ``write(bytes)``; not closed) and
        returns the number of bytes written. Past ``max_bytes`` it stops with
        :class:`SandboxTooLargeError` (what was written stays written)."""
        if not callable(getattr(destination, "write", None)):
            raise TypeError("the destination must have a write(bytes) method")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes < 0):
            raise ValueError(f"max_bytes must be a non-negative integer or None, not {max_bytes!r}")
        p = self._where(path, True, allow_unsafe_paths)
        endpoint = f"/download/{urllib.parse.quote(p, safe='')}" \
            if self._sb._dp.runtime == "legacy" else self._v1(p)
        dp = self._sb._dp
        stream = dp.stream("GET", endpoint, what=f"reading {path}", timeout=timeout)
        total = 0
        try:
            declared = stream.headers.get("content-length")
            if max_bytes is not None and declared and declared.isdigit() \
                    and int(declared) > max_bytes:
                raise SandboxTooLargeError(
                    f"{path} is {declared} bytes, more than max_bytes={max_bytes}; pass a larger "
                    "max_bytes or read it in parts")
            while True:
                chunk = stream.read(64 * 1024)
                if not chunk:
                    break
                if max_bytes is not None and total + len(chunk) > max_bytes:
                    _write_all(destination, chunk[:max_bytes - total])
                    raise SandboxTooLargeError(f"{path} is larger than max_bytes={max_bytes}; pass a "
                                           "larger max_bytes or read it in parts")
                total += _write_all(destination, chunk)
        except TransportError as e:
            raise dp.transport_error(e, f"reading {path}", timeout) from None
        finally:
            stream.close()
        return total

    def _list(self, path: str, timeout: float) -> list[FileEntry]:
        """The entries of a directory, sorted by name."""
        runtime = self._sb._dp.runtime
        p = self._where(path, False, False)
        if runtime == "legacy":
            return _runtimes.legacy_list(self._sb._dp, p, timeout)
        if runtime == "sandboxd":
            return _runtimes.sandboxd_list(self._sb._dp, p, timeout)
        r = self._sb._dp.request("GET", _v1(p), what=f"listing {path}", timeout=timeout)
        if not r.headers.get("content-type", "").startswith("application/json"):
            raise SandboxRequestError(f"listing {path}: it is a file, not a directory",
                                      status_code=400, code="NOT_A_DIRECTORY")
        return [FileEntry.from_sandboxd(e) for e in r.json().get("entries", [])]

    def _exists(self, path: str, timeout: float = 60) -> bool:
        p = self._where(path, False, False)
        if self._sb._dp.runtime == "legacy":
            return _runtimes.legacy_exists(self._sb._dp, p, timeout)
        r = self._sb._dp.request("HEAD", self._v1(p), what=f"checking {path}", timeout=timeout,
                                 ok=(200, 404))
        return r.status == 200

    def _delete(self, path: str, recursive: bool = False, timeout: float = 60) -> None:
        """Deletes a file, a link (never its target) or, with ``recursive``, a directory tree."""
        if self._sb._dp.runtime == "legacy":
            raise NotImplementedError(
                "files.delete() needs sandboxd's files API; upstream's python-runtime API, which "
                "this connection speaks, has no delete (as with upstream's SDK)")
        p = self._where(path, False, False)
        self._sb._dp.request("DELETE", self._v1(p), what=f"deleting {path}", timeout=timeout,
                             params={"recursive": "true"} if recursive else None,
                             ok=(200, 204))

    # -- upstream's calls, traced as upstream traces them ------------------------------------

    def write(self, path: str, content: _runtimes.Content, timeout: float = 60, *,
              mode: Optional[str] = None, allow_unsafe_paths: bool = False) -> None:
        """Writes a file (bytes, str, or a file opened in binary mode), creating parent
        directories; atomic with sandboxd. ``mode`` like ``"0755"`` (sandboxd only)."""
        with self._sb._tracing.span("write", {"sandbox.file.path": path}) as span:
            if span.is_recording() and isinstance(content, (bytes, bytearray, str)):
                span.set_attribute("sandbox.file.size", len(content))
            self._write(path, content, timeout, mode=mode, allow_unsafe_paths=allow_unsafe_paths)

    def read(self, path: str, timeout: float = 60, *, allow_unsafe_paths: bool = False) -> bytes:
        """The bytes of a file."""
        with self._sb._tracing.span("read", {"sandbox.file.path": path}) as span:
            data = self._read(path, timeout, allow_unsafe_paths=allow_unsafe_paths)
            span.set_attribute("sandbox.file.size", len(data))
            return data

    def read_to(self, path: str, destination: Any, timeout: float = 60,
                allow_unsafe_paths: bool = False, max_bytes: Optional[int] = None) -> int:
        """Streams a file into ``destination`` (anything with ``write(bytes)``; not closed) and
        returns the number of bytes written. Past ``max_bytes`` it stops with
        :class:`SandboxTooLargeError` (what was written stays written)."""
        with self._sb._tracing.span("read_to", {"sandbox.file.path": path}) as span:
            n = self._read_to(path, destination, timeout, allow_unsafe_paths, max_bytes)
            span.set_attribute("sandbox.file.size", n)
            return n

    def list(self, path: str = ".", timeout: float = 60) -> list[FileEntry]:
        """The entries of a directory, sorted by name."""
        with self._sb._tracing.span("list", {"sandbox.file.path": path}) as span:
            entries = self._list(path, timeout)
            span.set_attribute("sandbox.file.count", len(entries))
            return entries

    def exists(self, path: str, timeout: float = 60) -> bool:
        """Whether ``path`` exists (without reading it)."""
        with self._sb._tracing.span("exists", {"sandbox.file.path": path}) as span:
            found = self._exists(path, timeout)
            span.set_attribute("sandbox.file.exists", found)
            return found

    def delete(self, path: str, recursive: bool = False, timeout: float = 60) -> None:
        """Deletes a file, a link (never its target) or, with ``recursive``, a directory tree."""
        with self._sb._tracing.span("delete", {"sandbox.file.path": path}):
            self._delete(path, recursive, timeout)

    # -- ours ------------------------------------------------------------------------------

    def stat(self, path: str, timeout: float = 60) -> FileInfo:
        p = self._sb._paths.file(path)
        r = self._sb._dp.request("GET", "/v2/files/stat", what=f"stat {path}",
                                 params={"path": p}, timeout=timeout)
        return FileInfo.from_json(r.json())

    def mkdir(self, path: str, parents: bool = True, mode: Optional[str] = None,
              timeout: float = 60) -> None:
        p = self._sb._paths.file(path)
        body: dict[str, Any] = {"path": p, "parents": parents}
        if mode:
            body["mode"] = mode
        self._sb._dp.request("POST", "/v2/files/mkdir", what=f"mkdir {path}", json_body=body,
                             timeout=timeout, idempotent=True, ok=(200, 201))

    def move(self, source: str, destination: str, overwrite: bool = False,
             timeout: float = 60) -> None:
        s, d = self._sb._paths.file(source), self._sb._paths.file(destination)
        self._sb._dp.request("POST", "/v2/files/move", what=f"moving {source} to {destination}",
                             json_body={"from": s, "to": d, "overwrite": overwrite},
                             timeout=timeout, idempotent=False, ok=(200, 204))

    def upload_dir(self, local_dir: Union[str, os.PathLike[str]], remote_dir: str = ".",
                   timeout: float = 300) -> TransferSummary:
        """Copies a local directory tree into ``remote_dir`` (created as needed) as one tar
        stream. Symbolic links are kept as links."""
        src = Path(local_dir)
        if not src.is_dir():
            raise NotADirectoryError(f"{src} is not a directory")
        p = self._sb._paths.file(remote_dir)
        with tempfile.SpooledTemporaryFile(max_size=32 << 20) as buf:
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for root, dirs, files in os.walk(src):
                    dirs.sort()
                    rel_root = Path(root).relative_to(src)
                    for name in [*dirs, *sorted(files)]:
                        full = Path(root) / name
                        tar.add(full, arcname=str(rel_root / name), recursive=False)
            size = buf.tell()
            buf.seek(0)
            r = self._sb._dp.request("PUT", "/v2/files/tar", what=f"uploading {src} to {remote_dir}",
                                     params={"path": p}, body=buf,
                                     headers={"Content-Type": "application/x-tar",
                                              "Content-Length": str(size)},
                                     timeout=timeout, ok=(200, 201))
        d = r.json()
        return TransferSummary(files=d.get("files", 0), directories=d.get("directories", 0),
                               symlinks=d.get("symlinks", 0), bytes=d.get("bytes", 0),
                               skipped=list(d.get("skipped") or []))

    def download_dir(self, remote_dir: str, local_dir: Union[str, os.PathLike[str]],
                     timeout: float = 300) -> None:
        """Copies ``remote_dir`` (a directory, or a single file) into ``local_dir`` (created).
        Members that would land outside ``local_dir`` are skipped."""
        p = self._sb._paths.file(remote_dir)
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        stream = self._sb._dp.stream("GET", "/v2/files/tar", what=f"downloading {remote_dir}",
                                     params={"path": p}, timeout=timeout)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                _safe_extract(tar, dest)
        except TransportError as e:
            raise self._sb._dp.transport_error(e, f"downloading {remote_dir}", timeout) from None
        finally:
            stream.close()
