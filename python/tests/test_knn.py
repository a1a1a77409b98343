"""The k-NN workload: leaves and merger together give the exact brute-force answer."""

from __future__ import annotations

import random
import unittest

import grpc

from tests.harness import CALL_TIMEOUT_S, ServiceTestCase, rpc_error
from fanout_py import knn_data
from fanout_py.stubs import knn_pb2, leaf_pb2, merger_pb2, pack

SHARDS, VECTORS, DIM, SEED = 3, 300, 8, 7
KNN_URL = "type.googleapis.com/fanout.knn.v1.KnnRequest"


class KnnDataTest(unittest.TestCase):
    def test_vectors_are_deterministic_and_float32_exact(self):
        first = knn_data.make_vector(SEED, 1, 2, DIM)
        self.assertEqual(first, knn_data.make_vector(SEED, 1, 2, DIM))
        self.assertNotEqual(first, knn_data.make_vector(SEED, 2, 1, DIM))
        self.assertNotEqual(first, knn_data.make_vector(SEED + 1, 1, 2, DIM))
        for value in first:
            self.assertTrue(-1.0 <= value < 1.0)
            self.assertEqual(knn_data.f32(value), value)
        # Pinned, so that the generator (documented for other languages) cannot drift.
        self.assertEqual(knn_data.mix(0), 0xE220A8397B1DCDAF)


class KnnServicesTest(ServiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.leaves = [
            cls.start_shared(
                "fanout_py.knn_leaf", "--shard-id", i, "--shard-count", SHARDS,
                "--vectors", VECTORS, "--dim", DIM, "--seed", SEED,
            )
            for i in range(SHARDS)
        ]
        cls.merger = cls.start_shared("fanout_py.knn_merger", role="merger")

    def execute(self, shard_id, request):
        return self.leaves[shard_id].leaf().Execute(
            leaf_pb2.ExecuteRequest(shard_id=shard_id, payload=pack(request)), timeout=CALL_TIMEOUT_S
        )

    def test_leaves_and_merger_give_the_exact_answer(self):
        rng = random.Random(42)
        for k in (1, 5, 0, 50):
            query = [rng.uniform(-1, 1) for _ in range(DIM)]
            request = knn_pb2.KnnRequest(vector=query, k=k)
            messages = [merger_pb2.MergeInput(start=merger_pb2.MergeStart(request=pack(request), shard_count=SHARDS))]
            order = list(range(SHARDS))
            rng.shuffle(order)
            for shard_id in order:
                response = self.execute(shard_id, request)
                self.assertEqual(response.docs_searched, VECTORS)
                self.assertEqual(response.generation, f"knn-{SEED}-{SHARDS}x{VECTORS}x{DIM}")
                messages.append(merger_pb2.MergeInput(partial=merger_pb2.ShardPartial(
                    shard_id=shard_id, payload=response.payload)))
            messages.append(merger_pb2.MergeInput(end=merger_pb2.MergeEnd()))
            outputs = list(self.merger.merger().Merge(iter(messages), timeout=CALL_TIMEOUT_S))
            self.assertEqual(len(outputs), 1)
            merged = knn_pb2.KnnResponse.FromString(outputs[0].result.payload.value)
            expected = knn_data.exact_knn(list(request.vector), k or 10, SHARDS, VECTORS, DIM, SEED)
            self.assertEqual([(n.id, n.distance, n.shard_id) for n in merged.neighbors], expected)
            self.assertEqual(merged.vectors_searched, SHARDS * VECTORS)

    def test_info_and_errors(self):
        for shard_id, leaf in enumerate(self.leaves):
            info = leaf.leaf().Info(leaf_pb2.InfoRequest(), timeout=CALL_TIMEOUT_S)
            self.assertEqual((info.shard_id, info.shard_count, info.doc_count), (shard_id, SHARDS, VECTORS))
            self.assertEqual(list(info.capabilities), [KNN_URL])
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, self.execute, 0, knn_pb2.KnnRequest(vector=[0.0] * 3))
        self.assertIn("3 dimensions", error.details())
        rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, self.execute, 0,
                  knn_pb2.KnnRequest(vector=[float("nan")] * DIM))
        rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, self.execute, 0,
                  knn_pb2.KnnRequest(vector=[0.0] * DIM, k=10_001))
        rpc_error(
            self, grpc.StatusCode.FAILED_PRECONDITION, self.leaves[0].leaf().Execute,
            leaf_pb2.ExecuteRequest(shard_id=2, payload=pack(knn_pb2.KnnRequest(vector=[0.0] * DIM))),
            timeout=CALL_TIMEOUT_S,
        )

    def test_the_merger_rejects_nan_and_unknown_shards(self):
        def merge(partial_response, shard_id=0):
            start = merger_pb2.MergeStart(request=pack(knn_pb2.KnnRequest(vector=[0.0], k=3)), shard_count=2)
            messages = [
                merger_pb2.MergeInput(start=start),
                merger_pb2.MergeInput(partial=merger_pb2.ShardPartial(shard_id=shard_id, payload=pack(partial_response))),
                merger_pb2.MergeInput(end=merger_pb2.MergeEnd()),
            ]
            return list(self.merger.merger().Merge(iter(messages), timeout=CALL_TIMEOUT_S))

        bad = knn_pb2.KnnResponse(neighbors=[knn_pb2.Neighbor(id="x", distance=float("nan"))])
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, merge, bad)
        self.assertIn("NaN distance", error.details())
        rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, merge, knn_pb2.KnnResponse(), shard_id=2)


if __name__ == "__main__":
    unittest.main()
