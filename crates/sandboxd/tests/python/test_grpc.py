"""Interop test: upstream-style Python gRPC client (grpcio) against the Rust sandboxd.

Generates Python stubs from crates/sandboxd/proto with grpc_tools, starts the sandboxd binary
given in SANDBOXD_BIN on loopback ephemeral ports, and exercises ProcessService the way
upstream's Python SDK does (Execute with ["/bin/sh", "-c", cmd] and a deadline), plus Start,
WriteStdin, SendSignal, the error codes and deadlines.

grpcio enforces a call's deadline itself and its timer starts first, so a deadline seen through
it may be the client's ("Deadline Exceeded") or the server's ("context deadline exceeded"). The
server's own answer is checked with a hand-made HTTP/2 call (the h2 package) that sends a
grpc-timeout and enforces nothing.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

import grpc
import h2.config
import h2.connection
import h2.events
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


def raw_call(addr, method, request, extra_headers, read_timeout=10):
    """One unary gRPC call over a bare HTTP/2 connection, without a client-side deadline.

    Returns (elapsed seconds, response headers, trailers): a trailers-only answer has its
    grpc-status in the headers and no trailers."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=read_timeout)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (":method", "POST"), (":scheme", "http"), (":authority", addr),
        (":path", f"/process.v1.ProcessService/{method}"),
        ("content-type", "application/grpc"), ("te", "trailers"), *extra_headers,
    ])
    body = request.SerializeToString()
    conn.send_data(stream, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
    started = time.monotonic()
    sock.sendall(conn.data_to_send())
    headers, trailers, ended = {}, {}, False
    try:
        while not ended:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return time.monotonic() - started, headers, trailers


def grpc_status(headers, trailers):
    """(code, message) of a raw answer."""
    fields = trailers or headers
    return int(fields["grpc-status"]), urllib.parse.unquote(fields.get("grpc-message", ""))


def gone(pid, within=2.0):
    """True once `pid` is dead (or a zombie about to be reaped), waiting at most `within`."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def read_pid(path, within=5.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    raise AssertionError(f"no pid in {path}")


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

    def execute_deadline_like_the_sdk():
        # The SDK's commands.run(..., command_timeout=1): the call deadline is the timeout, and
        # DEADLINE_EXCEEDED is what it turns into timed_out=True, exit_code=124.
        pid_file = os.path.join(root, "sdk-deadline.pid")
        started = time.monotonic()
        try:
            stub.Execute(pb.ExecuteRequest(config=pb.ProcessConfig(
                command=["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"])), timeout=1)
            raise AssertionError("expected DEADLINE_EXCEEDED")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())
            # The client's own timer or the server's answer, whichever came first.
            assert e.details() in ("Deadline Exceeded", "context deadline exceeded"), e.details()
        assert time.monotonic() - started < 2, time.monotonic() - started
        assert gone(read_pid(pid_file)), "the command outlived its deadline"

        stream = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["sleep", "30"])),
                            timeout=1)
        try:
            for _ in stream:
                pass
            raise AssertionError("expected DEADLINE_EXCEEDED")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())

    def server_deadline_status():
        # Only the server enforces this deadline: its status and message are Go's.
        pid_file = os.path.join(root, "server-deadline.pid")
        req = pb.ExecuteRequest(config=pb.ProcessConfig(
            command=["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"]))
        took, headers, trailers = raw_call(addrs["grpc"], "Execute", req, [("grpc-timeout", "1S")])
        assert headers.get(":status") == "200", headers
        assert grpc_status(headers, trailers) == (4, "context deadline exceeded"), (headers, trailers)
        assert 0.9 <= took < 1.5, took
        assert gone(read_pid(pid_file)), "the command outlived its deadline"

    def malformed_grpc_timeout():
        req = pb.ExecuteRequest(config=pb.ProcessConfig(command=["true"]))
        _, headers, trailers = raw_call(addrs["grpc"], "Execute", req, [("grpc-timeout", "1x")])
        assert headers.get(":status") == "400", headers
        assert grpc_status(headers, trailers) == (
            13, 'malformed grpc-timeout: transport: timeout unit is not recognized: "1x"'), headers

    for fn in (execute_like_the_sdk, execute_env_and_cwd, error_codes, start_stdin_signal,
               execute_deadline_like_the_sdk, server_deadline_status, malformed_grpc_timeout):
        case(fn)
    daemon.terminate()
    daemon.wait(timeout=15)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
