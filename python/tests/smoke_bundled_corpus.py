"""Smoke test and measurements on the bundled corpus (not part of the unit tests).

    cd python && /tmp/pyvenv/bin/python -m tests.smoke_bundled_corpus [--shards 4] [--idle-s 0]

Starts S sqlite leaves over data/debian-descriptions.jsonl.gz (db cache in a temporary
folder unless --db-cache), the Python top-k merger and, when fanout's Rust binary is
built, a root in front of them; prints each leaf's build time, leaf latency per query
and, with a root, end-to-end Search latency. --idle-s N waits N seconds with the
connections idle and searches again (the root's 20 s keepalive pings must not get a
GOAWAY too_many_pings).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
import unittest

from tests.harness import REPO_DIR, ServiceTestCase, fanout_binary
from fanout_py.stubs import leaf_pb2, pack, search_pb2, search_pb2_grpc

CORPUS = REPO_DIR / "data" / "debian-descriptions.jsonl.gz"
QUERIES = [
    "free software video editor", "rust compiler", "ssh server", "python library for http",
    "gnome desktop theme", "kernel module", "image viewer", "database", "library", "package",
]


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))]


class Smoke(ServiceTestCase):
    shards = 4
    idle_s = 0.0
    db_cache = None

    def runTest(self):
        cache = self.db_cache or tempfile.mkdtemp(prefix="fanout-py-smoke-")
        if not self.db_cache:
            self.addCleanup(shutil.rmtree, cache, True)
        leaves = []
        for shard_id in range(self.shards):
            started = time.monotonic()
            leaves.append(self.start(
                "fanout_py.sqlite_leaf", "--corpus", CORPUS, "--shard-id", shard_id,
                "--shard-count", self.shards, "--db-cache", cache, "--skip-bad-lines",
            ))
            ready = re.search(r"ready in ([0-9.]+) s", leaves[-1].log_text())
            info = leaves[-1].leaf().Info(leaf_pb2.InfoRequest(), timeout=5)
            print(f"leaf {shard_id}: {info.doc_count} docs, build {ready.group(1) if ready else '?'} s, "
                  f"start to announce {time.monotonic() - started:.2f} s, generation {info.generation}")
        leaf = leaves[0].leaf()
        for query in QUERIES:
            latencies, result = [], None
            for _ in range(7):
                started = time.perf_counter()
                response = leaf.Execute(leaf_pb2.ExecuteRequest(
                    shard_id=0, payload=pack(search_pb2.ShardSearchRequest(query=query, k=10))), timeout=10)
                latencies.append((time.perf_counter() - started) * 1000)
                result = search_pb2.ShardSearchResponse.FromString(response.payload.value)
            print(f"shard 0 {query!r:32} total_hits {result.total_hits:6}  median {statistics.median(latencies):6.2f} ms")
        binary = fanout_binary()
        if not binary:
            print("no fanout binary: skipping the root")
            return
        merger = self.start("fanout_py.topk_merger", role="merger")
        command = [binary, "root", "--listen", "127.0.0.1:0", "--merger", f"http://{merger.address}"]
        for shard_id, service in enumerate(leaves):
            command += ["--shard", f"{shard_id}={service.address}"]
        root = self.start_command(command, role="root")
        search = search_pb2_grpc.SearchStub(root.channel())

        def run_queries(label):
            latencies = []
            for _ in range(3):
                for query in QUERIES:
                    started = time.perf_counter()
                    response = search.Search(search_pb2.SearchRequest(query=query, k=10, snippets=True), timeout=10)
                    latencies.append((time.perf_counter() - started) * 1000)
                    self.assertEqual(response.coverage.shards_answered, self.shards)
            print(f"root Search {label}: n={len(latencies)} p50 {percentile(latencies, 0.5):.1f} ms "
                  f"p90 {percentile(latencies, 0.9):.1f} ms max {max(latencies):.1f} ms; "
                  f"docs_covered {response.coverage.docs_covered}")
            return response

        response = run_queries("warm-up")
        for hit in response.hits[:3]:
            print(f"  {hit.score:8.4f} {hit.id:24} {hit.fields['title'][:50]}")
        if self.idle_s:
            time.sleep(self.idle_s)
            run_queries(f"after {self.idle_s:.0f} s idle")
            for service in [root, merger, *leaves]:
                self.assertNotIn("too_many_pings", service.log_text())
                self.assertNotIn("GOAWAY", service.log_text())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--idle-s", type=float, default=0.0)
    parser.add_argument("--db-cache")
    args = parser.parse_args()
    Smoke.shards, Smoke.idle_s, Smoke.db_cache = args.shards, args.idle_s, args.db_cache
    result = unittest.TextTestRunner(verbosity=2).run(Smoke())
    raise SystemExit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
