"""A fanout.v1.Leaf of the search workload on SQLite FTS5 (Python's standard sqlite3).

    python -m fanout_py.sqlite_leaf --corpus FILE.jsonl[.gz] --shard-id I --shard-count S \\
        --listen 127.0.0.1:0 [--db-cache DIR] [--max-in-flight N] [--drain-delay-ms D]

The corpus is JSON Lines (gzip recognised by its magic bytes): one object per line
with a non-empty string ``id`` and optional string ``title`` and ``text``; blank lines
are skipped, a bad line or a repeated id stops the build with its line number, or with
``--skip-bad-lines`` is skipped (the first line of an id is kept) and counted. The
leaf keeps the documents of its shard, ``fnv1a_64(utf8(id)) % S`` (the partition of
fanout's Rust indexer), in an FTS5 table (porter tokenizer), built in memory or, with
``--db-cache DIR``, in a db file reused while the corpus (path, size, mtime), shard id
and count are the same.

Payloads (Info.capabilities):

- ``fanout.search.v1.ShardSearchRequest`` -> ``ShardSearchResponse``. Natural mode
  only: the query's words (runs of letters and digits, lowercased; punctuation is
  never syntax; English stop words dropped; repeats counted once) are ORed in an FTS5
  MATCH, scored by ``-bm25(title weight 2, text weight 1)`` (higher is better, scores
  are local to the shard: not comparable with the tantivy leaves' exact global BM25),
  ordered by score (as float32) descending then id ascending. ``total_hits`` counts
  every match (filters apply, ``search_after`` does not); filters on ``id`` only;
  k 0 = 10, at most 10000. Hits carry ``doc_id`` = the SQLite rowid, ``segment_ord`` = 0.
  ``QUERY_MODE_SYNTAX`` is INVALID_ARGUMENT "syntax mode is not supported by this leaf".
- ``fanout.search.v1.FetchRequest`` -> ``FetchResponse``: one FetchedDoc per hit, in
  order, looked up by id (so any generation works); fields among id/title/text (none
  = id and title); snippets of the text with <b>..</b> around matched words (FTS5
  snippet(), HTML-escaped), or the text's beginning when no word matches.

Limits: a query longer than 16384 bytes or with more than 1024 distinct words is
INVALID_ARGUMENT; error messages quote user input up to 64 characters. A running
query is stopped by an SQLite progress handler once the call's deadline has passed
(DEADLINE_EXCEEDED) or its caller has gone (CANCELLED, read by nobody). An SQLite
error other than that is INTERNAL marked ``fanout-retryable: true`` (another replica
has its own database).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import logging
import math
import os
import queue
import re
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import grpc

from fanout_py import serving
from fanout_py.contract import ContractError, invalid, quote
from fanout_py.leafkit import (
    LEAF_SERVICE_NAME,
    Call,
    LeafServicer,
    PayloadHandler,
    add_leaf_arguments,
    check_shard_arguments,
    resolve_k,
)
from fanout_py.stubs import leaf_pb2_grpc, search_pb2, type_url

log = logging.getLogger("fanout_py.sqlite_leaf")

SCHEMA_VERSION = "1"
MAX_QUERY_BYTES = 16_384
MAX_QUERY_WORDS = 1_024
MAX_FETCH_HITS = 10_000
SNIPPET_MAX_CHARS = 200
TITLE_WEIGHT = 2.0
TEXT_WEIGHT = 1.0
# SQLite virtual-machine steps between two checks of the deadline and the caller.
PROGRESS_STEPS = 10_000

# The 33 English stop words of Lucene's EnglishAnalyzer, as fanout's Rust leaf drops them.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the "
    "their then there these they this to was will with".split()
)
_WORD = re.compile(r"[^\W_]+")

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1

SEARCH_TYPE_URL = type_url(search_pb2.ShardSearchRequest)
FETCH_TYPE_URL = type_url(search_pb2.FetchRequest)


# ---------------------------------------------------------------- partition and corpus


def fnv1a_64(data: bytes) -> int:
    hash_ = FNV_OFFSET_BASIS
    for byte in data:
        hash_ = ((hash_ ^ byte) * FNV_PRIME) & _U64
    return hash_


def shard_for_id(doc_id: str, shard_count: int) -> int:
    """The shard of a document: FNV-1a 64 of the id's UTF-8 bytes modulo shard_count."""
    return fnv1a_64(doc_id.encode("utf-8")) % max(1, shard_count)


