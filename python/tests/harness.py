"""Starting fanout_py services as real processes for the tests.

Each service runs as ``python -m fanout_py.<module> ... --listen 127.0.0.1:0``; the
harness reads its announce line (``fanout <role> listening on ADDR``) within a time
limit, keeps its stderr in a log file (shown when a test fails) and kills it at the
end of the test (or class) however the test ended. A watchdog ends the whole run if a
test hangs.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PYTHON_DIR.parent
if str(PYTHON_DIR) not in sys.path:
    sys.path.insert(0, str(PYTHON_DIR))

from fanout_py import stubs  # noqa: E402  (generates the stubs once, before any child)

import grpc  # noqa: E402

# No single test run may hang the machine: dump the stacks and exit after this long.
faulthandler.dump_traceback_later(int(os.environ.get("FANOUT_PY_TEST_WATCHDOG_S", "900")), exit=True)

START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10.0
_ANNOUNCE = re.compile(r"^fanout (\w+) listening on (\S+)$")


class Service:
    """One running service process."""

    def __init__(self, module: str, args, role: str, command=None) -> None:
        """Runs ``python -m module --listen 127.0.0.1:0 args...``, or ``command``."""
        self.module = module
        self._channel = None
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"{module.rsplit('.', 1)[-1]}-", suffix=".log", delete=False
        )
        env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), PYTHONUNBUFFERED="1")
        self.command = command or [
            sys.executable, "-m", module, "--listen", "127.0.0.1:0", *map(str, args)
        ]
        self.process = subprocess.Popen(
            self.command,
            cwd=PYTHON_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self._lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.address = self._wait_for_announce(role)

    def _pump(self) -> None:
        try:
            for line in self.process.stdout:
                self._lines.put(line.rstrip("\n"))
        except (ValueError, OSError):  # closed by kill()
            pass
        self._lines.put(None)

    def _wait_for_announce(self, role: str) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = f"{self.module} did not announce in time:\n{self.log_text()}"
                self.kill()
                raise AssertionError(message)
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.process.wait(timeout=5)
                message = (
                    f"{self.module} exited ({self.process.returncode}) before announcing:\n"
                    f"{self.log_text()}"
                )
                self.kill()
                raise AssertionError(message)
            match = _ANNOUNCE.match(line)
            if match:
                if match.group(1) != role:
                    raise AssertionError(f"{self.module} announced role {match.group(1)}, not {role}")
                return match.group(2)

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
            grpc.channel_ready_future(self._channel).result(timeout=CALL_TIMEOUT_S)
        return self._channel

    def leaf(self):
        return stubs.leaf_pb2_grpc.LeafStub(self.channel())

    def merger(self):
        return stubs.merger_pb2_grpc.MergerStub(self.channel())

    def health(self):
        return stubs.health_pb2_grpc.HealthStub(self.channel())

    def log_text(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.process.stdout is not None:
            try:
                self.process.stdout.close()
            except OSError:
                pass
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class ServiceTestCase(unittest.TestCase):
    """Starts services per test (``self.start``) or per class (``cls.start_shared``);
    both are killed by cleanups that run even when the test or setUp fails."""

    @classmethod
    def start_shared(cls, module: str, *args, role: str = "leaf") -> Service:
        service = Service(module, args, role)
        cls.addClassCleanup(service.kill)
        return service

    def start(self, module: str, *args, role: str = "leaf") -> Service:
        service = Service(module, args, role)
        self.addCleanup(service.kill)
        return service

    def start_command(self, command, role: str) -> Service:
        service = Service(os.path.basename(str(command[0])), (), role, command=[str(c) for c in command])
        self.addCleanup(service.kill)
        return service


def fanout_binary():
    """fanout's Rust binary when one is built (FANOUT_BIN, else target/debug/fanout)."""
    candidates = [os.environ.get("FANOUT_BIN", "")]
    candidates.append(str(REPO_DIR / "target" / "debug" / "fanout"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            # Absolute: the services run with python/ as their working folder.
            return os.path.abspath(candidate)
    return None


def rpc_error(test: unittest.TestCase, code: grpc.StatusCode, function, *args, **kwargs):
    """Calls ``function`` and asserts that it fails with ``code``; returns the error."""
    with test.assertRaises(grpc.RpcError) as caught:
        function(*args, **kwargs)
    error = caught.exception
    test.assertEqual(error.code(), code, error.details())
    return error


class RequestStream:
    """A request iterator fed by the test, for bidirectional streams kept open."""

    _END = object()

    def __init__(self, *messages) -> None:
        self._queue: "queue.Queue" = queue.Queue()
        for message in messages:
            self.send(message)

    def send(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        return item


def write_jsonl(path: Path, documents, gzip_it: bool = False) -> Path:
    import gzip
    import json

    data = "".join(json.dumps(document) + "\n" for document in documents).encode()
    if gzip_it:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def retry_while_exhausted(function, timeout_s: float = 3.0):
    """Calls ``function`` until it stops failing with RESOURCE_EXHAUSTED (a slot freed
    by a call that just ended may take a moment to be counted free)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return function()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
