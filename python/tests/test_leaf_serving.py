"""Deadlines, overload, health and drain of a Python leaf (the sqlite leaf; the knn
leaf shares the code), against real processes."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import grpc

from tests.corpus import DOCUMENTS
from tests.harness import CALL_TIMEOUT_S, ServiceTestCase, retry_while_exhausted, rpc_error, write_jsonl
from fanout_py.stubs import health_pb2, leaf_pb2, pack, search_pb2

MODULE = "fanout_py.sqlite_leaf"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def search_request(query="video editor"):
    return leaf_pb2.ExecuteRequest(
        shard_id=0, payload=pack(search_pb2.ShardSearchRequest(query=query, k=3))
    )


class LeafServingTest(ServiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = Path(tempfile.mkdtemp(prefix="fanout-py-test-"))
        cls.addClassCleanup(shutil.rmtree, cls.folder, True)
        cls.corpus = write_jsonl(cls.folder / "corpus.jsonl", DOCUMENTS)

    def leaf(self, *extra):
        return self.start(
            MODULE, "--corpus", self.corpus, "--shard-id", 0, "--shard-count", 1, *extra
        )

    def test_the_deadline_is_honoured_and_frees_the_slot(self):
        service = self.leaf("--delay-ms", 1500, "--max-in-flight", 1)
        leaf = service.leaf()
        started = time.monotonic()
        rpc_error(self, grpc.StatusCode.DEADLINE_EXCEEDED, leaf.Execute, search_request(), timeout=0.3)
        self.assertLess(time.monotonic() - started, 1.0)
        # The timed-out call stopped sleeping at its deadline: the one slot is free long
        # before its 1.5 s delay would have ended.
        started = time.monotonic()
        response = retry_while_exhausted(
            lambda: leaf.Execute(search_request(), timeout=CALL_TIMEOUT_S), timeout_s=1.0
        )
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 1.4)
        self.assertLess(elapsed, 2.8)
        self.assertGreaterEqual(response.timings.queue_micros, 1_400_000, "the delay is queue time")
        self.assertEqual(response.timings.queue_depth, 0)

    def test_over_max_in_flight_is_resource_exhausted_at_once(self):
        service = self.leaf("--delay-ms", 1500, "--max-in-flight", 2)
        leaf = service.leaf()
        slow = [leaf.Execute.future(search_request(), timeout=CALL_TIMEOUT_S) for _ in range(2)]
        time.sleep(0.4)  # both arrived and are sleeping
        started = time.monotonic()
        error = rpc_error(
            self, grpc.StatusCode.RESOURCE_EXHAUSTED, leaf.Execute, search_request(), timeout=5
        )
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertIn("limit 2", error.details())
        self.assertIn(("fanout-retryable", "true"), tuple(error.trailing_metadata() or ()))
        # Info is not an Execute call: it still answers.
        leaf.Info(leaf_pb2.InfoRequest(), timeout=2)
        # Cancelled calls leave at once (the delay honours cancellation): both slots are
        # free again long before the 1.1 s left of their delay. The server learns of each
        # cancellation on its own, so the proof is a pair admitted together, not one call.
        cancelled = time.monotonic()
        for future in slow:
            future.cancel()
        while True:
            admitted = time.monotonic()
            self.assertLess(admitted - cancelled, 1.0, "the cancelled calls kept their slots")
            pair = [leaf.Execute.future(search_request(), timeout=CALL_TIMEOUT_S) for _ in range(2)]
            time.sleep(0.3)  # a refusal is answered at once; an admitted call sleeps 1.5 s
            if not any(future.done() for future in pair):
                break
            for future in pair:
                future.cancel()
            time.sleep(0.05)
        depths = sorted(future.result().timings.queue_depth for future in pair)
        self.assertEqual(depths, [0, 1], "the pair ran together on the two freed slots")

    def test_health_turns_not_serving_on_sigterm_and_the_leaf_answers_while_draining(self):
        service = self.leaf("--drain-delay-ms", 2000, "--grace-ms", 2000)
        health = service.health()
        for name in ("", "fanout.v1.Leaf"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            self.assertEqual(status, SERVING, name)
        rpc_error(
            self, grpc.StatusCode.NOT_FOUND, health.Check,
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5,
        )
        leaf = service.leaf()
        leaf.Execute(search_request(), timeout=5)
        signalled = time.monotonic()
        service.terminate()
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            if status == NOT_SERVING:
                break
            self.assertLess(time.monotonic() - signalled, 1.0, "health did not turn NOT_SERVING")
            time.sleep(0.02)
        self.assertEqual(
            health.Check(health_pb2.HealthCheckRequest(service="fanout.v1.Leaf"), timeout=5).status,
            NOT_SERVING,
        )
        # Still answering during the drain delay.
        response = leaf.Execute(search_request(), timeout=5)
        self.assertEqual(response.docs_searched, len(DOCUMENTS))
        self.assertLess(time.monotonic() - signalled, 2.0)
        self.assertEqual(service.process.wait(timeout=10), 0)
        self.assertGreaterEqual(time.monotonic() - signalled, 1.9)
        self.assertIn("stopped", service.log_text())
