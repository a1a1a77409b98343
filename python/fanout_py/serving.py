"""What every Python fanout server shares, as fanout's Rust servers do it.

- A ``grpc.server`` on a bounded thread pool. ``maximum_concurrent_rpcs`` equals the
  pool, so a burst beyond it is refused at once with RESOURCE_EXHAUSTED (retryable)
  instead of queueing without bound.
- ``grpc.health.v1.Health``: "" (the whole server) and each service name
  ("fanout.v1.Leaf", "fanout.v1.Merger") are SERVING once the server runs.
- SIGTERM / SIGINT drain: health turns NOT_SERVING at once, the server keeps
  answering for ``--drain-delay-ms`` (default 0, time for the root's health checks to
  notice), then ``server.stop(grace)`` with ``--grace-ms`` (default 10000) lets calls
  in flight finish while refusing new ones.
- The announce line on stdout, flushed, after the port is bound and serving:
  ``fanout leaf listening on 127.0.0.1:PORT`` (``--listen HOST:0`` picks a free port;
  the line carries the real one). Logs go to stderr, stdout stays clean.
- Keepalive: fanout's root pings leaves every 20 s, idle or not
  (root/src/replica.rs KEEPALIVE_INTERVAL). gRPC core's default is to reject pings
  closer than 5 minutes apart without data and to send GOAWAY too_many_pings after
  two strikes; the options below accept pings every 10 s (half the root's interval,
  for jitter) without calls, and never count strikes.
- Gzip-compressed requests (the root sends its merge streams gzip) are decompressed by
  gRPC core; answers are sent uncompressed, which every client accepts.
  Server reflection is not offered (grpcio-reflection is not a dependency).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = logging.getLogger("fanout_py")

# fanout's root sends an HTTP/2 keepalive ping every 20 s (even without calls).
ROOT_KEEPALIVE_INTERVAL_MS = 20_000
# Accept pings this often: below the root's interval, with room for timer jitter.
MIN_PING_INTERVAL_MS = ROOT_KEEPALIVE_INTERVAL_MS // 2

SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    # 0 = never send GOAWAY too_many_pings, whatever the client does.
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]

DEFAULT_GRACE_MS = 10_000
# How often the main thread looks whether a signal asked it to stop.
STOP_POLL_S = 0.05


def add_serving_arguments(parser: argparse.ArgumentParser, default_workers: int) -> None:
    """The flags every server takes: --listen, --drain-delay-ms, --grace-ms, --threads."""
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT to listen on; port 0 picks a free port (announced on stdout)",
    )
    parser.add_argument(
        "--drain-delay-ms",
        type=int,
        default=0,
        help="after SIGTERM/SIGINT, keep answering this long with health NOT_SERVING",
    )
    parser.add_argument(
        "--grace-ms",
        type=int,
        default=DEFAULT_GRACE_MS,
        help="then wait at most this long for calls in flight",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_workers,
        help="gRPC worker threads (bounded); calls beyond them get RESOURCE_EXHAUSTED",
    )


def setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def announce(role: str, address: str) -> None:
    """Prints ``fanout <role> listening on <address>`` and flushes, as the Rust servers do."""
    sys.stdout.write(f"fanout {role} listening on {address}\n")
    sys.stdout.flush()


def _announced_address(listen: str, port: int) -> str:
    host, _, _ = listen.rpartition(":")
    if not host:
        host = "127.0.0.1"
    return f"{host}:{port}"


class Server:
    """A running fanout server: its gRPC server, health servicer and drain logic."""

    def __init__(
        self,
        role: str,
        service_names: Iterable[str],
        register: Callable[[grpc.Server], None],
        listen: str,
        workers: int,
        drain_delay_ms: int = 0,
        grace_ms: int = DEFAULT_GRACE_MS,
    ) -> None:
        self.role = role
        self.service_names = list(service_names)
        self.drain_delay_s = max(0, drain_delay_ms) / 1000.0
        self.grace_s = max(0, grace_ms) / 1000.0
        self.draining = threading.Event()
        # Set by the signal handler: a plain attribute, see request_stop.
        self._stop_requested = False
        workers = max(1, workers)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{role}-grpc"),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=workers,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        register(self.server)
        port = self.server.add_insecure_port(listen)
        if port == 0:
            raise SystemExit(f"cannot listen on {listen}")
        self.address = _announced_address(listen, port)

    def start(self) -> None:
        self.server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, serving)
        announce(self.role, self.address)
        log.info("%s serving on %s", self.role, self.address)

    def request_stop(self, *_args) -> None:
        """Signal handler (and test hook): begins the drain. It only sets a flag and
        takes no lock: Python runs a handler in the main thread between two of its
        bytecodes, possibly while that thread holds a lock. (With a threading.Event
        polled by Event.wait, a SIGTERM landing while wait held the Event's lock made
        Event.set in the handler wait for that lock for ever: a leaf that never stopped.)"""
        self._stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def wait_and_drain(self) -> None:
        """Blocks until SIGTERM/SIGINT, then drains and stops."""
        while not self._stop_requested:
            time.sleep(STOP_POLL_S)
        self.drain()

    def drain(self) -> None:
        log.info("%s draining: health NOT_SERVING for %.3f s", self.role, self.drain_delay_s)
        self.draining.set()
        # Every service, "" included, turns NOT_SERVING; later set() calls are ignored.
        self.health.enter_graceful_shutdown()
        if self.drain_delay_s > 0:
            threading.Event().wait(self.drain_delay_s)
        log.info("%s stopping; grace %.3f s for calls in flight", self.role, self.grace_s)
        self.server.stop(self.grace_s).wait()
        log.info("%s stopped", self.role)


def run(
    role: str,
    service_names: Iterable[str],
    register: Callable[[grpc.Server], None],
    args: argparse.Namespace,
) -> None:
    """Builds, starts, announces and serves until a signal drains the server."""
    server = Server(
        role,
        service_names,
        register,
        listen=args.listen,
        workers=args.threads,
        drain_delay_ms=args.drain_delay_ms,
        grace_ms=args.grace_ms,
    )
    server.install_signal_handlers()
    server.start()
    server.wait_and_drain()
