"""A fanout.v1.Merger for the search workload: the global top k, streaming.

    python -m fanout_py.topk_merger --listen 127.0.0.1:0 \\
        [--max-per-id-prefix N --prefix-chars C] [--max-sessions 256] [--max-session-ms 60000]

It mirrors fanout's Rust TopKMerge (merger/src/top_k.rs) and its service's contract
(fanout_py.mergekit), except that anything sent after ``end`` ends the call with
INVALID_ARGUMENT "input after end":

- ``start.request`` must be a ShardSearchRequest; k comes from it (0 = 10).
  ``search_after`` needs nothing here: every leaf already skipped up to it.
- Each partial's ShardSearchResponse is folded into a bounded top k as it arrives
  (score descending, id ascending, then shard id), hits stamped with the partial's
  shard id. A partial is checked whole before any of it is merged: a shard id >=
  shard_count, a missing or foreign payload, a NaN score are INVALID_ARGUMENT and
  leave the merge as it was. A second partial for a shard already merged (a hedge
  that lost) is ignored.
- ``end`` is answered with one result: a ShardSearchResponse with the hits,
  total_hits and docs_searched summed, the first non-empty generation (a shard that
  disagrees is logged). It never sends ``enough``: an unanswered shard may always hold
  a better hit.

Diversity (optional, not in the Rust merger): ``--max-per-id-prefix N`` keeps at most N
hits whose ids share their first ``--prefix-chars`` characters (default 8). It is on
the id, not the title, because partials carry no stored fields (titles come only in
phase two). The result is exactly "walk every hit in rank order, skip a hit whose
prefix already has N, stop at k", kept in bounded memory.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from fanout_py import serving
from fanout_py.contract import invalid, quote, unpack
from fanout_py.mergekit import (
    MERGER_SERVICE_NAME,
    BoundedRanking,
    Merge,
    MergerServicer,
    MergeState,
    add_merger_arguments,
)
from fanout_py.stubs import merger_pb2_grpc, pack, search_pb2

log = logging.getLogger("fanout_py.topk_merger")

DEFAULT_K = 10
U64_MAX = (1 << 64) - 1


def hit_rank(hit) -> tuple:
    """A better hit ranks smaller: score descending, id ascending, shard id ascending."""
    return (-hit.score, hit.id, hit.shard_id)


class TopKMerge(Merge):
    def __init__(self, max_per_id_prefix=None, prefix_chars: int = 8) -> None:
        self.max_per_id_prefix = max_per_id_prefix
        self.prefix_chars = prefix_chars

    def start(self, start) -> MergeState:
        if not start.HasField("request"):
            raise invalid("merge start carries no request payload")
        request = unpack(start.request, search_pb2.ShardSearchRequest)
        k = request.k or DEFAULT_K
        return TopKState(k, start.shard_count, self.max_per_id_prefix, self.prefix_chars)


class TopKState(MergeState):
    def __init__(self, k, shard_count, max_per_id_prefix, prefix_chars) -> None:
        self.shard_count = shard_count
        chars = prefix_chars
        self.best = BoundedRanking(
            k,
            key=hit_rank,
            max_per_group=max_per_id_prefix,
            group=(lambda hit: hit.id[:chars]) if max_per_id_prefix else None,
        )
        self.shards_merged = set()
        self.total_hits = 0
        self.docs_searched = 0
        self.generation = ""

    def add(self, partial):
        shard_id = partial.shard_id
        if shard_id >= self.shard_count:
            raise invalid(
                f"partial of shard {shard_id} is for a shard >= shard_count {self.shard_count}"
            )
        if shard_id in self.shards_merged:
            log.warning(
                "ignoring a second partial for shard %d (replica %s, attempt %d), already merged",
                shard_id, partial.replica, partial.attempt,
            )
            return None
        if not partial.HasField("payload"):
            raise invalid(f"partial of shard {shard_id} carries no payload")
        response = unpack(partial.payload, search_pb2.ShardSearchResponse)
        for hit in response.hits:
            if math.isnan(hit.score):
                raise invalid(f"hit {quote(hit.id)} of shard {shard_id} has a NaN score")
        self.shards_merged.add(shard_id)
        self.total_hits = min(U64_MAX, self.total_hits + response.total_hits)
        self.docs_searched = min(U64_MAX, self.docs_searched + response.docs_searched)
        self._keep_generation(shard_id, response.generation)
        for hit in response.hits:
            hit.shard_id = shard_id
            self.best.offer(hit)
        return None

    def _keep_generation(self, shard_id, generation) -> None:
        if not generation or generation == self.generation:
            return
        if not self.generation:
            self.generation = generation
            return
        log.warning(
            "shards disagree on the index generation; keeping the first: shard %d reported %r, "
            "kept %r", shard_id, generation, self.generation,
        )

    def finish(self, end):
        response = search_pb2.ShardSearchResponse(
            total_hits=self.total_hits,
            docs_searched=self.docs_searched,
            generation=self.generation,
        )
        response.hits.extend(self.best.items())
        return pack(response)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fanout_py.topk_merger", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--max-per-id-prefix",
        type=int,
        default=None,
        help="keep at most N hits whose ids share their first --prefix-chars characters",
    )
    parser.add_argument("--prefix-chars", type=int, default=8)
    add_merger_arguments(parser)
    serving.add_serving_arguments(parser, default_workers=0)
    args = parser.parse_args(argv)
    if args.max_per_id_prefix is not None and args.max_per_id_prefix < 1:
        raise SystemExit("--max-per-id-prefix must be at least 1")
    if args.prefix_chars < 1:
        raise SystemExit("--prefix-chars must be at least 1")
    serving.setup_logging()
    servicer = MergerServicer(
        TopKMerge(args.max_per_id_prefix, args.prefix_chars),
        max_sessions=args.max_sessions,
        max_session_ms=args.max_session_ms,
    )
    if args.threads <= 0:  # one thread per merge session, plus health
        args.threads = args.max_sessions + 8
    serving.run(
        "merger",
        [MERGER_SERVICE_NAME],
        lambda server: merger_pb2_grpc.add_MergerServicer_to_server(servicer, server),
        args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
