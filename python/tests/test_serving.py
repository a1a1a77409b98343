"""The stop signal's handler of every Python server (fanout_py.serving) takes no lock.

Python runs a signal handler in the main thread between two of its bytecodes, possibly
while that thread holds a lock; a handler that then takes the same lock waits for ever.
It happened: the handler called threading.Event.set while the main thread polled the
same Event with Event.wait, and a SIGTERM that landed inside wait left a leaf that
never stopped. Watching every builtin call the handler makes (sys.setprofile) shows
whether it takes a lock, without waiting for that rare moment."""

from __future__ import annotations

import signal
import sys
import threading
import time
import unittest

import grpc

from tests.harness import ServiceTestCase
from fanout_py import serving
from fanout_py.stubs import health_pb2


def builtin_calls_of(function, *args):
    """Names of the builtin functions and methods ``function(*args)`` calls."""
    calls = []

    def profile(frame, event, arg):
        if event == "c_call":
            calls.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        function(*args)
    finally:
        sys.setprofile(None)
    return calls


class StopHandlerTest(unittest.TestCase):
    def test_the_handler_takes_no_lock(self):
        server = serving.Server("leaf", [], lambda _server: None, listen="127.0.0.1:0", workers=1)
        self.addCleanup(server.server.stop, None)
        calls = builtin_calls_of(server.request_stop, signal.SIGTERM, None)
        locking = [name for name in calls if "acquire" in name or "__enter__" in name or "wait" in name]
        self.assertEqual(locking, [], f"the stop handler calls {calls}")
        started = time.monotonic()
        server.wait_and_drain()  # returns at once: the flag is set
        self.assertLess(time.monotonic() - started, 5.0)

    def test_the_check_sees_a_handler_that_locks(self):
        event = threading.Event()
        calls = builtin_calls_of(lambda *_: event.set(), signal.SIGTERM, None)
        self.assertTrue(any("__enter__" in name or "acquire" in name for name in calls), calls)


class SigtermTest(ServiceTestCase):
    def test_sigterm_twice_drains_once_and_exits(self):
        service = self.start("fanout_py.knn_leaf", "--shard-id", 0, "--shard-count", 1, "--vectors", 10,
                             "--dim", 2, "--drain-delay-ms", 200)
        health = service.health()
        service.terminate()
        service.terminate()
        status = None
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            except grpc.RpcError:
                break
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.01)
        self.assertEqual(status, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.assertEqual(service.process.wait(timeout=15), 0)


if __name__ == "__main__":
    unittest.main()
