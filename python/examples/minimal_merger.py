"""A minimal fanout merger: the global k nearest (fanout.knn.v1) of the shards' answers.

    python examples/minimal_merger.py --listen 127.0.0.1:0
Every rule of the fanout.v1.Merger streaming contract is here, marked RULE.
"""
import argparse, heapq, math, signal, sys, threading, time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python/, for fanout_py
from fanout_py.stubs import knn_pb2, merger_pb2, merger_pb2_grpc, pack, type_url

MAX_SESSIONS = 64


class KnnMerger(merger_pb2_grpc.MergerServicer):
    def __init__(self):
        self.sessions = threading.BoundedSemaphore(MAX_SESSIONS)

    def Merge(self, inputs, context):
        # RULE: bound what callers can make you hold: one merge more is RESOURCE_EXHAUSTED.
        if not self.sessions.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many merges at once")
        # The slot is freed when the call ends, however it ends (a cut stream included).
        context.add_callback(self.sessions.release)
        # RULE: send the response headers at once: the root waits for them before it
        # streams the partials.
        context.send_initial_metadata(())
        # RULE: the call's deadline is the request's. gRPC ends the call with
        # DEADLINE_EXCEEDED when it passes and `inputs` then raises: nothing more to do.
        # (A merger that must also end calls without a deadline needs a timer; see
        # fanout_py/mergekit.py.)
        try:
            yield from self.session(inputs, context)
        except grpc.RpcError:
            return  # the client went away or the deadline passed

    def session(self, inputs, context):
        def invalid(message):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        # RULE: exactly one `start` first: the request as fanned out, and the shard count.
        first = next(inputs, None)
        if first is None or first.WhichOneof("kind") != "start":
            invalid("first message must be start")
        if first.start.request.type_url != type_url(knn_pb2.KnnRequest):
            invalid(f"expected a KnnRequest, found {first.start.request.type_url[:128]!r}")
        k = knn_pb2.KnnRequest.FromString(first.start.request.value).k or 10
        shard_count, seen, best, searched = first.start.shard_count, set(), [], 0
        for message in inputs:
            kind = message.WhichOneof("kind")
            if kind == "start":
                invalid("start sent twice")
            elif kind == "partial":
                # RULE: fold each partial in as it arrives (keep k, not every partial).
                partial = message.partial
                if partial.shard_id >= shard_count:
                    invalid(f"partial of shard {partial.shard_id} is for a shard >= shard_count {shard_count}")
                if partial.shard_id in seen:
                    continue  # RULE: a late second answer for a shard (a hedge) is ignored
                if partial.payload.type_url != type_url(knn_pb2.KnnResponse):
                    invalid(f"partial of shard {partial.shard_id} is not a KnnResponse")
                answer = knn_pb2.KnnResponse.FromString(partial.payload.value)
                if any(math.isnan(n.distance) for n in answer.neighbors):
                    invalid(f"partial of shard {partial.shard_id} has a NaN distance")
                seen.add(partial.shard_id)
                searched += answer.vectors_searched
                for n in answer.neighbors:
                    # Max-heap of the k best by (distance, id, shard), the worst on top.
                    item = (-n.distance, _Desc(n.id), -partial.shard_id)
                    if len(best) < k:
                        heapq.heappush(best, item)
                    elif item > best[0]:
                        heapq.heapreplace(best, item)
                # RULE: a merger that knows no later partial can change its answer may
                # send MergeOutput(enough=...) once; the root then cancels the other
                # shards. A nearest-neighbour merge never knows, so it never does.
            elif kind == "end":
                # RULE: exactly one `result` after `end`.
                result = knn_pb2.KnnResponse(vectors_searched=searched)
                for minus_distance, vector_id, minus_shard in sorted(best, reverse=True):
                    result.neighbors.add(id=vector_id.value, distance=-minus_distance, shard_id=-minus_shard)
                yield merger_pb2.MergeOutput(result=merger_pb2.MergeResult(payload=pack(result)))
                # RULE: nothing may follow `end`; the root closes its side now.
                if next(inputs, None) is not None:
                    invalid("input after end")
                return
            else:
                invalid("merge input message without a kind")
        # RULE: input that ends before `end` is ABORTED (the root gave up on the request).
        context.abort(grpc.StatusCode.ABORTED, "merge input ended before end")


class _Desc:
    """A string that orders backwards, so that a max-heap keeps the smallest ids."""

    def __init__(self, value):
        self.value = value

    def __lt__(self, other):
        return self.value > other.value

    def __eq__(self, other):
        return self.value == other.value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--drain-delay-ms", type=int, default=0)
    args = parser.parse_args()
    # RULE: accept the root's keepalive pings (every 20 s, also between calls).
    options = [("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_ping_strikes", 0),
               ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000)]
    # One thread per open merge (plus health): the pool is the session bound.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_SESSIONS + 4), options=options,
                         maximum_concurrent_rpcs=MAX_SESSIONS + 4)
    merger_pb2_grpc.add_MergerServicer_to_server(KnnMerger(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(args.listen)
    server.start()
    for name in ("", "fanout.v1.Merger"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"fanout merger listening on {args.listen.rpartition(':')[0]}:{port}", flush=True)
    # RULE: SIGTERM: NOT_SERVING at once, answer through the drain delay, then stop.
    # The handler only sets a flag (a handler must take no lock; see minimal_leaf.py).
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
