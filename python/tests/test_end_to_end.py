"""A whole search done by hand (scatter to two sqlite leaves, stream the partials into
the top-k merger, fetch the winners), and, when fanout's Rust binary is built, the same
leaves and merger behind a real root."""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

from tests.corpus import DOCUMENTS
from tests.harness import CALL_TIMEOUT_S, ServiceTestCase, fanout_binary, write_jsonl
from fanout_py.stubs import (
    knn_pb2, leaf_pb2, merger_pb2, pack, root_pb2, root_pb2_grpc, search_pb2, search_pb2_grpc,
)
from fanout_py import knn_data

QUERY = "secure ssh server compiler video editor"


class ScatterGatherTest(ServiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = Path(tempfile.mkdtemp(prefix="fanout-py-test-"))
        cls.addClassCleanup(shutil.rmtree, cls.folder, True)
        corpus = write_jsonl(cls.folder / "corpus.jsonl", DOCUMENTS)
        cls.leaves = [
            cls.start_shared("fanout_py.sqlite_leaf", "--corpus", corpus, "--shard-id", i, "--shard-count", 2)
            for i in range(2)
        ]
        cls.merger = cls.start_shared("fanout_py.topk_merger", role="merger")

    def test_search_then_fetch(self):
        request = search_pb2.ShardSearchRequest(query=QUERY, k=6)
        partials, all_hits, total = [], [], 0
        for shard_id, leaf in enumerate(self.leaves):
            response = leaf.leaf().Execute(
                leaf_pb2.ExecuteRequest(shard_id=shard_id, payload=pack(request)), timeout=CALL_TIMEOUT_S
            )
            result = search_pb2.ShardSearchResponse.FromString(response.payload.value)
            all_hits.extend(result.hits)
            total += result.total_hits
            partials.append(merger_pb2.MergeInput(partial=merger_pb2.ShardPartial(
                shard_id=shard_id, replica=leaf.address, payload=response.payload)))
        messages = [
            merger_pb2.MergeInput(start=merger_pb2.MergeStart(request=pack(request), shard_count=2)),
            *reversed(partials),
            merger_pb2.MergeInput(end=merger_pb2.MergeEnd()),
        ]
        (output,) = list(self.merger.merger().Merge(iter(messages), timeout=CALL_TIMEOUT_S))
        merged = search_pb2.ShardSearchResponse.FromString(output.result.payload.value)
        expected = sorted(all_hits, key=lambda h: (-h.score, h.id, h.shard_id))[:6]
        self.assertEqual([(h.id, h.score, h.shard_id) for h in merged.hits],
                         [(h.id, h.score, h.shard_id) for h in expected])
        self.assertEqual(merged.total_hits, total)
        self.assertEqual(merged.docs_searched, len(DOCUMENTS))
        # Phase two: each shard fetches its own winners.
        titles = {d["id"]: d["title"] for d in DOCUMENTS}
        for shard_id, leaf in enumerate(self.leaves):
            mine = [h for h in merged.hits if h.shard_id == shard_id]
            fetch = search_pb2.FetchRequest(hits=mine, generation=merged.generation, fields=["title"])
            response = leaf.leaf().Execute(
                leaf_pb2.ExecuteRequest(shard_id=shard_id, payload=pack(fetch)), timeout=CALL_TIMEOUT_S
            )
            docs = search_pb2.FetchResponse.FromString(response.payload.value).docs
            self.assertEqual([d.id for d in docs], [h.id for h in mine])
            for doc in docs:
                self.assertTrue(doc.found)
                self.assertEqual(doc.fields["title"], titles[doc.id])


@unittest.skipUnless(fanout_binary(), "fanout's Rust binary is not built (target/debug/fanout or FANOUT_BIN)")
class BehindTheRustRootTest(ServiceTestCase):
    """Python leaves and mergers behind `fanout root`: the contracts, not the code."""

    def root(self, leaves, merger=None):
        command = [fanout_binary(), "root", "--listen", "127.0.0.1:0"]
        if merger is not None:  # else the root merges in-process (Rust TopKMerge)
            command += ["--merger", f"http://{merger.address}"]
        for shard_id, leaf in enumerate(leaves):
            command += ["--shard", f"{shard_id}={leaf.address}"]
        return self.start_command(command, role="root")

    def test_search_through_the_root(self):
        folder = Path(tempfile.mkdtemp(prefix="fanout-py-test-"))
        self.addCleanup(shutil.rmtree, folder, True)
        corpus = write_jsonl(folder / "corpus.jsonl", DOCUMENTS)
        leaves = [
            self.start("fanout_py.sqlite_leaf", "--corpus", corpus, "--shard-id", i, "--shard-count", 2)
            for i in range(2)
        ]
        answers = []
        for merger in (self.start("fanout_py.topk_merger", role="merger"), None):
            root = self.root(leaves, merger)
            search = search_pb2_grpc.SearchStub(root.channel())
            response = search.Search(
                search_pb2.SearchRequest(query=QUERY, k=5, snippets=True), timeout=CALL_TIMEOUT_S
            )
            self.assertEqual(len(response.hits), 5)
            self.assertEqual(response.coverage.shards_answered, 2)
            self.assertEqual(response.coverage.docs_covered, len(DOCUMENTS))
            titles = {d["id"]: d["title"] for d in DOCUMENTS}
            for hit in response.hits:
                self.assertEqual(hit.fields["title"], titles[hit.id])
            answers.append([(h.id, h.score, h.shard_id) for h in response.hits])
        self.assertEqual(answers[0], answers[1], "the Python and the Rust top-k merge agree")

    def test_knn_through_the_generic_root_query(self):
        leaves = [
            self.start("fanout_py.knn_leaf", "--shard-id", i, "--shard-count", 2, "--vectors", 100,
                       "--dim", 4, "--seed", 3)
            for i in range(2)
        ]
        root = self.root(leaves, self.start("fanout_py.knn_merger", role="merger"))
        request = knn_pb2.KnnRequest(vector=[0.1, -0.2, 0.3, 0.0], k=7)
        response = root_pb2_grpc.RootStub(root.channel()).Query(
            root_pb2.QueryRequest(payload=pack(request)), timeout=CALL_TIMEOUT_S
        )
        merged = knn_pb2.KnnResponse.FromString(response.payload.value)
        expected = knn_data.exact_knn(list(request.vector), 7, 2, 100, 4, 3)
        self.assertEqual([(n.id, n.distance, n.shard_id) for n in merged.neighbors], expected)
        self.assertEqual(response.coverage.docs_covered, 200)


if __name__ == "__main__":
    unittest.main()
