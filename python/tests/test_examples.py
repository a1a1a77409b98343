"""The guides' examples (python/examples) work: leaf + merger give the brute-force answer,
called directly and behind fanout's Rust root as docs/write-your-own-leaf.md runs them."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
import unittest

import grpc

from tests.harness import CALL_TIMEOUT_S, PYTHON_DIR, RequestStream, ServiceTestCase, fanout_binary, rpc_error
from fanout_py.stubs import health_pb2, knn_pb2, leaf_pb2, merger_pb2, pack, root_pb2, root_pb2_grpc

EXAMPLES = PYTHON_DIR / "examples"
SHARDS, VECTORS, DIM, SEED = 2, 150, 4, 9


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def brute_force(query, k, shards, vectors, dim, seed):
    """(distance as float32, id, shard) of the k nearest over the example's shards."""
    make_shard = load("minimal_leaf").make_shard
    candidates = [
        (knn_pb2.Neighbor(distance=sum((a - b) ** 2 for a, b in zip(vector, query))).distance, vector_id, shard)
        for shard in range(shards) for vector_id, vector in make_shard(seed, shard, vectors, dim)
    ]
    return sorted(candidates)[:k]


class ExamplesTest(ServiceTestCase):
    def example(self, name, *args, role):
        return self.start_command([sys.executable, EXAMPLES / f"{name}.py", "--listen", "127.0.0.1:0", *args], role=role)

    @unittest.skipUnless(fanout_binary(), "fanout's Rust binary is not built (target/debug/fanout or FANOUT_BIN)")
    def test_behind_the_rust_root_as_the_guides_run_them(self):
        """docs/write-your-own-leaf.md: two leaves and the merger with their default flags
        behind `fanout root`, and the guide's client."""
        leaves = [self.example("minimal_leaf", "--shard-id", i, "--shard-count", 2, role="leaf") for i in range(2)]
        merger = self.example("minimal_merger", role="merger")
        root = self.start_command(
            [fanout_binary(), "root", "--listen", "127.0.0.1:0", "--shard", f"0={leaves[0].address}",
             "--shard", f"1={leaves[1].address}", "--merger", f"http://{merger.address}"], role="root")
        request = knn_pb2.KnnRequest(vector=[0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.2, 0.9], k=5)
        response = root_pb2_grpc.RootStub(root.channel()).Query(
            root_pb2.QueryRequest(payload=pack(request)), timeout=CALL_TIMEOUT_S)
        merged = knn_pb2.KnnResponse.FromString(response.payload.value)
        expected = brute_force(list(request.vector), 5, shards=2, vectors=1000, dim=8, seed=0)
        self.assertEqual([(n.distance, n.id, n.shard_id) for n in merged.neighbors], expected)
        coverage = response.coverage
        self.assertEqual((coverage.shards_total, coverage.shards_answered, coverage.docs_covered), (2, 2, 2000))
        self.assertFalse(coverage.partial)
        self.assertEqual(sorted(timing.shard_id for timing in response.shards), [0, 1])

    def test_minimal_leaf_and_merger(self):
        leaves = [
            self.example("minimal_leaf", "--shard-id", i, "--shard-count", SHARDS, "--vectors", VECTORS,
                         "--dim", DIM, "--seed", SEED, "--drain-delay-ms", 300, role="leaf")
            for i in range(SHARDS)
        ]
        merger = self.example("minimal_merger", role="merger")
        rng = random.Random(1)
        request = knn_pb2.KnnRequest(vector=[rng.uniform(-1, 1) for _ in range(DIM)], k=6)
        partials = []
        for shard_id, leaf in enumerate(leaves):
            info = leaf.leaf().Info(leaf_pb2.InfoRequest(), timeout=CALL_TIMEOUT_S)
            response = leaf.leaf().Execute(
                leaf_pb2.ExecuteRequest(shard_id=shard_id, payload=pack(request)), timeout=CALL_TIMEOUT_S)
            self.assertEqual((response.docs_searched, response.generation), (info.doc_count, info.generation))
            partials.append(merger_pb2.MergeInput(partial=merger_pb2.ShardPartial(shard_id=shard_id, payload=response.payload)))
        messages = [merger_pb2.MergeInput(start=merger_pb2.MergeStart(request=pack(request), shard_count=SHARDS)),
                    *reversed(partials), merger_pb2.MergeInput(end=merger_pb2.MergeEnd())]
        (output,) = list(merger.merger().Merge(iter(messages), timeout=CALL_TIMEOUT_S))
        merged = knn_pb2.KnnResponse.FromString(output.result.payload.value)
        expected = brute_force(list(request.vector), 6, SHARDS, VECTORS, DIM, SEED)
        self.assertEqual([(n.distance, n.id, n.shard_id) for n in merged.neighbors], expected)
        self.assertEqual(merged.vectors_searched, SHARDS * VECTORS)
        # Contract errors.
        rpc_error(self, grpc.StatusCode.FAILED_PRECONDITION, leaves[0].leaf().Execute,
                  leaf_pb2.ExecuteRequest(shard_id=1, payload=pack(request)), timeout=CALL_TIMEOUT_S)
        rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, lambda: list(merger.merger().Merge(iter(messages[1:]), timeout=5)))
        rpc_error(self, grpc.StatusCode.ABORTED, lambda: list(merger.merger().Merge(iter(messages[:2]), timeout=5)))
        stream = RequestStream(messages[0])
        self.addCleanup(stream.close)
        started = time.monotonic()
        rpc_error(self, grpc.StatusCode.DEADLINE_EXCEEDED, lambda: list(merger.merger().Merge(stream, timeout=0.5)))
        self.assertLess(time.monotonic() - started, 2.0)
        after_end = messages + [partials[0]]
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, lambda: list(merger.merger().Merge(iter(after_end), timeout=5)))
        self.assertEqual(error.details(), "input after end")
        # Drain: NOT_SERVING at once, still answering during the drain delay.
        health = leaves[0].health()
        leaves[0].terminate()
        deadline = time.monotonic() + 2
        while health.Check(health_pb2.HealthCheckRequest(service="fanout.v1.Leaf"), timeout=2).status != \
                health_pb2.HealthCheckResponse.NOT_SERVING:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        leaves[0].leaf().Execute(leaf_pb2.ExecuteRequest(shard_id=0, payload=pack(request)), timeout=CALL_TIMEOUT_S)
        self.assertEqual(leaves[0].process.wait(timeout=10), 0)
