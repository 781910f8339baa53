"""Coarse quantiser for the ``ivf`` vector index: spherical k-means over a sample of the stored vectors.

An inverted-file index (Jégou, Douze and Schmid, "Product quantization for nearest neighbor search",
IEEE TPAMI 2011, §III-A) puts every vector in the partition of its nearest centroid; a query scans only
the partitions of its ``probes`` nearest centroids. sqlite-vec's vec0 ``partition key`` keeps each
partition's vectors together, so a probe reads only its own chunks. Training runs on a private
in-memory connection (sqlite-vec finds each sample's nearest centroid), off the event loop.
"""

from __future__ import annotations

import math
import random
import sqlite3
import struct
from collections.abc import Sequence

import sqlite_vec

# Lloyd iterations: the assignment stabilises within a handful on embedding-like data; more iterations
# cost training time without a measurable recall gain at the probe counts we use.
DEFAULT_ITERATIONS = 6
# vec0 stores vectors in chunks of this many slots; centroid tables are small, so keep chunks small too.
CENTROID_CHUNK = 256


def default_lists(count: int) -> int:
    """About sqrt(N) partitions (the usual IVF rule of thumb), at least 1 and at most 4096."""
    return max(1, min(4096, round(math.sqrt(max(count, 1)))))


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def train(samples: Sequence[bytes], dim: int, lists: int, *, iterations: int = DEFAULT_ITERATIONS,
          seed: int = 0) -> list[bytes]:
    """Centroids (float32 blobs, unit length) of ``lists`` clusters of the sample vectors."""
    if not samples:
        return []
    rnd = random.Random(seed)  # noqa: S311 - picks initial centroids, nothing secret
    lists = min(lists, len(samples))
    fmt = f"<{dim}f"
    vectors = [_normalise(list(struct.unpack(fmt, s))) for s in samples]
    centroids = [vectors[i] for i in rnd.sample(range(len(vectors)), lists)]
    conn = sqlite3.connect(":memory:")
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute(
            f"CREATE VIRTUAL TABLE c USING vec0(id INTEGER PRIMARY KEY, e float[{dim}] distance_metric=cosine,"
            f" chunk_size={CENTROID_CHUNK})"
        )
        for _ in range(iterations):
            conn.execute("DELETE FROM c")
            conn.executemany("INSERT INTO c(id, e) VALUES (?, ?)",
                             [(i, struct.pack(fmt, *v)) for i, v in enumerate(centroids)])
            members: list[list[list[float]]] = [[] for _ in centroids]
            for vector, blob in zip(vectors, samples, strict=True):
                nearest = conn.execute("SELECT id FROM c WHERE e MATCH ? AND k = 1", (blob,)).fetchone()[0]
                members[nearest].append(vector)
            centroids = [
                # zip(*m) transposes in C, so the per-dimension sums cost no Python loop per element.
                _normalise([sum(column) for column in zip(*m, strict=True)]) if m
                else vectors[rnd.randrange(len(vectors))]  # re-seed an empty cluster
                for m in members
            ]
    finally:
        conn.close()
    return [struct.pack(fmt, *c) for c in centroids]
