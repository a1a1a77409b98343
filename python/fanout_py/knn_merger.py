"""A fanout.v1.Merger for the k-NN workload: the global k nearest, streaming.

    python -m fanout_py.knn_merger --listen 127.0.0.1:0 [--max-sessions 256] [--max-session-ms 60000]

``start.request`` must be a KnnRequest (k 0 = 10). Each partial's KnnResponse is folded
into a bounded k nearest as it arrives (distance ascending, id ascending, then shard
id), neighbours stamped with the partial's shard id; a shard id >= shard_count, a
missing or foreign payload, a NaN distance are INVALID_ARGUMENT; a second partial for a
shard is ignored. ``end`` is answered with one KnnResponse (vectors_searched summed).
The streaming contract is that of every fanout_py merger (fanout_py.mergekit).
The exact answer to compare with is fanout_py.knn_data.exact_knn.
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
from fanout_py.stubs import knn_pb2, merger_pb2_grpc, pack

log = logging.getLogger("fanout_py.knn_merger")

DEFAULT_K = 10
U64_MAX = (1 << 64) - 1


class KnnMerge(Merge):
    def start(self, start) -> MergeState:
        if not start.HasField("request"):
            raise invalid("merge start carries no request payload")
        request = unpack(start.request, knn_pb2.KnnRequest)
        return KnnState(request.k or DEFAULT_K, start.shard_count)


class KnnState(MergeState):
    def __init__(self, k: int, shard_count: int) -> None:
        self.shard_count = shard_count
        self.nearest = BoundedRanking(k, key=lambda n: (n.distance, n.id, n.shard_id))
        self.shards_merged = set()
        self.vectors_searched = 0

    def add(self, partial):
        shard_id = partial.shard_id
        if shard_id >= self.shard_count:
            raise invalid(
                f"partial of shard {shard_id} is for a shard >= shard_count {self.shard_count}"
            )
        if shard_id in self.shards_merged:
            log.warning("ignoring a second partial for shard %d, already merged", shard_id)
            return None
        if not partial.HasField("payload"):
            raise invalid(f"partial of shard {shard_id} carries no payload")
        response = unpack(partial.payload, knn_pb2.KnnResponse)
        for neighbor in response.neighbors:
            if math.isnan(neighbor.distance):
                raise invalid(
                    f"neighbor {quote(neighbor.id)} of shard {shard_id} has a NaN distance"
                )
        self.shards_merged.add(shard_id)
        self.vectors_searched = min(U64_MAX, self.vectors_searched + response.vectors_searched)
        for neighbor in response.neighbors:
            neighbor.shard_id = shard_id
            self.nearest.offer(neighbor)
        return None

    def finish(self, end):
        response = knn_pb2.KnnResponse(vectors_searched=self.vectors_searched)
        response.neighbors.extend(self.nearest.items())
        return pack(response)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fanout_py.knn_merger", description=__doc__.split("\n")[0])
    add_merger_arguments(parser)
    serving.add_serving_arguments(parser, default_workers=0)
    args = parser.parse_args(argv)
    serving.setup_logging()
    servicer = MergerServicer(
        KnnMerge(), max_sessions=args.max_sessions, max_session_ms=args.max_session_ms
    )
    if args.threads <= 0:
        args.threads = args.max_sessions + 8
    serving.run(
        "merger",
        [MERGER_SERVICE_NAME],
        lambda server: merger_pb2_grpc.add_MergerServicer_to_server(servicer, server),
        args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
