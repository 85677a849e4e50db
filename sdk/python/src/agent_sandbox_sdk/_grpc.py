"""sandboxd's gRPC ``process.v1.ProcessService``: ``Execute``, as upstream's SDK calls it for
``commands.run`` in the sandboxd connection modes. Needs ``grpcio`` (the ``grpc`` extra); the
few protobuf messages are encoded here, so ``protobuf`` is not needed."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import Any, Optional

EXECUTE = "/process.v1.ProcessService/Execute"

GRPC_MISSING = ("the sandboxd connection modes (SandboxdPodTunnelConnectionConfig, "
                "SandboxdInClusterConnectionConfig) run commands over gRPC, which needs grpcio: "
                "pip install 'agent-sandbox-sdk[grpc]'")


def grpc_module() -> Any:
    try:
        return importlib.import_module("grpc")
    except ImportError as e:
        raise ImportError(GRPC_MISSING) from e


# -- protobuf wire format ----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64 negatives are ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode_execute_request(command: list[str], env: Optional[Mapping[str, str]],
                           cwd: Optional[str]) -> bytes:
    """``ExecuteRequest{config: ProcessConfig{command, env_vars, cwd}}``."""
    config = b"".join(_field(1, c.encode()) for c in command)
    for k, v in (env or {}).items():
        config += _field(2, _field(1, str(k).encode()) + _field(2, str(v).encode()))
    if cwd:
        config += _field(3, cwd.encode())
    return _field(1, config)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_execute_response(buf: bytes) -> tuple[int, bytes, bytes]:
    """``ExecuteResponse{exit_code, stdout, stderr}``; unknown fields are skipped."""
    exit_code, stdout, stderr = 0, b"", b""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            if number == 1:
                value &= (1 << 64) - 1
                exit_code = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 2:
            length, i = _read_varint(buf, i)
            data = buf[i:i + length]
            i += length
            if number == 2:
                stdout = data
            elif number == 3:
                stderr = data
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return exit_code, stdout, stderr


# -- channels ----------------------------------------------------------------------------------


class GrpcChannels:
    """One plaintext channel per target, made when first needed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: Optional[str] = None
        self._channel: Any = None

    def execute(self, target: str, request: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        grpc = grpc_module()
        with self._lock:
            if self._channel is None or self._target != target:
                if self._channel is not None:
                    self._channel.close()
                self._channel = grpc.insecure_channel(target)
                self._target = target
            channel = self._channel
        call = channel.unary_unary(EXECUTE, request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        return decode_execute_response(call(request, timeout=timeout))

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._target = None
