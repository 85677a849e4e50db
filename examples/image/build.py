#!/usr/bin/env python3
"""Build the example sandbox image from this machine's Debian packages, offline.

The image holds busybox (a shell and the usual tools, from `busybox-static`), Debian's Python
(`python3`: the interpreter, its standard library with compiled bytecode, and the shared
libraries they load), bash, and sandboxd as the entrypoint (`--minimal`: the static busybox
only, with nothing of agent-sandbox in it). It is written as an OCI image layout
directory, which `agent-sandbox image import` loads into the embedded node and
`agent-sandbox image push` sends to a registry.

    python3 examples/image/build.py --sandboxd target/release/agent-sandbox --out /tmp/image

Three layers, bottom first: base (busybox, /etc, empty directories), python, sandboxd (and,
with `--with-node`, node before sandboxd); each
is an uncompressed tar with its entries sorted, so the same inputs give the same digests and a
rebuild after changing only sandboxd stores only a new top layer. `--sandboxd` takes either the
standalone `sandboxd` binary or the `agent-sandbox` binary (which acts as sandboxd when started
under that name); a dynamically linked binary brings the libraries it needs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from typing import Callable

TAG_DEFAULT = "latest"
# Parts of the standard library a sandbox has no use for (GUI, test suite, bundled pip wheels).
STDLIB_SKIP = {"test", "tkinter", "idlelib", "turtledemo", "ensurepip", "lib2to3", "config-"}
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


class Layer:
    """The entries of one layer: canonical path (no leading /) -> how to write it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: dict[str, tuple] = {}


class ImageBuilder:
    """Collects host files into layers, keeping symlinks as they are on the host."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.owner: dict[str, Layer] = {}  # path -> the layer that holds it

    def layer(self, name: str) -> Layer:
        layer = Layer(name)
        self.layers.append(layer)
        return layer

    def _put(self, layer: Layer, path: str, entry: tuple) -> None:
        if path in self.owner:
            return
        self.owner[path] = layer
        layer.entries[path] = entry

    def add_dir(self, layer: Layer, path: str, mode: int = 0o755) -> None:
        """An (empty) directory and its parents."""
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            self._put(layer, "/".join(parts[:i]), ("dir", mode if i == len(parts) else 0o755))

    def add_bytes(self, layer: Layer, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add_dir(layer, os.path.dirname(path.strip("/")) or ".")
        self._put(layer, path.strip("/"), ("bytes", data, mode))

    def add_symlink(self, layer: Layer, path: str, target: str) -> None:
        self.add_dir(layer, os.path.dirname(path.strip("/")) or ".")
        self._put(layer, path.strip("/"), ("symlink", target))

    def _canonical_dir(self, layer: Layer, directory: str) -> str:
        """Resolve `directory` component by component, recording each symlink on the way (so
        that `/lib/x86_64-linux-gnu/libc.so.6` works in the image as on a merged-/usr host)."""
        current = "/"
        for part in [p for p in directory.split("/") if p]:
            candidate = os.path.join(current, part)
            if os.path.islink(candidate):
                target = os.readlink(candidate)
                self.add_dir(layer, current)
                self._put(layer, candidate.strip("/"), ("symlink", target))
                current = os.path.realpath(candidate)
            else:
                current = candidate
        self.add_dir(layer, current)
        return current

    def add_host_path(self, layer: Layer, path: str) -> None:
        """A host file, directory (not its contents) or symlink (and what it points to)."""
        directory, base = os.path.split(os.path.abspath(path))
        canonical = os.path.join(self._canonical_dir(layer, directory), base)
        key = canonical.strip("/")
        if key in self.owner:
            return
        st = os.lstat(canonical)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(canonical)
            self._put(layer, key, ("symlink", target))
            self.add_host_path(layer, os.path.join(os.path.dirname(canonical), target))
        elif stat.S_ISDIR(st.st_mode):
            self.add_dir(layer, key, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self._put(layer, key, ("file", canonical))

    def add_host_tree(self, layer: Layer, root: str, skip: set[str]) -> None:
        for directory, dirs, files in os.walk(root):
            dirs[:] = sorted(
                d for d in dirs if not any(d == s or d.startswith(s) for s in skip if s)
            )
            self.add_host_path(layer, directory)
            for name in sorted(files):
                self.add_host_path(layer, os.path.join(directory, name))
            for name in dirs:
                if os.path.islink(os.path.join(directory, name)):
                    self.add_host_path(layer, os.path.join(directory, name))

    def add_with_libraries(self, layer: Layer, binaries: list[str]) -> None:
        """Binaries and the shared libraries (and loader) that `ldd` says they load."""
        for binary in binaries:
            self.add_host_path(layer, binary)
            for lib in shared_libraries(binary):
                self.add_host_path(layer, lib)

    def tar(self, layer: Layer) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(layer.entries):
                entry = layer.entries[path]
                info = tarfile.TarInfo(path)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                kind = entry[0]
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    info.mode = entry[1]
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry[1]
                    info.mode = 0o777
                    tar.addfile(info)
                elif kind == "bytes":
                    info.size = len(entry[1])
                    info.mode = entry[2]
                    tar.addfile(info, io.BytesIO(entry[1]))
                else:
                    st = os.stat(entry[1])
                    info.size = st.st_size
                    info.mode = stat.S_IMODE(st.st_mode)
                    # Python checks bytecode against its source's mtime: keep real mtimes.
                    info.mtime = int(st.st_mtime)
                    with open(entry[1], "rb") as f:
                        tar.addfile(info, f)
        return buf.getvalue()


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries a dynamic ELF binary loads (empty for static ones)."""
    with open(binary, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return []
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return []  # "not a dynamic executable"
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            fail(f"{binary} needs {line.split()[0]}, which is not installed")
    return libs


def debian_python() -> tuple[str, str]:
    """Debian's python3 (not a python of another origin earlier on PATH): binary, version."""
    binary = os.path.realpath("/usr/bin/python3")
    if not os.path.exists(binary):
        fail("Debian's python3 is not installed; run: apt-get install -y python3")
    m = re.search(r"python(3\.\d+)$", binary)
    if not m:
        fail(f"/usr/bin/python3 resolves to {binary}, which is not a python3.X binary")
    return binary, m.group(1)


def busybox() -> str:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path) and not shared_libraries(path):
            return path
    fail("a static busybox is needed; run: apt-get install -y busybox-static")
    raise AssertionError


