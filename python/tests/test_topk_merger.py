"""The top-k search merger: the streaming contract and the merge, over real gRPC."""

from __future__ import annotations

import itertools
import math
import random
import time
import unittest

import grpc

from tests.harness import RequestStream, ServiceTestCase, retry_while_exhausted, rpc_error
from fanout_py.mergekit import BoundedRanking
from fanout_py.stubs import common_pb2, health_pb2, merger_pb2, pack, search_pb2

MODULE = "fanout_py.topk_merger"


def start(k=10, shard_count=3):
    request = pack(search_pb2.ShardSearchRequest(query="debian", k=k))
    return merger_pb2.MergeInput(
        start=merger_pb2.MergeStart(request=request, shard_count=shard_count, request_id="r1")
    )


def partial(shard_id, hits, total_hits=None, generation="g1", docs=100):
    response = search_pb2.ShardSearchResponse(
        hits=[search_pb2.ShardHit(id=i, score=s, shard_id=99, doc_id=n) for n, (i, s) in enumerate(hits)],
        total_hits=len(hits) if total_hits is None else total_hits,
        generation=generation,
        docs_searched=docs,
    )
    return merger_pb2.MergeInput(
        partial=merger_pb2.ShardPartial(shard_id=shard_id, replica="127.0.0.1:1", payload=pack(response))
    )


def end():
    return merger_pb2.MergeInput(end=merger_pb2.MergeEnd(coverage=common_pb2.Coverage(shards_total=3)))


def merge(stub, messages, timeout=10):
    """The merged ShardSearchResponse of a complete merge call."""
    outputs = list(stub.Merge(iter(messages), timeout=timeout))
    results = [o for o in outputs if o.WhichOneof("kind") == "result"]
    assert len(results) == 1, outputs
    assert all(o.WhichOneof("kind") == "result" for o in outputs), "never sends enough"
    return search_pb2.ShardSearchResponse.FromString(results[0].result.payload.value)


def ranked(response):
    return [(h.id, h.score, h.shard_id) for h in response.hits]


class TopKMergerTest(ServiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.merger = cls.start_shared(MODULE, role="merger")

    def stub(self):
        return self.merger.merger()

    def test_health(self):
        health = self.merger.health()
        for name in ("", "fanout.v1.Merger"):
            self.assertEqual(
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status,
                health_pb2.HealthCheckResponse.SERVING,
            )

    def test_partials_in_any_order_give_one_answer(self):
        partials = [
            partial(0, [("d", 3.0), ("b", 1.0)], total_hits=40, generation=""),
            partial(1, [("c", 3.0), ("a", 1.0)], total_hits=2, generation="gen-a"),
            partial(2, [("e", 5.0)], total_hits=7, generation="gen-b"),
        ]
        answers = set()
        for order in itertools.permutations(range(3)):
            response = merge(self.stub(), [start(), *[partials[i] for i in order], end()])
            answers.add(tuple(ranked(response)))
            self.assertEqual(response.total_hits, 49)
            self.assertEqual(response.docs_searched, 300)
            # The first non-empty generation in arrival order.
            first = next(g for g in (["", "gen-a", "gen-b"][i] for i in order) if g)
            self.assertEqual(response.generation, first)
        self.assertEqual(
            answers,
            {(("e", 5.0, 2), ("c", 3.0, 1), ("d", 3.0, 0), ("a", 1.0, 1), ("b", 1.0, 0))},
        )

    def test_k_bounds_the_answer_and_zero_means_ten(self):
        many = lambda shard: [(f"s{shard}-{i}", float(shard * 8 + i)) for i in range(8)]  # noqa: E731
        response = merge(self.stub(), [start(k=3, shard_count=2), partial(0, many(0)), partial(1, many(1)), end()])
        self.assertEqual([h.id for h in response.hits], ["s1-7", "s1-6", "s1-5"])
        response = merge(self.stub(), [start(k=0, shard_count=2), partial(0, many(0)), partial(1, many(1)), end()])
        self.assertEqual(len(response.hits), 10)
        self.assertEqual(response.hits[9].id, "s0-6")

    def test_a_second_partial_for_a_shard_is_ignored(self):
        response = merge(
            self.stub(),
            [start(shard_count=2), partial(0, [("a", 1.0)]), partial(0, [("hedge-loser", 9.0)]),
             partial(1, [("b", 2.0)]), end()],
        )
        self.assertEqual([h.id for h in response.hits], ["b", "a"])
        self.assertEqual((response.total_hits, response.docs_searched), (2, 200))

    def test_bad_partials_are_invalid_argument(self):
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, merge, self.stub(),
            [start(shard_count=3), partial(3, [("c", 1.0)]), end()],
        )
        self.assertEqual(error.details(), "partial of shard 3 is for a shard >= shard_count 3")
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, merge, self.stub(),
            [start(), partial(0, [("ok", 1.0), ("bad", math.nan)]), end()],
        )
        self.assertEqual(error.details(), 'hit "bad" of shard 0 has a NaN score')
        wrong = merger_pb2.MergeInput(
            partial=merger_pb2.ShardPartial(shard_id=0, payload=pack(search_pb2.ShardSearchRequest()))
        )
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, merge, self.stub(), [start(), wrong, end()])
        self.assertIn("type.googleapis.com/fanout.search.v1.ShardSearchRequest", error.details())
        empty = merger_pb2.MergeInput(partial=merger_pb2.ShardPartial(shard_id=1))
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, merge, self.stub(), [start(), empty, end()])
        self.assertEqual(error.details(), "partial of shard 1 carries no payload")

    def test_stream_contract_violations(self):
        cases = [
            ([partial(0, []), end()], "first message must be start"),
            ([start(), start(), end()], "start sent twice"),
            ([start(), merger_pb2.MergeInput(), end()], "merge input message without a kind"),
            ([merger_pb2.MergeInput(start=merger_pb2.MergeStart(shard_count=1)), end()],
             "merge start carries no request payload"),
        ]
        for messages, details in cases:
            error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, merge, self.stub(), messages)
            self.assertEqual(error.details(), details)
        wrong_start = merger_pb2.MergeInput(
            start=merger_pb2.MergeStart(request=pack(search_pb2.ShardSearchResponse()), shard_count=1)
        )
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, merge, self.stub(), [wrong_start, end()])
        self.assertIn("fanout.search.v1.ShardSearchResponse", error.details())

    def test_input_after_end_ends_the_call_after_the_result(self):
        responses = self.stub().Merge(
            iter([start(), partial(0, [("a", 1.0)]), end(), partial(1, [("b", 2.0)])]), timeout=10
        )
        first = next(responses)
        self.assertEqual(first.WhichOneof("kind"), "result")
        with self.assertRaises(grpc.RpcError) as caught:
            next(responses)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(caught.exception.details(), "input after end")

    def test_input_ending_before_end_is_aborted(self):
        error = rpc_error(
            self, grpc.StatusCode.ABORTED, lambda: list(self.stub().Merge(iter([start(), partial(0, [])]), timeout=10))
        )
        self.assertEqual(error.details(), "merge input ended before end")

    def test_the_calls_deadline_is_honoured(self):
        stream = RequestStream(start(), partial(0, [("a", 1.0)]))
        self.addCleanup(stream.close)
        started = time.monotonic()
        rpc_error(
            self, grpc.StatusCode.DEADLINE_EXCEEDED,
            lambda: list(self.stub().Merge(stream, timeout=0.5)),
        )
        self.assertLess(time.monotonic() - started, 2.0)

    def test_id_prefix_diversity(self):
        service = self.start(MODULE, "--max-per-id-prefix", 1, "--prefix-chars", 3, role="merger")
        response = merge(
            service.merger(),
            [start(k=3, shard_count=2), partial(0, [("abc-1", 9.0), ("abc-2", 8.0), ("xyz-1", 7.0)]),
             partial(1, [("abc-3", 9.5), ("xyz-2", 7.5), ("def", 1.0)]), end()],
        )
        self.assertEqual([h.id for h in response.hits], ["abc-3", "xyz-2", "def"])


