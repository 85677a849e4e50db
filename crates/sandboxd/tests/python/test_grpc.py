"""Interop test: upstream-style Python gRPC client (grpcio) against the Rust sandboxd.

Generates Python stubs from crates/sandboxd/proto with grpc_tools, starts the sandboxd binary
given in SANDBOXD_BIN on loopback ephemeral ports, and exercises ProcessService the way
upstream's Python SDK does (Execute with ["/bin/sh", "-c", cmd] and a deadline), plus Start,
WriteStdin, SendSignal and the error codes.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import grpc
from google.protobuf import empty_pb2
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def generate(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
        "process/v1/process.proto",
    ])
    assert rc == 0, "protoc failed"
    for d in ("process", "process/v1"):
        open(os.path.join(out_dir, d, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)


def main():
    work = tempfile.mkdtemp(prefix="sandboxd-py-")
    root = os.path.join(work, "root")
    os.makedirs(root)
    generate(os.path.join(work, "gen"))
    from process.v1 import process_pb2 as pb
    from process.v1 import process_pb2_grpc as rpc

    daemon = subprocess.Popen(
        [os.environ["SANDBOXD_BIN"], "--listen-host", "127.0.0.1", "--grpc-port", "0",
         "--rest-port", "0", "--no-legacy", "--root-dir", root],
        stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
    addrs = json.loads(daemon.stdout.readline())
    channel = grpc.insecure_channel(addrs["grpc"])
    stub = rpc.ProcessServiceStub(channel)
    passed, failed = 0, 0

    def case(fn):
        nonlocal passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()

    def execute_like_the_sdk():
        r = stub.Execute(pb.ExecuteRequest(config=pb.ProcessConfig(
            command=["/bin/sh", "-c", "echo hi | tr a-z A-Z; exit 3"])), timeout=10)
        assert r.exit_code == 3 and r.stdout == b"HI\n", r

    def execute_env_and_cwd():
        os.makedirs(os.path.join(root, "sub"), exist_ok=True)
        r = stub.Execute(pb.ExecuteRequest(config=pb.ProcessConfig(
            command=["sh", "-c", "echo $A; pwd"], env_vars={"A": "b"}, cwd="sub")), timeout=10)
        assert r.stdout.decode().splitlines() == ["b", os.path.realpath(os.path.join(root, "sub"))], r

    def error_codes():
        for req, code in [
            (pb.ExecuteRequest(), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.ExecuteRequest(config=pb.ProcessConfig(command=["/nope"])), grpc.StatusCode.NOT_FOUND),
            (pb.ExecuteRequest(config=pb.ProcessConfig(command=["true"], cwd="../..")), grpc.StatusCode.PERMISSION_DENIED),
        ]:
            try:
                stub.Execute(req, timeout=10)
                raise AssertionError(f"expected {code}")
            except grpc.RpcError as e:
                assert e.code() == code, (e.code(), code)
        try:
            stub.SendSignal(pb.SendSignalRequest(process_id=12345, signal=pb.SIGNAL_SIGTERM), timeout=10)
            raise AssertionError("expected NOT_FOUND")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND

    def start_stdin_signal():
        stream = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["cat"])), timeout=10)
        first = next(stream)
        assert first.WhichOneof("event") == "init", first
        pid = first.init.process_id
        stub.WriteStdin(pb.WriteStdinRequest(process_id=pid, input=b"abc"), timeout=10)
        stub.WriteStdin(pb.WriteStdinRequest(process_id=pid, eof=empty_pb2.Empty()), timeout=10)
        out, exit_code = b"", None
        for ev in stream:
            kind = ev.WhichOneof("event")
            if kind == "stdout":
                out += ev.stdout
            elif kind == "exit":
                exit_code = ev.exit.exit_code
        assert out == b"abc" and exit_code == 0, (out, exit_code)

        stream = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["sleep", "30"])), timeout=10)
        pid = next(stream).init.process_id
        try:
            stub.SendSignal(pb.SendSignalRequest(process_id=pid, signal=pb.SIGNAL_UNSPECIFIED), timeout=10)
            raise AssertionError("expected INVALID_ARGUMENT")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub.SendSignal(pb.SendSignalRequest(process_id=pid, signal=pb.SIGNAL_SIGKILL), timeout=10)
        codes = [ev.exit.exit_code for ev in stream if ev.WhichOneof("event") == "exit"]
        assert codes == [-1], codes

    for fn in (execute_like_the_sdk, execute_env_and_cwd, error_codes, start_stdin_signal):
        case(fn)
    daemon.terminate()
    daemon.wait(timeout=15)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