def build(
    sandboxd: str | None,
    out: str,
    tag: str,
    with_node: bool = False,
    extra: "Callable[[ImageBuilder], None] | None" = None,
    sandboxd_args: list[str] | None = None,
    env: list[str] | None = None,
    ports: list[int] | None = None,
) -> str:
    """Write the image layout; without `sandboxd`, only the base layer (a static busybox, no
    libc), whose command is a shell that stays up: an image with nothing of agent-sandbox in
    it, for the node's sandboxd kit (the `agent-sandbox/sandboxd` annotation).

    `extra` adds layers between the interpreters and sandboxd (build_gui.py's browser and
    desktop); `sandboxd_args`, `env` and `ports` extend the entrypoint, the environment and the
    exposed ports."""
    builder = ImageBuilder()

    base = builder.layer("base: busybox, /etc, directories")
    box = busybox()
    builder.add_bytes(base, "usr/bin/busybox", open(box, "rb").read(), 0o755)
    # A merged /usr, as on current Debian and Ubuntu; library directories follow the host, so
    # that the paths `ldd` reports exist in the image.
    builder.add_symlink(base, "bin", "usr/bin")
    builder.add_symlink(base, "sbin", "usr/sbin")
    for d in ("lib", "lib64"):
        if os.path.islink(f"/{d}"):
            builder.add_symlink(base, d, os.readlink(f"/{d}"))
    applets = subprocess.run([box, "--list-full"], capture_output=True, text=True, check=True)
    for applet in sorted(applets.stdout.split()):
        path = applet if applet.startswith("usr/") else f"usr/{applet}"
        builder.add_symlink(base, path, "/usr/bin/busybox")
    builder.add_bytes(base, "etc/passwd", PASSWD.encode())
    builder.add_bytes(base, "etc/group", GROUP.encode())
    builder.add_bytes(base, "etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    builder.add_dir(base, "tmp", 0o1777)
    builder.add_dir(base, "var/tmp", 0o1777)
    for d in ("root", "workspace", "proc", "sys", "dev", "run", "etc/ssl/certs"):
        builder.add_dir(base, d, 0o700 if d == "root" else 0o755)

    if sandboxd is None:
        return write_layout(builder, out, tag, {
            "Cmd": ["/bin/sh", "-c", "echo workload started; exec sleep 2147483647"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "WorkingDir": "/workspace",
        })

    python = builder.layer("interpreters: python3 with its standard library, bash; shared libraries")
    binary, version = debian_python()
    if os.path.exists("/usr/bin/bash"):
        builder.add_with_libraries(python, ["/usr/bin/bash"])
    stdlib = f"/usr/lib/python{version}"
    dynload = os.path.join(stdlib, "lib-dynload")
    extensions = sorted(
        os.path.join(dynload, n) for n in os.listdir(dynload) if n.endswith(".so")
    )
    builder.add_with_libraries(python, [binary] + extensions)
    builder.add_host_tree(python, stdlib, STDLIB_SKIP)
    builder.add_symlink(python, "usr/bin/python3", os.path.basename(binary))
    builder.add_symlink(python, "usr/bin/python", "python3")
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        builder.add_host_path(python, "/etc/ssl/certs/ca-certificates.crt")

    if with_node:
        node = shutil.which("node") or shutil.which("nodejs")
        if not node:
            fail("--with-node: no node on PATH; run: apt-get install -y nodejs")
        nodejs = builder.layer("node: the JavaScript runtime and its shared libraries")
        builder.add_with_libraries(nodejs, [os.path.realpath(node)])
        if os.path.realpath(node) != "/usr/bin/node":
            builder.add_symlink(nodejs, "usr/bin/node", os.path.realpath(node))

    if extra is not None:
        extra(builder)

    runtime = builder.layer("sandboxd")
    builder.add_bytes(runtime, "usr/local/bin/sandboxd", open(sandboxd, "rb").read(), 0o755)
    for lib in shared_libraries(sandboxd):
        builder.add_host_path(runtime, lib)

    # The loader's cache, so libraries in multiarch directories are found without LD paths.
    with tempfile.TemporaryDirectory() as staging:
        for path, layer in builder.owner.items():
            entry = layer.entries[path]
            dst = os.path.join(staging, path)
            if entry[0] == "dir":
                os.makedirs(dst, exist_ok=True)
            elif entry[0] == "symlink":
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if not os.path.lexists(dst):
                    os.symlink(entry[1], dst)
            elif entry[0] == "file" and ".so" in path:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(entry[1], dst)
        conf = "include /etc/ld.so.conf.d/*.conf\n"
        multiarch = sorted(
            {
                os.path.dirname(p)
                for p in builder.owner
                if re.search(r"/lib[^/]*\.so(\.\d+)*$", p) and "python" not in p and "chromium" not in p
            }
        )
        os.makedirs(os.path.join(staging, "etc/ld.so.conf.d"), exist_ok=True)
        with open(os.path.join(staging, "etc/ld.so.conf.d/image.conf"), "w") as f:
            f.write("".join(f"/{d}\n" for d in multiarch))
        with open(os.path.join(staging, "etc/ld.so.conf"), "w") as f:
            f.write(conf)
        subprocess.run(["ldconfig", "-r", staging], check=True)
        cache = open(os.path.join(staging, "etc/ld.so.cache"), "rb").read()
    builder.add_bytes(python, "etc/ld.so.cache", cache)
    builder.add_bytes(python, "etc/ld.so.conf", conf.encode())
    builder.add_bytes(
        python, "etc/ld.so.conf.d/image.conf", "".join(f"/{d}\n" for d in multiarch).encode()
    )

    return write_layout(builder, out, tag, {
        "Entrypoint": [
            "/usr/local/bin/sandboxd", "--root-dir", "/", "--work-dir", "/workspace",
            *(sandboxd_args or []),
        ],
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
            "PYTHONUNBUFFERED=1",
            *(env or []),
        ],
        "WorkingDir": "/workspace",
        "ExposedPorts": {f"{p}/tcp": {} for p in [8888, 8080, 9090, *(ports or [])]},
    })


def write_layout(builder: "ImageBuilder", out: str, tag: str, image_config: dict) -> str:
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_descs = []
    for layer in builder.layers:
        desc = put(builder.tar(layer))
        desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        layer_descs.append(desc)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        "history": [{"created_by": f"examples/image/build.py ({layer.name})"} for layer in builder.layers],
    }
    config_desc = put(json.dumps(config, sort_keys=True).encode())
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    }
    manifest_desc = put(json.dumps(manifest, sort_keys=True).encode())
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f)
    return manifest_desc["digest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sandboxd",
        help="the sandboxd binary, or the agent-sandbox binary (it serves as sandboxd)",
    )
    parser.add_argument(
        "--minimal", action="store_true",
        help="only a static busybox and a shell that stays up: no libc, no Python, no sandboxd",
    )
    parser.add_argument("--out", required=True, help="OCI image layout directory to write")
    parser.add_argument("--tag", default=TAG_DEFAULT, help="tag recorded in index.json")
    parser.add_argument(
        "--with-node", action="store_true",
        help="add this machine's node (JavaScript for run_code); about 100 MB more",
    )
    args = parser.parse_args()
    if args.minimal:
        args.sandboxd = None
    elif not args.sandboxd or not os.path.isfile(args.sandboxd):
        if not args.sandboxd:
            fail("--sandboxd is required (the agent-sandbox binary), or pass --minimal")
        fail(f"--sandboxd {args.sandboxd}: no such file; build it with `cargo build --release -p agent-sandbox`")
    if os.path.exists(args.out) and os.listdir(args.out):
        shutil.rmtree(args.out)
    digest = build(args.sandboxd, args.out, args.tag, args.with_node)
    print(f"wrote {args.out} (tag {args.tag}, manifest {digest})")


if __name__ == "__main__":
    main()
