"""The SQLite FTS5 search leaf, over real gRPC against real processes."""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

import grpc

from tests.corpus import DOCUMENTS
from tests.harness import CALL_TIMEOUT_S, ServiceTestCase, rpc_error, write_jsonl
from fanout_py.stubs import any_pb2, leaf_pb2, pack, search_pb2
from fanout_py import sqlite_leaf

SEARCH_URL = "type.googleapis.com/fanout.search.v1.ShardSearchRequest"
FETCH_URL = "type.googleapis.com/fanout.search.v1.FetchRequest"
MODULE = "fanout_py.sqlite_leaf"


def execute(leaf, shard_id, message, timeout=CALL_TIMEOUT_S):
    return leaf.Execute(
        leaf_pb2.ExecuteRequest(shard_id=shard_id, payload=pack(message), request_id="t"),
        timeout=timeout,
    )


def search(leaf, shard_id, query, **fields):
    response = execute(leaf, shard_id, search_pb2.ShardSearchRequest(query=query, **fields))
    return response, search_pb2.ShardSearchResponse.FromString(response.payload.value)


class PartitionTest(unittest.TestCase):
    def test_fnv1a_and_the_rust_indexers_pinned_shards(self):
        # leaf/src/partition.rs pins these: the Python partition must be the same.
        self.assertEqual(sqlite_leaf.fnv1a_64(b""), 0xCBF29CE484222325)
        self.assertEqual(sqlite_leaf.fnv1a_64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(sqlite_leaf.fnv1a_64(b"foobar"), 0x85944171F73967E8)
        for doc_id, shards, expected in [
            ("a", 4, 0), ("foobar", 4, 0), ("foobar", 7, 6), ("0ad", 4, 2), ("4983", 4, 3),
            ("zlib1g", 16, 8),
        ]:
            self.assertEqual(sqlite_leaf.shard_for_id(doc_id, shards), expected, doc_id)

    def test_query_words(self):
        self.assertEqual(sqlite_leaf.query_words("The video-editor, for Video!"), ["video", "editor"])
        with self.assertRaises(sqlite_leaf.ContractError):
            sqlite_leaf.query_words("the and of ... !!!")


class FakeCall:
    """Stands in for leafkit.Call in-process."""

    def __init__(self, stop_after_checks=None, expired=False):
        self._expired = expired
        self.work_started = None

    def should_stop(self):
        return True

    def expired(self):
        return self._expired

    def cancelled(self):
        return not self._expired

    def check(self, during="the work"):
        from fanout_py.leafkit import Call

        Call.check(self, during)

    def start_work(self):
        pass


class ProgressHandlerTest(unittest.TestCase):
    """The progress handler stops a running SQLite query once the call must stop."""

    def test_a_running_query_stops_when_the_deadline_passes_or_the_caller_goes(self):
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        corpus = write_jsonl(folder / "c.jsonl", DOCUMENTS)
        db = sqlite_leaf.ShardDatabase(str(corpus), 0, 1, None, threads=1)
        leaf = sqlite_leaf.SqliteLeaf(db)
        request = search_pb2.ShardSearchRequest(query="video editor server compiler", k=5)
        for expired, code in [(True, grpc.StatusCode.DEADLINE_EXCEEDED), (False, grpc.StatusCode.CANCELLED)]:
            call = FakeCall(expired=expired)
            # acquire() itself checks first; take the connection as a live call would.
            conn = db._pool.get()
            conn.set_progress_handler(lambda: 1 if call.should_stop() else 0, 100)
            with self.assertRaises(sqlite_leaf.sqlite3.OperationalError):
                leaf._search(conn, sqlite_leaf.match_expression(request.query, 0), 5, None, set(), call)
            error = sqlite_leaf._interrupted(sqlite_leaf.sqlite3.OperationalError("interrupted"), call, "the search")
            self.assertEqual(error.code, code)
            db.release(conn)
            # Work never starts for a call that must stop: the wait for a slot checks first.
            with self.assertRaises(sqlite_leaf.ContractError) as caught:
                leaf.search(request, call)
            self.assertEqual(caught.exception.code, code)


class SqliteLeafTest(ServiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = Path(tempfile.mkdtemp(prefix="fanout-py-test-"))
        cls.addClassCleanup(shutil.rmtree, cls.folder, True)
        cls.corpus = write_jsonl(cls.folder / "corpus.jsonl", DOCUMENTS)
        cls.corpus_gz = write_jsonl(cls.folder / "corpus.data", DOCUMENTS, gzip_it=True)
        cls.shards = [
            cls.start_shared(MODULE, "--corpus", cls.corpus, "--shard-id", i, "--shard-count", 2)
            for i in range(2)
        ]
        # The whole corpus in one shard, gzip (named .data: detected by magic bytes),
        # with a db cache.
        cls.cache = cls.folder / "cache"
        cls.whole = cls.start_shared(
            MODULE, "--corpus", cls.corpus_gz, "--shard-id", 0, "--shard-count", 1,
            "--db-cache", cls.cache,
        )

    def test_info_agrees_with_execute_and_the_partition(self):
        infos = [shard.leaf().Info(leaf_pb2.InfoRequest(), timeout=CALL_TIMEOUT_S) for shard in self.shards]
        self.assertEqual(sum(info.doc_count for info in infos), len(DOCUMENTS))
        self.assertEqual(infos[0].generation, infos[1].generation, "one build, one generation")
        self.assertTrue(infos[0].generation.startswith("sqlite-"))
        for shard_id, (shard, info) in enumerate(zip(self.shards, infos)):
            self.assertEqual((info.shard_id, info.shard_count), (shard_id, 2))
            self.assertEqual(sorted(info.capabilities), [FETCH_URL, SEARCH_URL])
            expected_ids = {d["id"] for d in DOCUMENTS if sqlite_leaf.shard_for_id(d["id"], 2) == shard_id}
            self.assertEqual(info.doc_count, len(expected_ids))
            response, result = search(shard.leaf(), shard_id, "video editor server compiler", k=100)
            self.assertEqual(response.docs_searched, info.doc_count)
            self.assertEqual(result.docs_searched, info.doc_count)
            self.assertEqual(response.generation, info.generation)
            self.assertEqual(result.generation, info.generation)
            self.assertTrue(result.hits)
            for hit in result.hits:
                self.assertIn(hit.id, expected_ids)
                self.assertEqual(hit.shard_id, shard_id)
            self.assertGreater(response.timings.service_micros, 0)
            self.assertEqual(response.timings.queue_depth, 0)

    def test_search_ranks_by_score_then_id_and_counts_every_match(self):
        leaf = self.whole.leaf()
        _, result = search(leaf, 0, "video editor", k=100)
        ids = [hit.id for hit in result.hits]
        expected = {
            d["id"] for d in DOCUMENTS
            if any(word in (d["title"] + " " + d["text"]).lower() for word in ("video", "editor"))
        }
        self.assertEqual(set(ids), expected)
        self.assertEqual(result.total_hits, len(expected))
        keys = [(-hit.score, hit.id) for hit in result.hits]
        self.assertEqual(keys, sorted(keys))
        self.assertTrue(all(hit.score > 0 for hit in result.hits))
        # Both words in the title beat one word in the text.
        self.assertLess(ids.index("shotcut"), ids.index("blender"))
        for hit in result.hits:
            self.assertEqual(hit.segment_ord, 0)
            self.assertGreater(hit.doc_id, 0)
        # Punctuation is never syntax; stop words and case do not matter.
        _, same = search(leaf, 0, 'The "VIDEO" -editor: (for)', k=100)
        self.assertEqual([hit.id for hit in same.hits], ids)
        # k = 0 means 10.
        _, default = search(leaf, 0, "video editor")
        self.assertEqual([hit.id for hit in default.hits], ids[:10])
        # Non-ASCII words.
        _, unicode_hits = search(leaf, 0, "überblick")
        self.assertEqual([hit.id for hit in unicode_hits.hits], ["übersicht"])

    def test_search_after_pages_through_every_hit_once(self):
        leaf = self.whole.leaf()
        _, everything = search(leaf, 0, "server editor video compiler", k=100)
        pages, after = [], None
        while True:
            fields = {"k": 4}
            if after is not None:
                fields["search_after"] = after
            _, page = search(leaf, 0, "server editor video compiler", **fields)
            self.assertEqual(page.total_hits, everything.total_hits, "total ignores search_after")
            if not page.hits:
                break
            pages.extend(page.hits)
            after = search_pb2.SearchAfter(score=page.hits[-1].score, id=page.hits[-1].id)
        self.assertEqual([(h.id, h.score) for h in pages], [(h.id, h.score) for h in everything.hits])

    def test_id_filters(self):
        leaf = self.whole.leaf()
        only = [search_pb2.TermFilter(field="id", value="vlc")]
        _, result = search(leaf, 0, "video", k=100, filters=only)
        self.assertEqual([hit.id for hit in result.hits], ["vlc"])
        self.assertEqual(result.total_hits, 1)
        _, none = search(leaf, 0, "video", filters=[search_pb2.TermFilter(field="id", value="gcc")])
        self.assertEqual((list(none.hits), none.total_hits), ([], 0))
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 0, "video",
            filters=[search_pb2.TermFilter(field="title", value="x")],
        )
        self.assertIn('only "id" can be filtered on', error.details())

    def test_fetch_returns_one_doc_per_hit_in_order(self):
        leaf = self.whole.leaf()
        hits = [search_pb2.ShardHit(id=i) for i in ("vlc", "no-such-doc", "kdenlive", "ffmpeg")]
        response = execute(leaf, 0, search_pb2.FetchRequest(hits=hits, snippets=True, query="video editor"))
        self.assertEqual(response.generation, leaf.Info(leaf_pb2.InfoRequest(), timeout=5).generation)
        docs = search_pb2.FetchResponse.FromString(response.payload.value).docs
        self.assertEqual([d.id for d in docs], ["vlc", "no-such-doc", "kdenlive", "ffmpeg"])
        self.assertEqual([d.found for d in docs], [True, False, True, True])
        self.assertEqual(dict(docs[0].fields), {"id": "vlc", "title": "Multimedia player"})
        self.assertIn("<b>video</b>", docs[0].snippet)
        self.assertIn("<b>editor</b>", docs[2].snippet)
        self.assertIn("&amp;", docs[3].snippet)  # the text is HTML-escaped
        self.assertIn("&lt;formats&gt;", docs[3].snippet)
        self.assertEqual(dict(docs[1].fields), {})
        text_only = execute(leaf, 0, search_pb2.FetchRequest(hits=hits[:1], fields=["text"]))
        doc = search_pb2.FetchResponse.FromString(text_only.payload.value).docs[0]
        self.assertEqual(list(doc.fields), ["text"])
        self.assertEqual(doc.snippet, "")
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, execute, leaf, 0,
            search_pb2.FetchRequest(hits=hits, fields=["body"]),
        )
        self.assertIn("unknown stored field", error.details())

    def test_request_errors(self):
        leaf = self.shards[1].leaf()
        error = rpc_error(self, grpc.StatusCode.FAILED_PRECONDITION, search, leaf, 0, "video")
        self.assertIn("serves shard 1", error.details())
        bad_url = "type.googleapis.com/acme.Unknown" + "x" * 500
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, leaf.Execute,
            leaf_pb2.ExecuteRequest(shard_id=1, payload=any_pb2.Any(type_url=bad_url, value=b"")),
            timeout=CALL_TIMEOUT_S,
        )
        self.assertIn("acme.Unknown", error.details())
        self.assertIn(SEARCH_URL, error.details())
        self.assertLess(len(error.details()), 400, "the type URL is quoted up to 128 characters")
        rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, leaf.Execute,
            leaf_pb2.ExecuteRequest(shard_id=1), timeout=CALL_TIMEOUT_S,
        )
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, leaf.Execute,
            leaf_pb2.ExecuteRequest(shard_id=1, payload=any_pb2.Any(type_url=SEARCH_URL, value=b"\xff\xff\xff")),
            timeout=CALL_TIMEOUT_S,
        )
        self.assertIn("does not decode", error.details())
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 1, "title:video",
            mode=search_pb2.QUERY_MODE_SYNTAX,
        )
        self.assertEqual(error.details(), "syntax mode is not supported by this leaf")
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 1, "video", k=10_001)
        self.assertIn("at most 10000", error.details())
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 1, "the, of & a!")
        self.assertEqual(error.details(), "query has no searchable terms")

    def test_limits_and_quoting(self):
        leaf = self.shards[0].leaf()
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 0, "v" * 16_385)
        self.assertIn("16385 bytes", error.details())
        self.assertIn("max query bytes", error.details())
        self.assertIn("16384", error.details())
        search(leaf, 0, "video " + "v" * 16_000)  # under the limit: fine
        many = " ".join(f"w{i}" for i in range(1_025))
        error = rpc_error(self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 0, many)
        self.assertIn("1025 distinct words", error.details())
        self.assertIn("max query terms", error.details())
        self.assertIn("1024", error.details())
        search(leaf, 0, " ".join(f"w{i}" for i in range(1_024)))  # at the limit: fine
        long_field = "f" * 5_000
        error = rpc_error(
            self, grpc.StatusCode.INVALID_ARGUMENT, search, leaf, 0, "video",
            filters=[search_pb2.TermFilter(field=long_field, value="x")],
        )
        self.assertIn('"' + "f" * 64 + '"... (5000 bytes)', error.details())
        self.assertNotIn("f" * 65, error.details())
        self.assertLessEqual(len(error.details().encode()), 1024)

    def test_the_db_cache_is_reused(self):
        files = list(self.cache.glob("*.db"))
        self.assertEqual(len(files), 1, files)
        built = files[0].stat().st_mtime_ns
        again = self.start(
            MODULE, "--corpus", self.corpus_gz, "--shard-id", 0, "--shard-count", 1,
            "--db-cache", self.cache,
        )
        info = again.leaf().Info(leaf_pb2.InfoRequest(), timeout=CALL_TIMEOUT_S)
        first = self.whole.leaf().Info(leaf_pb2.InfoRequest(), timeout=CALL_TIMEOUT_S)
        self.assertEqual(info, first)
        self.assertEqual([f.stat().st_mtime_ns for f in self.cache.glob("*.db")], [built])
        self.assertIn("reusing", again.log_text())

    def test_a_bad_corpus_line_fails_the_start_unless_skipped(self):
        corpus = write_jsonl(self.folder / "bad.jsonl", DOCUMENTS[:3] + [DOCUMENTS[0]])
        with self.assertRaises(AssertionError) as caught:
            self.start(MODULE, "--corpus", corpus, "--shard-id", 0, "--shard-count", 1)
        self.assertIn("bad input line 4", str(caught.exception))
        leaf = self.start(
            MODULE, "--corpus", corpus, "--shard-id", 0, "--shard-count", 1, "--skip-bad-lines"
        )
        self.assertEqual(leaf.leaf().Info(leaf_pb2.InfoRequest(), timeout=5).doc_count, 3)


if __name__ == "__main__":
    unittest.main()