class BadCorpus(Exception):
    pass


def _parse_line(line: bytes):
    """(id, title, text) of one corpus line, or raises ValueError with the reason."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    doc_id = value.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError("id must be a non-empty string")
    fields = []
    for name in ("title", "text"):
        field = value.get(name)
        if field is None:
            field = ""
        if not isinstance(field, str):
            raise ValueError(f"{name} must be a string")
        fields.append(field)
    return doc_id, fields[0], fields[1]


def read_corpus(path: str) -> Iterator[Tuple[int, Optional[Tuple[str, str, str]], str]]:
    """(line number, (id, title, text) or None, reason) of every non-blank line."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield number, _parse_line(line), ""
            except ValueError as error:
                yield number, None, str(error)


# ---------------------------------------------------------------- the shard database

_SCHEMA = """
CREATE TABLE docs(rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                  title TEXT NOT NULL, text TEXT NOT NULL);
CREATE VIRTUAL TABLE fts USING fts5(title, text, content='docs', content_rowid='rowid',
                                    tokenize='porter unicode61');
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def build_shard(
    conn: sqlite3.Connection, corpus: str, shard_id: int, shard_count: int, skip_bad_lines: bool
) -> Tuple[int, int]:
    """Fills an empty database with the shard's documents.

    Returns (documents, bad lines skipped). A bad line fails the build unless
    ``skip_bad_lines``; for a duplicate id the first line is kept and the later ones are
    bad (as fanout's Rust indexer does; a duplicate always falls in the same shard, so
    each shard sees all of its own duplicates).
    """
    conn.executescript(_SCHEMA)
    count = 0
    skipped = 0
    first_line = {}

    def bad(number: int, reason: str) -> None:
        nonlocal skipped
        if not skip_bad_lines:
            raise BadCorpus(f"bad input line {number} of {corpus}: {reason}")
        skipped += 1
        if skipped <= 10:
            log.warning("skipping bad input line %d of %s: %s", number, corpus, reason)

    with conn:
        for number, doc, reason in read_corpus(corpus):
            if doc is None:
                bad(number, reason)
                continue
            doc_id, title, text = doc
            if shard_for_id(doc_id, shard_count) != shard_id:
                continue
            if doc_id in first_line:
                bad(number, f"duplicate id {quote(doc_id)} (first seen on line {first_line[doc_id]})")
                continue
            first_line[doc_id] = number
            conn.execute("INSERT INTO docs(id, title, text) VALUES (?, ?, ?)", (doc_id, title, text))
            count += 1
        conn.execute("INSERT INTO fts(rowid, title, text) SELECT rowid, title, text FROM docs")
        conn.execute("INSERT INTO fts(fts) VALUES ('optimize')")
        conn.execute("INSERT INTO meta VALUES ('doc_count', ?)", (str(count),))
        conn.execute("INSERT INTO meta VALUES ('bad_lines_skipped', ?)", (str(skipped),))
    return count, skipped


def corpus_key(corpus: str, shard_count: int) -> str:
    """What identifies one build of the whole index (all its shards)."""
    stat = os.stat(corpus)
    return (
        f"schema={SCHEMA_VERSION} corpus={os.path.abspath(corpus)} size={stat.st_size} "
        f"mtime_ns={stat.st_mtime_ns} shards={shard_count}"
    )


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ShardDatabase:
    """The shard's SQLite database and a pool of connections to it (one per search
    thread: taking a connection is taking a worker slot)."""

    def __init__(
        self,
        corpus: str,
        shard_id: int,
        shard_count: int,
        cache_dir: Optional[str],
        threads: int,
        skip_bad_lines: bool = False,
    ) -> None:
        self.shard_id = shard_id
        key = corpus_key(corpus, shard_count) + f" skip_bad_lines={skip_bad_lines}"
        # Every shard of one build shares the generation (leaf.proto, Info.generation).
        self.generation = "sqlite-" + short_hash(key)
        started = time.monotonic()
        self._keeper: Optional[sqlite3.Connection] = None
        if cache_dir:
            self.uri = self._cached_file(
                corpus, shard_id, shard_count, cache_dir, key, skip_bad_lines
            )
        else:
            name = f"fanout-sqlite-{os.getpid()}-{shard_id}-{id(self)}"
            self.uri = f"file:{name}?mode=memory&cache=shared"
            # The in-memory database lives as long as one connection to it does.
            self._keeper = sqlite3.connect(self.uri, uri=True, check_same_thread=False)
            build_shard(self._keeper, corpus, shard_id, shard_count, skip_bad_lines)
        self.build_seconds = time.monotonic() - started
        self._pool: "queue.Queue[sqlite3.Connection]" = queue.Queue()
        for _ in range(max(1, threads)):
            conn = sqlite3.connect(self.uri, uri=True, check_same_thread=False)
            self._pool.put(conn)
        probe = self._pool.get()
        try:
            meta = dict(probe.execute("SELECT key, value FROM meta").fetchall())
        finally:
            self._pool.put(probe)
        self.doc_count = int(meta["doc_count"])
        self.bad_lines_skipped = int(meta.get("bad_lines_skipped", 0))

    @staticmethod
    def _cached_file(corpus, shard_id, shard_count, cache_dir, key, skip_bad_lines) -> str:
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"sqlite-shard-{shard_id}-of-{shard_count}-{short_hash(key + f' shard={shard_id}')}.db"
        if not path.exists():
            # Build aside, then rename: a replica starting at the same time never
            # sees a half-built file.
            handle, staging = tempfile.mkstemp(prefix=".building-", suffix=".db", dir=directory)
            os.close(handle)
            try:
                conn = sqlite3.connect(staging)
                try:
                    build_shard(conn, corpus, shard_id, shard_count, skip_bad_lines)
                finally:
                    conn.close()
                os.replace(staging, path)
                log.info("built %s", path)
            finally:
                if os.path.exists(staging):
                    os.unlink(staging)
        else:
            log.info("reusing %s", path)
        return f"file:{path}?mode=ro&immutable=1"

    def acquire(self, call: Call) -> sqlite3.Connection:
        """Waits for a connection, giving up when the call must stop."""
        while True:
            call.check("the wait for a search thread")
            try:
                conn = self._pool.get(timeout=0.01)
            except queue.Empty:
                continue
            call.start_work()
            conn.set_progress_handler(lambda: 1 if call.should_stop() else 0, PROGRESS_STEPS)
            return conn

    def release(self, conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(None, 0)
        self._pool.put(conn)


# ---------------------------------------------------------------- queries

_F32 = struct.Struct("<f")


def f32(value: float) -> float:
    """``value`` rounded to float32, as it travels in ShardHit.score."""
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:  # beyond float32's range: infinity, as a C cast gives
        return math.copysign(math.inf, value)


def next_up_f32(value: float) -> float:
    """The float32 just above ``value`` (a float32)."""
    if math.isinf(value):
        return value
    bits = struct.unpack("<i", _F32.pack(value))[0]
    if value == 0:
        return struct.unpack("<f", struct.pack("<i", 1))[0]
    bits += 1 if value > 0 else -1
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def query_words(query: str) -> List[str]:
    """The words a natural-mode query searches for, in order, each once."""
    size = len(query.encode("utf-8"))
    if size > MAX_QUERY_BYTES:
        raise invalid(
            f"query is {size} bytes long, more than the limit of {MAX_QUERY_BYTES} "
            "(max query bytes)"
        )
    words: List[str] = []
    seen = set()
    for match in _WORD.finditer(query.lower()):
        word = match.group(0)
        if word in STOP_WORDS or word in seen:
            continue
        seen.add(word)
        words.append(word)
        if len(words) > MAX_QUERY_WORDS:
            distinct = len(set(_WORD.findall(query.lower())) - STOP_WORDS)
            raise invalid(
                f"query has {distinct} distinct words, more than the limit of "
                f"{MAX_QUERY_WORDS} (max query terms)"
            )
    if not words:
        raise invalid("query has no searchable terms")
    return words


def match_expression(query: str, mode: int) -> str:
    if mode == search_pb2.QUERY_MODE_SYNTAX:
        raise invalid("syntax mode is not supported by this leaf")
    if mode != search_pb2.QUERY_MODE_NATURAL:
        raise invalid(f"invalid request: unknown query mode {mode}")
    # Words hold letters and digits only: quoting makes each one a plain string.
    return " OR ".join(f'"{word}"' for word in query_words(query))


def _interrupted(error: sqlite3.Error, call: Call, during: str) -> ContractError:
    if call.should_stop():
        try:
            call.check(during)
        except ContractError as stop:
            return stop
    return ContractError(grpc.StatusCode.INTERNAL, f"sqlite: {error}", retryable=True)


class SqliteLeaf:
    def __init__(self, db: ShardDatabase) -> None:
        self.db = db

    # ---- phase one

    def search(self, request, call: Call):
        k = resolve_k(request.k)
        expression = match_expression(request.query, request.mode)
        after = None
        if request.HasField("search_after"):
            if math.isnan(request.search_after.score):
                raise invalid("invalid request: search_after score is NaN")
            after = (request.search_after.score, request.search_after.id)
        filter_ids = set()
        for term_filter in request.filters:
            if term_filter.field != "id":
                raise invalid(
                    f'cannot filter on field {quote(term_filter.field)}: only "id" can be filtered on'
                )
            filter_ids.add(term_filter.value)
        conn = self.db.acquire(call)
        try:
            hits, total = self._search(conn, expression, k, after, filter_ids, call)
        except sqlite3.Error as error:
            raise _interrupted(error, call, "the search") from None
        finally:
            self.db.release(conn)
        response = search_pb2.ShardSearchResponse(
            total_hits=total, generation=self.db.generation, docs_searched=self.db.doc_count
        )
        for score, doc_id, rowid in hits:
            response.hits.add(
                score=score, id=doc_id, shard_id=self.db.shard_id, segment_ord=0, doc_id=rowid
            )
        return response, self.db.doc_count

    def _search(self, conn, expression, k, after, filter_ids, call):
        where = "fts MATCH ?"
        params: list = [expression]
        if filter_ids:
            if len(filter_ids) > 1:  # every filter must hold: two ids never do
                return [], 0
            row = conn.execute("SELECT rowid FROM docs WHERE id = ?", (next(iter(filter_ids)),)).fetchone()
            if row is None:
                return [], 0
            where += " AND fts.rowid = ?"
            params.append(row[0])
        total = conn.execute(f"SELECT count(*) FROM fts WHERE {where}", params).fetchone()[0]
        # Rows come sorted by bm25 (best first) from the inner query; the id is looked
        # up only for the rows read, which stop soon after the k-th.
        sql = (
            "SELECT q.rowid, q.r, (SELECT id FROM docs WHERE docs.rowid = q.rowid) FROM "
            f"(SELECT rowid, bm25(fts, {TITLE_WEIGHT}, {TEXT_WEIGHT}) AS r FROM fts "
            f"WHERE {where} ORDER BY r) q"
        )
        if after is not None:
            # Superset of the rows after the key (exact check below, on float32 scores).
            sql += " WHERE q.r >= ?"
            params.append(-next_up_f32(after[0]))
        kept: List[Tuple[float, str, int]] = []
        threshold: Optional[float] = None
        previous_rank = -math.inf
        ordered = True
        for index, (rowid, rank, doc_id) in enumerate(conn.execute(sql, params)):
            if index % 256 == 255:
                call.check("the search")
            if rank < previous_rank:
                ordered = False  # never seen; then read every row and sort them all
            previous_rank = rank
            score = f32(-rank)
            if ordered and threshold is not None and score < threshold:
                break  # scores only fall from here on
            if after is not None and not (
                score < after[0] or (score == after[0] and doc_id > after[1])
            ):
                continue
            kept.append((score, doc_id, rowid))
            if threshold is None and len(kept) >= k:
                threshold = score
        kept.sort(key=lambda hit: (-hit[0], hit[1]))
        return kept[:k], total

    # ---- phase two

    def fetch(self, request, call: Call):
        names = list(request.fields) or ["id", "title"]
        for name in names:
            if name not in ("id", "title", "text"):
                raise invalid(f"unknown stored field {quote(name)}: expected one of id, title, text")
        if len(request.hits) > MAX_FETCH_HITS:
            raise invalid(
                f"invalid request: {len(request.hits)} hits to fetch but at most {MAX_FETCH_HITS}"
            )
        expression = match_expression(request.query, request.mode) if request.snippets else None
        conn = self.db.acquire(call)
        response = search_pb2.FetchResponse()
        try:
            for hit in request.hits:
                call.check("the fetch")
                row = conn.execute(
                    "SELECT rowid, id, title, text FROM docs WHERE id = ?", (hit.id,)
                ).fetchone()
                doc = response.docs.add(id=hit.id)
                if row is None:
                    doc.found = False
                    continue
                doc.found = True
                values = {"id": row[1], "title": row[2], "text": row[3]}
                for name in names:
                    doc.fields[name] = values[name]
                if expression is not None:
                    doc.snippet = self._snippet(conn, expression, row[0], row[3])
        except sqlite3.Error as error:
            raise _interrupted(error, call, "the fetch") from None
        finally:
            self.db.release(conn)
        return response, self.db.doc_count

    @staticmethod
    def _snippet(conn, expression: str, rowid: int, text: str) -> str:
        row = conn.execute(
            "SELECT snippet(fts, 1, char(1), char(2), '…', 24) FROM fts "
            "WHERE fts MATCH ? AND rowid = ?",
            (expression, rowid),
        ).fetchone()
        if row is not None and "\x01" in (row[0] or ""):
            escaped = html.escape(row[0], quote=True).replace("&#x27;", "&#39;")
            return escaped.replace("\x01", "<b>").replace("\x02", "</b>")
        # No word of the query in the text: its beginning, cut at a space.
        end = min(len(text), SNIPPET_MAX_CHARS)
        if end < len(text):
            space = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end))
            if space > 0:
                end = space
        return html.escape(text[:end].rstrip(), quote=True).replace("&#x27;", "&#39;")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fanout_py.sqlite_leaf", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="JSON Lines corpus, plain or gzip")
    parser.add_argument("--db-cache", help="folder for the built shard db (else in memory)")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) bad lines and repeated ids instead of failing; the bundled "
        "corpus needs it (it repeats some ids)",
    )
    parser.add_argument(
        "--search-threads",
        type=int,
        default=os.cpu_count() or 2,
        help="SQLite connections, i.e. searches running at once (others wait)",
    )
    add_leaf_arguments(parser)
    serving.add_serving_arguments(parser, default_workers=0)
    args = parser.parse_args(argv)
    check_shard_arguments(args)
    serving.setup_logging()
    try:
        db = ShardDatabase(
            args.corpus,
            args.shard_id,
            args.shard_count,
            args.db_cache,
            args.search_threads,
            args.skip_bad_lines,
        )
    except (BadCorpus, OSError) as error:
        raise SystemExit(f"sqlite_leaf: {error}")
    log.info(
        "shard %d/%d: %d documents (%d bad lines skipped), generation %s, ready in %.2f s",
        args.shard_id, args.shard_count, db.doc_count, db.bad_lines_skipped, db.generation,
        db.build_seconds,
    )
    leaf = SqliteLeaf(db)
    servicer = LeafServicer(
        shard_id=args.shard_id,
        shard_count=args.shard_count,
        generation=db.generation,
        doc_count=db.doc_count,
        handlers={
            SEARCH_TYPE_URL: PayloadHandler(search_pb2.ShardSearchRequest, leaf.search),
            FETCH_TYPE_URL: PayloadHandler(search_pb2.FetchRequest, leaf.fetch),
        },
        max_in_flight=args.max_in_flight,
        delay_ms=args.delay_ms,
    )
    if args.threads <= 0:  # room for every allowed Execute plus Info and health
        args.threads = args.max_in_flight + 16
    serving.run(
        "leaf",
        [LEAF_SERVICE_NAME],
        lambda server: leaf_pb2_grpc.add_LeafServicer_to_server(servicer, server),
        args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
