"""The vectors of the k-NN workload, and the exact answer over all shards (for tests).

Pure Python, no gRPC: a leaf in another language can reproduce the vectors from this
description. Vector ``j`` of shard ``i`` (id ``"s{i}-{j}"``) has ``dim`` components drawn
from SplitMix64 seeded with ``mix(mix(mix(seed) ^ i) ^ j)``, where ``mix(x)`` is one
SplitMix64 output for state ``x``; each component is ``(z >> 40) / 2**24 * 2 - 1`` for
the next output ``z``: a multiple of 2**-23 in [-1, 1), exact in float32.

Distances are squared Euclidean, computed as ``math.dist(v, q) ** 2`` in double
precision and rounded to float32 (the type of Neighbor.distance); neighbours are
ordered by that float32 distance ascending, then id ascending.
"""

from __future__ import annotations

import heapq
import math
import struct
from typing import Iterable, List, Sequence, Tuple

_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_F32 = struct.Struct("<f")


def _finalize(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def mix(x: int) -> int:
    """One SplitMix64 output for state ``x``."""
    return _finalize((x + _GOLDEN) & _U64)


def vector_id(shard_id: int, index: int) -> str:
    return f"s{shard_id}-{index}"


def make_vector(seed: int, shard_id: int, index: int, dim: int) -> Tuple[float, ...]:
    state = mix(mix(mix(seed & _U64) ^ shard_id) ^ index)
    values = []
    for _ in range(dim):
        state = (state + _GOLDEN) & _U64
        z = _finalize(state)
        values.append((z >> 40) / float(1 << 24) * 2.0 - 1.0)
    return tuple(values)


def shard_vectors(seed: int, shard_id: int, count: int, dim: int) -> List[Tuple[float, ...]]:
    return [make_vector(seed, shard_id, index, dim) for index in range(count)]


def f32(value: float) -> float:
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:  # beyond float32's range: infinity, as a C cast gives
        return math.copysign(math.inf, value)


def squared_distance(vector: Sequence[float], query: Sequence[float]) -> float:
    """Squared Euclidean distance, rounded to float32."""
    distance = math.dist(vector, query)
    return f32(distance * distance)


def nearest(
    candidates: Iterable[Tuple[float, str, int]], k: int
) -> List[Tuple[float, str, int]]:
    """The k best (distance, id, shard) by distance ascending, then id, then shard."""
    return heapq.nsmallest(k, candidates)


def exact_knn(
    query: Sequence[float], k: int, shard_count: int, vectors_per_shard: int, dim: int, seed: int
) -> List[Tuple[str, float, int]]:
    """The exact global answer: (id, distance, shard) of the k nearest over every shard."""
    query = [f32(value) for value in query]
    candidates = (
        (squared_distance(vector, query), vector_id(shard, index), shard)
        for shard in range(shard_count)
        for index, vector in enumerate(shard_vectors(seed, shard, vectors_per_shard, dim))
    )
    return [(doc_id, distance, shard) for distance, doc_id, shard in nearest(candidates, k)]
