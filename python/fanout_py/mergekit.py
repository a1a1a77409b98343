"""The fanout.v1.Merger streaming contract, for any merge, as fanout's Rust merger
keeps it (merger/src/service.rs, merger/src/error.rs).

A workload supplies a ``Merge`` (``start(MergeStart) -> MergeState``) whose state takes
``add(ShardPartial)`` (returning an ``Enough`` reason or None) and
``finish(MergeEnd) -> Any``. ``MergerServicer`` runs one Merge call:

- the response headers are sent at once (fanout's root waits for them before it
  sends the partials: a merger that holds them until its first answer deadlocks);
- the first message must be ``start`` (else INVALID_ARGUMENT "first message must be
  start"); ``start`` again is INVALID_ARGUMENT "start sent twice"; a message without a
  kind is INVALID_ARGUMENT "merge input message without a kind";
- each ``partial`` goes to the state as it arrives; an ``enough`` it returns is sent
  once;
- ``end`` is answered with exactly one ``result``; the call then ends OK when the
  input closes, or with INVALID_ARGUMENT "input after end" if anything follows (the
  Rust merger stops reading after end instead);
- the input closing before ``end`` is ABORTED "merge input ended before end"; a broken
  input (the client went away) ends the call (CANCELLED, read by nobody);
- the call's gRPC deadline ends it with DEADLINE_EXCEEDED "merge deadline exceeded";
  a call with no deadline ends the same way after ``max_session_ms``;
- at most ``max_sessions`` calls at once: one more is RESOURCE_EXHAUSTED at once
  (retryable); a session's slot is freed however the call ends, a cut stream included.

A merge's own errors are ``ContractError`` (usually INVALID_ARGUMENT) and end the call
with their status.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import queue
import threading
import time
from typing import Callable, Hashable, List, Optional, Tuple

import grpc

from fanout_py.contract import ContractError, bounded, invalid, time_remaining
from fanout_py.stubs import merger_pb2, merger_pb2_grpc

log = logging.getLogger("fanout_py.merger")

MERGER_SERVICE_NAME = "fanout.v1.Merger"
DEFAULT_MAX_SESSIONS = 256
DEFAULT_MAX_SESSION_MS = 60_000
# Inputs read ahead of the merge; beyond it the reader waits (HTTP/2 flow control
# then holds the client back).
INPUT_BUFFER = 64


class MergeState:
    def add(self, partial) -> Optional[str]:
        """Merges one partial; returns a reason to send ``enough``, or None."""
        raise NotImplementedError

    def finish(self, end):
        """The result payload (an Any)."""
        raise NotImplementedError


class Merge:
    def start(self, start) -> MergeState:
        raise NotImplementedError


class _Sessions:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.open = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def releaser(self) -> Callable[[], None]:
        done = threading.Event()
        lock = threading.Lock()

        def release() -> None:
            with lock:
                if done.is_set():
                    return
                done.set()
            with self._lock:
                self.open -= 1

        return release


_MESSAGE, _EOF, _BROKEN = "message", "eof", "broken"


class _InputReader:
    """Reads the request stream on a thread of its own, so that the session can wait
    for the next input with a deadline."""

    def __init__(self, request_iterator) -> None:
        self._inputs: "queue.Queue[Tuple[str, object]]" = queue.Queue(maxsize=INPUT_BUFFER)
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(request_iterator,), name="merge-input", daemon=True
        )
        self._thread.start()

    def _read(self, request_iterator) -> None:
        try:
            for message in request_iterator:
                if not self._offer((_MESSAGE, message)):
                    return
            self._offer((_EOF, None))
        except grpc.RpcError as error:
            self._offer((_BROKEN, error))
        except Exception as error:  # the stream broke in some other way
            self._offer((_BROKEN, error))

    def _offer(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._inputs.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def next(self, deadline: float):
        """(kind, message); kind None when the deadline passed first."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, None
        try:
            return self._inputs.get(timeout=remaining)
        except queue.Empty:
            return None, None

    def close(self) -> None:
        self._closed.set()


def _abort(context, code, message):
    context.abort(code, message)


