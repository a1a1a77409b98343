"""The rules of fanout.v1.Leaf that every Python leaf keeps, in one servicer.

A workload gives ``LeafServicer`` its shard's identity and one handler per payload
type URL; the servicer does the rest, in the order fanout's Rust leaf does it:

1. ``ExecuteRequest.shard_id`` must be the served shard, else FAILED_PRECONDITION.
2. More than ``max_in_flight`` Execute calls at once: RESOURCE_EXHAUSTED at once
   (retryable on another replica), never an unbounded queue.
3. A call whose deadline has already passed starts no work: DEADLINE_EXCEEDED.
4. The test-only ``--delay-ms`` sleeps before the work, waking early when the call is
   cancelled or its deadline passes.
5. Missing payload, unknown type URL (quoted up to 128 characters) or undecodable
   bytes: INVALID_ARGUMENT.
6. The handler runs with a ``Call`` that says when to stop (deadline passed or
   caller gone); it raises ``ContractError`` for request errors.
7. The answer carries ``timings`` (queue = arrival to start of work, service = the
   work, queue_depth = Execute calls in flight when it arrived), ``docs_searched``
   and ``generation``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import grpc

from fanout_py.contract import TYPE_URL_QUOTE_CHARS, ContractError, invalid, quote, time_remaining
from fanout_py.stubs import common_pb2, leaf_pb2, leaf_pb2_grpc, pack

log = logging.getLogger("fanout_py.leaf")

DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_K = 10
MAX_K = 10_000

LEAF_SERVICE_NAME = "fanout.v1.Leaf"


class Call:
    """One Execute call: its deadline, whether its caller is still there, and when
    its work began."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.arrived = time.monotonic()
        remaining = time_remaining(context)
        self.deadline: Optional[float] = None if remaining is None else self.arrived + remaining
        self.work_started: Optional[float] = None
        self._terminated = threading.Event()
        # Runs when the RPC ends for any reason: cancelled, deadline, answered.
        if not context.add_callback(self._terminated.set):
            self._terminated.set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def cancelled(self) -> bool:
        return self._terminated.is_set() or not self.context.is_active()

    def should_stop(self) -> bool:
        """Work must stop: the deadline passed or nobody waits for the answer."""
        return self.expired() or self.cancelled()

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def sleep(self, seconds: float) -> bool:
        """Sleeps up to ``seconds``; False when woken by cancellation or the deadline."""
        until = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            wait = until - now
            if self.deadline is not None:
                wait = min(wait, self.deadline - now)
            if wait <= 0:
                return not self.should_stop()
            if self._terminated.wait(wait):
                return False

    def start_work(self) -> None:
        """Marks the start of the work proper (after waiting for a worker slot)."""
        if self.work_started is None:
            self.work_started = time.monotonic()

    def check(self, during: str = "the work") -> None:
        """Raises the right status when the work must stop now."""
        if self.expired():
            raise ContractError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded during {during}"
            )
        if self.cancelled():
            raise ContractError(
                grpc.StatusCode.CANCELLED, "the call was cancelled before its work finished"
            )


# handler(request message, call) -> (response message, docs_searched)
Handler = Callable[[object, Call], Tuple[object, int]]


@dataclass
class PayloadHandler:
    request_class: type
    run: Handler


class InFlight:
    """Counts Execute calls in flight and refuses those beyond the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._count = 0
        self._lock = threading.Lock()

    def enter(self) -> int:
        """Returns the calls in flight before this one, or raises RESOURCE_EXHAUSTED."""
        with self._lock:
            depth = self._count
            if depth >= self.limit:
                raise ContractError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"leaf overloaded: {depth} calls in flight, limit {self.limit}",
                    retryable=True,
                )
            self._count += 1
            return depth

    def exit(self) -> None:
        with self._lock:
            self._count -= 1


def micros(seconds: float) -> int:
    return max(0, int(seconds * 1_000_000))


class LeafServicer(leaf_pb2_grpc.LeafServicer):
    def __init__(
        self,
        shard_id: int,
        shard_count: int,
        generation: str,
        doc_count: int,
        handlers: Dict[str, PayloadHandler],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        delay_ms: int = 0,
    ) -> None:
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.generation = generation
        self.doc_count = doc_count
        self.handlers = handlers
        self.in_flight = InFlight(max_in_flight)
        self.delay_s = max(0, delay_ms) / 1000.0

    def capabilities(self):
        return sorted(self.handlers)

    def Info(self, request, context):
        return leaf_pb2.InfoResponse(
            shard_id=self.shard_id,
            shard_count=self.shard_count,
            generation=self.generation,
            doc_count=self.doc_count,
            capabilities=self.capabilities(),
        )

    def Execute(self, request, context):
        call = Call(context)
        try:
            return self._execute(request, call)
        except ContractError as error:
            if error.code == grpc.StatusCode.CANCELLED:
                log.debug("call %s cancelled", request.request_id)
            error.abort(context)
        except Exception as error:  # a bug: answer INTERNAL, not a stack trace
            log.exception("Execute failed")
            ContractError(grpc.StatusCode.INTERNAL, f"leaf error: {error}").abort(context)

    def _execute(self, request, call: Call):
        if request.shard_id != self.shard_id:
            raise ContractError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this leaf serves shard {self.shard_id} but the request is for shard "
                f"{request.shard_id}",
            )
        depth = self.in_flight.enter()
        try:
            if call.expired():
                raise ContractError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the deadline passed before the work started",
                )
            if self.delay_s > 0 and not call.sleep(self.delay_s):
                call.check("the --delay-ms delay")
            if not request.HasField("payload"):
                raise invalid("malformed payload: the request has no payload")
            payload = request.payload
            handler = self.handlers.get(payload.type_url)
            if handler is None:
                raise invalid(
                    f"unsupported payload type {quote(payload.type_url, TYPE_URL_QUOTE_CHARS)}: "
                    f"this leaf understands {', '.join(self.capabilities())}"
                )
            try:
                message = handler.request_class.FromString(payload.value)
            except Exception as error:
                raise invalid(
                    f"malformed payload: payload of type {payload.type_url} does not decode: "
                    f"{error}"
                ) from None
            call.check("the wait for a worker")
            response, docs_searched = handler.run(message, call)
            finished = time.monotonic()
            started = call.work_started if call.work_started is not None else finished
            return leaf_pb2.ExecuteResponse(
                payload=pack(response),
                timings=common_pb2.LeafTimings(
                    queue_micros=micros(started - call.arrived),
                    service_micros=micros(finished - started),
                    queue_depth=depth,
                ),
                docs_searched=docs_searched,
                generation=self.generation,
            )
        finally:
            self.in_flight.exit()


def add_leaf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard-id", type=int, required=True)
    parser.add_argument("--shard-count", type=int, required=True)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="Execute calls at once beyond which the leaf answers RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--delay-ms",
        type=int,
        default=0,
        help="test only: sleep this long before each Execute (honours cancellation)",
    )


def check_shard_arguments(args: argparse.Namespace) -> None:
    if args.shard_count < 1:
        raise SystemExit("--shard-count must be at least 1")
    if not 0 <= args.shard_id < args.shard_count:
        raise SystemExit(f"--shard-id must be in 0..{args.shard_count - 1}")


def resolve_k(k: int) -> int:
    """0 means DEFAULT_K; above MAX_K is INVALID_ARGUMENT."""
    if k == 0:
        return DEFAULT_K
    if k > MAX_K:
        raise invalid(f"invalid request: k is {k} but may be at most {MAX_K}")
    return k
