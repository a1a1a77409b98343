"""A fanout.v1.Leaf of the k-NN workload: brute force over generated vectors.

    python -m fanout_py.knn_leaf --shard-id I --shard-count S --vectors N --dim D \\
        --seed X --listen 127.0.0.1:0 [--max-in-flight M] [--drain-delay-ms T]

The shard's N vectors are generated deterministically (fanout_py.knn_data), ids
``s{I}-{j}``. Execute takes ``fanout.knn.v1.KnnRequest`` and answers ``KnnResponse``
with the shard's k nearest (squared Euclidean, float32, ties by id), stamped with the
shard id; ``docs_searched`` = ``vectors_searched`` = N. A vector of another dimension
or holding NaN is INVALID_ARGUMENT; k 0 = 10, at most 10000. The search checks the
deadline and the caller every 512 vectors (DEADLINE_EXCEEDED / CANCELLED). Health,
drain, limits and the announce line are those of every fanout_py leaf (leafkit).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import sys
import threading
import time

from fanout_py import serving
from fanout_py.contract import invalid
from fanout_py.knn_data import shard_vectors, squared_distance, vector_id
from fanout_py.leafkit import (
    LEAF_SERVICE_NAME,
    Call,
    LeafServicer,
    PayloadHandler,
    add_leaf_arguments,
    check_shard_arguments,
    resolve_k,
)
from fanout_py.stubs import knn_pb2, leaf_pb2_grpc, type_url

log = logging.getLogger("fanout_py.knn_leaf")

KNN_TYPE_URL = type_url(knn_pb2.KnnRequest)
CHECK_EVERY = 512


class KnnShard:
    def __init__(self, shard_id: int, vectors, dim: int, search_threads: int) -> None:
        self.shard_id = shard_id
        self.vectors = vectors
        self.dim = dim
        self.ids = [vector_id(shard_id, index) for index in range(len(vectors))]
        # Pure-Python work holds the GIL: a few at a time is all that helps.
        self.slots = threading.BoundedSemaphore(max(1, search_threads))

    def search(self, request, call: Call):
        k = resolve_k(request.k)
        if len(request.vector) != self.dim:
            raise invalid(
                f"vector has {len(request.vector)} dimensions but this shard's vectors have "
                f"{self.dim}"
            )
        query = list(request.vector)
        for index, value in enumerate(query):
            if math.isnan(value):
                raise invalid(f"vector holds NaN at index {index}")
        while not self.slots.acquire(timeout=0.01):
            call.check("the wait for a search thread")
        try:
            call.start_work()
            best = []  # max-heap of the k best as (-distance, reversed id order)
            ids = self.ids
            for index, vector in enumerate(self.vectors):
                if index % CHECK_EVERY == 0:
                    call.check("the search")
                candidate = (squared_distance(vector, query), ids[index])
                if len(best) < k:
                    heapq.heappush(best, _Worst(candidate))
                elif candidate < best[0].key:
                    heapq.heapreplace(best, _Worst(candidate))
        finally:
            self.slots.release()
        response = knn_pb2.KnnResponse(vectors_searched=len(self.vectors))
        for distance, doc_id in sorted(item.key for item in best):
            response.neighbors.add(id=doc_id, distance=distance, shard_id=self.shard_id)
        return response, len(self.vectors)


class _Worst:
    """Heap item ordering the worst (largest distance, then largest id) first."""

    __slots__ = ("key",)

    def __init__(self, key) -> None:
        self.key = key

    def __lt__(self, other: "_Worst") -> bool:
        return self.key > other.key


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fanout_py.knn_leaf", description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, required=True, help="vectors in this shard")
    parser.add_argument("--dim", type=int, required=True, help="their dimension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-threads", type=int, default=2)
    add_leaf_arguments(parser)
    serving.add_serving_arguments(parser, default_workers=0)
    args = parser.parse_args(argv)
    check_shard_arguments(args)
    if args.vectors < 0 or args.dim < 1:
        raise SystemExit("--vectors must be >= 0 and --dim >= 1")
    serving.setup_logging()
    started = time.monotonic()
    vectors = shard_vectors(args.seed, args.shard_id, args.vectors, args.dim)
    log.info("shard %d: %d vectors of %d in %.2f s", args.shard_id, args.vectors, args.dim,
             time.monotonic() - started)
    shard = KnnShard(args.shard_id, vectors, args.dim, args.search_threads)
    # Shared by every shard of one build: the same seed, shard count and shape.
    generation = f"knn-{args.seed}-{args.shard_count}x{args.vectors}x{args.dim}"
    servicer = LeafServicer(
        shard_id=args.shard_id,
        shard_count=args.shard_count,
        generation=generation,
        doc_count=args.vectors,
        handlers={KNN_TYPE_URL: PayloadHandler(knn_pb2.KnnRequest, shard.search)},
        max_in_flight=args.max_in_flight,
        delay_ms=args.delay_ms,
    )
    if args.threads <= 0:
        args.threads = args.max_in_flight + 16
    serving.run(
        "leaf",
        [LEAF_SERVICE_NAME],
        lambda server: leaf_pb2_grpc.add_LeafServicer_to_server(servicer, server),
        args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