class MergerServicer(merger_pb2_grpc.MergerServicer):
    def __init__(
        self,
        merge: Merge,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_session_ms: int = DEFAULT_MAX_SESSION_MS,
    ) -> None:
        self.merge = merge
        self.sessions = _Sessions(max_sessions)
        self.max_session_s = max(1, max_session_ms) / 1000.0

    def Merge(self, request_iterator, context):
        if not self.sessions.acquire():
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"merger overloaded: {self.sessions.limit} merges open, the limit",
            )
        # Response headers go out at once, before any input is read: the root's
        # client waits for them before it streams the partials.
        context.send_initial_metadata(())
        release = self.sessions.releaser()
        # Frees the slot when the call ends for any reason, even if this generator is
        # never resumed again (a client that went away).
        if not context.add_callback(release):
            release()
        reader = _InputReader(request_iterator)
        try:
            yield from self._session(reader, context)
        finally:
            reader.close()
            release()

    def _session(self, reader: _InputReader, context):
        try:
            yield from self._inputs(reader, context)
        except ContractError as error:
            error.abort(context)
        except Exception as error:  # a bug in the merge: INTERNAL, not UNKNOWN
            log.exception("merge failed")
            _abort(context, grpc.StatusCode.INTERNAL, bounded(f"merge error: {error}"))

    def _inputs(self, reader: _InputReader, context):
        """The session proper; contract violations raise ContractError."""
        remaining = time_remaining(context)
        if remaining is None:
            deadline = time.monotonic() + self.max_session_s
            deadline_message = (
                "merge deadline exceeded: the call has no deadline and ran past the "
                f"merger's limit of {int(self.max_session_s * 1000)} ms"
            )
        else:
            deadline = time.monotonic() + remaining
            deadline_message = "merge deadline exceeded"
        state: Optional[MergeState] = None
        ended = False
        enough_sent = False
        while True:
            kind, message = reader.next(deadline)
            if kind is None:
                raise ContractError(grpc.StatusCode.DEADLINE_EXCEEDED, deadline_message)
            if kind == _BROKEN:
                log.debug("merge input broke; the client went away: %s", message)
                return
            if kind == _EOF:
                if ended:
                    return
                raise ContractError(grpc.StatusCode.ABORTED, "merge input ended before end")
            if ended:
                raise invalid("input after end")
            which = message.WhichOneof("kind")
            if which is None:
                raise invalid("merge input message without a kind")
            if state is None:
                if which != "start":
                    raise invalid("first message must be start")
                log.debug(
                    "merge started: request %s, %d shards",
                    message.start.request_id,
                    message.start.shard_count,
                )
                state = self.merge.start(message.start)
            elif which == "start":
                raise invalid("start sent twice")
            elif which == "partial":
                reason = state.add(message.partial)
                if reason is not None and not enough_sent:
                    enough_sent = True
                    yield merger_pb2.MergeOutput(enough=merger_pb2.Enough(reason=reason))
            else:  # end
                payload = state.finish(message.end)
                ended = True
                yield merger_pb2.MergeOutput(result=merger_pb2.MergeResult(payload=payload))
                # From here on, the loop only waits for the input to close.


def _rank(entry: tuple) -> tuple:
    return entry[:-1]


class BoundedRanking:
    """The best ``k`` items by ``key`` (smaller is better), fed one at a time.

    With ``max_per_group`` set, at most that many items of one ``group(item)`` are kept:
    the result is exactly "walk all items in rank order, skip an item whose group
    already has max_per_group kept ones, stop at k", without keeping all items (each
    group's best are tracked only while they are among the k best eligible ones).
    An item equal to the worst kept one is not taken (the first one stays).
    """

    def __init__(
        self,
        k: int,
        key: Callable[[object], tuple],
        max_per_group: Optional[int] = None,
        group: Optional[Callable[[object], Hashable]] = None,
    ) -> None:
        if max_per_group is not None and max_per_group < 1:
            raise ValueError("max_per_group must be at least 1")
        self.k = k
        self._key = key
        self._max_per_group = max_per_group
        self._group = group
        self._sequence = 0
        self._ranked: List[tuple] = []  # (key..., sequence, item), best first
        self._groups = {}  # group -> sorted list of the same tuples

    def offer(self, item) -> None:
        if self.k <= 0:
            return
        entry = (*self._key(item), self._sequence, item)
        self._sequence += 1
        rank = entry[:-1]
        name = None
        if self._max_per_group is not None:
            name = self._group(item)
            members = self._groups.get(name)
            if members is not None and len(members) >= self._max_per_group:
                # The group is full: x replaces its worst member or is dropped.
                if rank >= members[-1][:-1]:
                    return
                self._remove(members[-1])
                self._insert(entry, name)
                return
        if len(self._ranked) >= self.k and rank >= self._ranked[-1][:-1]:
            return
        self._insert(entry, name)
        if len(self._ranked) > self.k:
            self._remove(self._ranked[-1])

    def _insert(self, entry, name) -> None:
        bisect.insort(self._ranked, entry, key=_rank)
        if name is not None:
            bisect.insort(self._groups.setdefault(name, []), entry, key=_rank)

    def _remove(self, entry) -> None:
        rank = entry[:-1]
        del self._ranked[bisect.bisect_left(self._ranked, rank, key=_rank)]
        if self._max_per_group is not None:
            name = self._group(entry[-1])
            members = self._groups[name]
            del members[bisect.bisect_left(members, rank, key=_rank)]
            if not members:
                del self._groups[name]

    def items(self) -> list:
        """The kept items, best first."""
        return [entry[-1] for entry in self._ranked]


def add_merger_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help="merges at once; one more is answered RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--max-session-ms",
        type=int,
        default=DEFAULT_MAX_SESSION_MS,
        help="a merge whose call has no deadline ends after this long (DEADLINE_EXCEEDED)",
    )