class SessionLimitTest(ServiceTestCase):
    def test_a_cut_stream_frees_its_session(self):
        service = self.start(MODULE, "--max-sessions", 1, role="merger")
        stub = service.merger()
        stream = RequestStream(start(shard_count=2), partial(0, [("a", 1.0)]))
        self.addCleanup(stream.close)
        call = stub.Merge(stream, timeout=30)
        time.sleep(0.3)  # the session is open on the merger
        error = rpc_error(
            self, grpc.StatusCode.RESOURCE_EXHAUSTED,
            lambda: list(stub.Merge(iter([start(), end()]), timeout=5)),
        )
        self.assertIn("merger overloaded", error.details())
        call.cancel()  # the stream is cut midway
        response = retry_while_exhausted(
            lambda: merge(stub, [start(shard_count=2), partial(1, [("b", 2.0)]), end()], timeout=5)
        )
        self.assertEqual([h.id for h in response.hits], ["b"])
        # And again: the limit of 1 is not held by anything.
        merge(stub, [start(shard_count=1), partial(0, [("c", 1.0)]), end()], timeout=5)

    def test_a_session_without_deadline_ends_after_max_session_ms(self):
        service = self.start(MODULE, "--max-session-ms", 700, role="merger")
        stream = RequestStream(start())
        self.addCleanup(stream.close)
        started = time.monotonic()
        error = rpc_error(
            self, grpc.StatusCode.DEADLINE_EXCEEDED, lambda: list(service.merger().Merge(stream))
        )
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.6)
        self.assertLess(elapsed, 3.0)
        self.assertIn("700 ms", error.details())


class BoundedRankingTest(unittest.TestCase):
    """The incremental merge equals sorting everything (with and without diversity)."""

    def test_incremental_equals_sorting_everything(self):
        rng = random.Random(0x5EED)
        for _ in range(300):
            k = rng.randrange(0, 12) or 10
            per_group = rng.choice([None, 1, 2, 3])
            hits = [
                search_pb2.ShardHit(id=f"{rng.choice('abcd')}-{rng.randrange(40):02}",
                                    score=rng.randrange(5) * 0.5, shard_id=rng.randrange(4))
                for _ in range(rng.randrange(60))
            ]
            ranking = BoundedRanking(
                k, key=lambda h: (-h.score, h.id, h.shard_id), max_per_group=per_group,
                group=(lambda h: h.id[:1]) if per_group else None,
            )
            for hit in hits:
                ranking.offer(hit)
            expected, counts = [], {}
            for hit in sorted(hits, key=lambda h: (-h.score, h.id, h.shard_id)):
                group = hit.id[:1]
                if per_group and counts.get(group, 0) >= per_group:
                    continue
                counts[group] = counts.get(group, 0) + 1
                expected.append(hit)
                if len(expected) == k:
                    break
            got = [(h.id, h.score, h.shard_id) for h in ranking.items()]
            self.assertEqual(got, [(h.id, h.score, h.shard_id) for h in expected])


if __name__ == "__main__":
    unittest.main()
