"""One grpc.health.v1 check, for Docker's HEALTHCHECK and exec probes of the Python image.

    python -m fanout_py.health [ADDR] [--service NAME] [--timeout-ms 2000]

The Python twin of ``fanout health ADDR``: exits 0 when the server says SERVING (the
line ``ADDR: SERVING`` on stdout), 1 otherwise (NOT_SERVING, an error status such as an
unknown service, no answer in time, nothing listening), with the reason on stderr; 2
for a bad command line. ADDR is ``host:port`` or ``http://host:port``; without it,
``$FANOUT_HEALTH_ADDR``, else ``127.0.0.1:7000`` (a leaf's port). The empty service
(the default) asks about the server as a whole.

It speaks the one call it needs, ``/grpc.health.v1.Health/Check`` over plaintext
HTTP/2 (RFC 9113; header fields as HPACK literals, RFC 7541), with the standard library
alone: a probe every 2 s of every container is a fresh interpreter each time, and
importing grpcio costs ~150 ms of CPU per probe, this ~20 ms. What it reads of the
answer is the HealthCheckResponse message; an answer without one (an error status in
the trailers) is reported as such, without decoding its HPACK-compressed code.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

DEFAULT_ADDR = "127.0.0.1:7000"
CHECK_PATH = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, PADDED = 0x1, 0x1, 0x8
END_HEADERS = 0x4
STREAM = 1
MAX_FRAME = 1 << 20


class ProbeError(Exception):
    pass


def target_of(addr: str) -> tuple[str, int]:
    """(host, port) of ``host:port``, ``[v6]:port`` or ``http://host:port``."""
    shown = addr
    for scheme in ("http://", "grpc://"):
        if addr.startswith(scheme):
            addr = addr[len(scheme):]
    addr = addr.rstrip("/")
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{shown!r} is not host:port")
    return host, int(port)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) >= 127:  # a 7-bit prefixed length, continued
        length, rest = bytearray([127]), len(raw) - 127
        while rest >= 128:
            length.append((rest & 0x7F) | 0x80)
            rest >>= 7
        length.append(rest)
        return bytes(length) + raw
    return bytes([len(raw)]) + raw


def header_block(authority: str) -> bytes:
    """The request's header fields, each a literal without indexing, new name."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", CHECK_PATH),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return b"".join(b"\x00" + _hpack_string(name) + _hpack_string(value) for name, value in fields)


def request_message(service: str) -> bytes:
    """A length-prefixed gRPC message holding HealthCheckRequest{service}."""
    body = b""
    if service:
        raw = service.encode()
        body = b"\x0a" + _varint(len(raw)) + raw
    return b"\x00" + struct.pack(">I", len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ProbeError("a malformed HealthCheckResponse")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def response_status(message: bytes) -> int:
    """The status (field 1, a varint) of a HealthCheckResponse; 0 when absent."""
    status, at = 0, 0
    while at < len(message):
        key, at = _read_varint(message, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(message, at)
            if field == 1:
                status = value
        elif wire == 2:
            length, at = _read_varint(message, at)
            at += length
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ProbeError("a malformed HealthCheckResponse")
    return status


class _Connection:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def _recv_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProbeError("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_frame(self) -> tuple[int, int, int, bytes]:
        head = self._recv_exactly(9)
        length = int.from_bytes(head[:3], "big")
        if length > MAX_FRAME:
            raise ProbeError("a frame over 1 MiB")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        return kind, flags, stream, self._recv_exactly(length)


def _unpad(flags: int, payload: bytes) -> bytes:
    if flags & PADDED and payload:
        return payload[1 : len(payload) - payload[0]]
    return payload


def check_status(addr: str, service: str = "", timeout_s: float = 2.0) -> int:
    """The ServingStatus the server at ``addr`` answers for ``service``, or raises
    ProbeError / OSError / socket.timeout."""
    host, port = target_of(addr)
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock.sendall(
            PREFACE
            + frame(SETTINGS, 0, 0)
            + frame(HEADERS, END_HEADERS, STREAM, header_block(authority))
            + frame(DATA, END_STREAM, STREAM, request_message(service))
        )
        connection = _Connection(sock, deadline)
        data = b""
        while True:
            kind, flags, stream, payload = connection.read_frame()
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                sock.sendall(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise ProbeError("the server sent GOAWAY")
            elif stream != STREAM:
                continue
            elif kind == RST_STREAM:
                code = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else -1
                raise ProbeError(f"the server reset the call (HTTP/2 error {code})")
            elif kind == DATA:
                data += _unpad(flags, payload)
            if stream == STREAM and kind in (DATA, HEADERS) and flags & END_STREAM:
                break
    if len(data) < 5:
        raise ProbeError("no HealthCheckResponse: an error status (e.g. an unknown service)")
    if data[0] != 0:
        raise ProbeError("a compressed answer, not asked for")
    length = int.from_bytes(data[1:5], "big")
    if len(data) < 5 + length:
        raise ProbeError("a truncated HealthCheckResponse")
    return response_status(data[5 : 5 + length])


def check(addr: str, service: str = "", timeout_s: float = 2.0) -> tuple[bool, str]:
    """(serving, what to print) of one Check call to ``addr``."""
    shown = f"{addr} ({service})" if service else addr
    try:
        status = check_status(addr, service, timeout_s)
    except ValueError as error:
        return False, f"{shown}: {error}"
    except socket.timeout:
        return False, f"{shown}: no answer within {timeout_s:g} s"
    except (ProbeError, OSError) as error:
        return False, f"{shown}: {error}"
    name = STATUS_NAMES.get(status, f"status {status}")
    if status == 0:
        # An empty answer: UNKNOWN, or an error status sent along with it (grpcio's
        # servicer answers an unknown service so; the code is in the trailers).
        name = "UNKNOWN (or an error status, e.g. an unknown service)"
    return status == SERVING, f"{shown}: {name}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fanout_py.health", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "addr",
        nargs="?",
        default=os.environ.get("FANOUT_HEALTH_ADDR") or DEFAULT_ADDR,
        help="host:port or http://host:port (default $FANOUT_HEALTH_ADDR, else 127.0.0.1:7000)",
    )
    parser.add_argument("--service", default="", help="the service to ask about; empty: the server")
    parser.add_argument(
        "--timeout-ms", type=int, default=2_000, help="how long connecting and the check may take"
    )
    args = parser.parse_args(argv)
    if args.timeout_ms < 1:
        parser.error("--timeout-ms must be at least 1")
    serving, line = check(args.addr, args.service, args.timeout_ms / 1000.0)
    print(line, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
