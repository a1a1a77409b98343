"""A minimal fanout leaf: k nearest neighbours (fanout.knn.v1) over an in-memory shard.

    python examples/minimal_leaf.py --shard-id 0 --shard-count 2 --listen 127.0.0.1:0
Every rule of the fanout.v1.Leaf contract a leaf must keep is here, marked RULE.
"""
import argparse, heapq, math, random, signal, sys, threading, time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python/, for fanout_py
from fanout_py.stubs import common_pb2, knn_pb2, leaf_pb2, leaf_pb2_grpc, pack, type_url

KNN_URL = type_url(knn_pb2.KnnRequest)  # type.googleapis.com/fanout.knn.v1.KnnRequest
MAX_IN_FLIGHT, MAX_K = 32, 10_000


def make_shard(seed, shard_id, count, dim):
    """This shard's vectors, the same on every replica (ids "s<shard>-<j>")."""
    rng = random.Random(f"{seed}/{shard_id}")
    return [(f"s{shard_id}-{j}", [rng.uniform(-1, 1) for _ in range(dim)]) for j in range(count)]


class KnnLeaf(leaf_pb2_grpc.LeafServicer):
    def __init__(self, args):
        self.shard_id, self.shard_count, self.dim = args.shard_id, args.shard_count, args.dim
        self.vectors = make_shard(args.seed, args.shard_id, args.vectors, args.dim)
        # RULE: Info.generation names one build of the whole index (all shards share it);
        # it comes back in every ExecuteResponse.generation.
        self.generation = f"minimal-{args.seed}-{args.shard_count}x{args.vectors}x{args.dim}"
        self.in_flight, self.lock = 0, threading.Lock()

    def Info(self, request, context):
        return leaf_pb2.InfoResponse(shard_id=self.shard_id, shard_count=self.shard_count,
                                     generation=self.generation, doc_count=len(self.vectors),
                                     capabilities=[KNN_URL])

    def Execute(self, request, context):
        arrived = time.monotonic()
        # RULE: a request meant for another shard is FAILED_PRECONDITION (not retried).
        if request.shard_id != self.shard_id:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"this leaf serves shard {self.shard_id}")
        # RULE: bounded work. Past the limit answer RESOURCE_EXHAUSTED at once: the root
        # retries it on another replica (UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED are
        # retryable; the trailer `fanout-retryable: true|false` overrides the code's default).
        with self.lock:
            depth = self.in_flight
            if depth >= MAX_IN_FLIGHT:
                context.set_trailing_metadata((("fanout-retryable", "true"),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"overloaded: {depth} calls in flight")
            self.in_flight += 1
        try:
            return self.search(request, context, arrived, depth)
        finally:
            with self.lock:
                self.in_flight -= 1

    def search(self, request, context, arrived, depth):
        # RULE: the payload's type URL says what is asked; anything else is INVALID_ARGUMENT,
        # quoting the caller's input only briefly.
        if request.payload.type_url != KNN_URL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unsupported payload type {request.payload.type_url[:128]!r}: understands {KNN_URL}")
        try:
            query = knn_pb2.KnnRequest.FromString(request.payload.value)
        except Exception:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "payload does not decode")
        # RULE: validate before working, with limits on what a caller can ask.
        if len(query.vector) != self.dim or any(math.isnan(x) for x in query.vector):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"vector must have {self.dim} numbers, no NaN")
        if query.k > MAX_K:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k is {query.k}, more than {MAX_K}")
        k = query.k or 10
        # RULE: the call's deadline is the time the root can still wait. Never start work
        # that is already late, and stop when the deadline passes or the caller has gone
        # (a hedge that lost, a cancelled request): nobody reads that answer.
        remaining = context.time_remaining()
        deadline = arrived + remaining if remaining is not None and remaining < 1e9 else math.inf
        started = time.monotonic()
        best = []
        for j, (vector_id, vector) in enumerate(self.vectors):
            if j % 256 == 0:
                if time.monotonic() >= deadline:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                if not context.is_active():
                    return leaf_pb2.ExecuteResponse()  # the caller is gone: stop, answer nothing useful
            distance = sum((a - b) ** 2 for a, b in zip(vector, query.vector))
            heapq.heappush(best, (-distance, vector_id)) if len(best) < k else \
                heapq.heappushpop(best, (-distance, vector_id))
        answer = knn_pb2.KnnResponse(vectors_searched=len(self.vectors))
        for minus_distance, vector_id in sorted(best, key=lambda d: (-d[0], d[1])):
            answer.neighbors.add(id=vector_id, distance=-minus_distance, shard_id=self.shard_id)
        done = time.monotonic()
        # RULE: say how much of the shard the answer covers (docs_searched; the root sums
        # them into Coverage.docs_covered) and which build it came from (generation).
        return leaf_pb2.ExecuteResponse(
            payload=pack(answer), docs_searched=len(self.vectors), generation=self.generation,
            timings=common_pb2.LeafTimings(queue_micros=int((started - arrived) * 1e6),
                                           service_micros=int((done - started) * 1e6), queue_depth=depth))


def main():
    parser = argparse.ArgumentParser()
    for flag, default in [("--shard-id", None), ("--shard-count", None), ("--vectors", 1000),
                          ("--dim", 8), ("--seed", 0), ("--drain-delay-ms", 0)]:
        parser.add_argument(flag, type=int, default=default, required=default is None)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    # RULE: the root pings every 20 s, also between calls: accept those pings, or gRPC
    # core answers GOAWAY too_many_pings and the root's connection breaks.
    options = [("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_ping_strikes", 0),
               ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT + 8), options=options,
                         maximum_concurrent_rpcs=MAX_IN_FLIGHT + 8)
    leaf_pb2_grpc.add_LeafServicer_to_server(KnnLeaf(args), server)
    # RULE: grpc.health.v1 for "" and "fanout.v1.Leaf": SERVING once ready to answer.
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(args.listen)
    server.start()
    for name in ("", "fanout.v1.Leaf"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # RULE: announce the real address on stdout, one line, flushed (port 0 = any free port).
    print(f"fanout leaf listening on {args.listen.rpartition(':')[0]}:{port}", flush=True)
    # RULE: on SIGTERM turn NOT_SERVING at once, keep answering for the drain delay (the
    # root's health checks move traffic away), then stop, letting calls in flight finish.
    # The handler only sets a flag: it runs between two bytecodes of this thread, maybe
    # while it holds a lock, so it must take none (threading.Event.set takes one).
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping:
        time.sleep(0.05)
    health_servicer.enter_graceful_shutdown()
    time.sleep(args.drain_delay_ms / 1000)
    server.stop(grace=10).wait()


if __name__ == "__main__":
    main()
