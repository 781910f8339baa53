"""Agent memory: items chunked for search, an FTS5 keyword index and a sqlite-vec vector index.

Access filters (owner, pool, scope, visibility, type, expiry) are columns of the vec0 table too, so a
vector search applies them inside the KNN scan instead of filtering a top-k afterwards (which would
silently return fewer results). Metadata filters cannot be vec0 constraints; a search with them runs an
exact scan in SQL with every filter in the WHERE clause. Hybrid search fuses the keyword and vector
rankings by reciprocal rank (Cormack, Clarke and Büttcher, SIGIR 2009, k = 60).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import sqlite3
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from daemon.store import ivf
from daemon.store.embedders import Embedder
from daemon.store.errors import InvalidInputError, NotFoundError, StoreError
from daemon.store.keyword import keyword_top, query_words
from daemon.store.outbox import enqueue

if TYPE_CHECKING:
    from daemon.store.db import Database

log = logging.getLogger(__name__)

MemoryType = Literal["short_term", "long_term", "profile"]
VectorIndex = Literal["exact", "binary", "ivf"]
MEMORY_TYPES = ("short_term", "long_term", "profile")
SCOPES = ("AGENT_PRIVATE", "USER", "PROJECT", "TEAM", "GLOBAL")
VISIBILITIES = ("private", "pool", "public")
# ivf_vectors rowid = (partition + 1) << IVF_SHIFT | chunk_id, so each partition is one rowid range read
# from consecutive table pages (partition -1, unassigned, is rowids below 1 << IVF_SHIFT). 40 bits of
# chunk id and (4096 + 1) partitions stay inside SQLite's signed 64-bit rowid.
IVF_SHIFT = 40
MAX_CHUNK_ID = (1 << IVF_SHIFT) - 1
NO_EXPIRY = 1e300  # vec0 metadata columns cannot hold NULL: "never expires" is a far-future time.
RRF_K = 60  # Cormack et al. 2009: the constant that worked best across their runs.
MAX_CONTENT_CHARS = 1_000_000
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class MemoryItem:
    id: str
    owner_type: str
    owner_id: str
    pool: str
    scope: str
    type: str
    content: str
    metadata: Mapping[str, Any]
    visibility: str
    ttl_s: float | None
    expires_at: float | None
    created: float
    updated: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "owner_type": self.owner_type, "owner_id": self.owner_id, "pool": self.pool,
            "scope": self.scope, "type": self.type, "content": self.content, "metadata": dict(self.metadata),
            "visibility": self.visibility, "ttl_s": self.ttl_s, "expires_at": self.expires_at,
            "created": self.created, "updated": self.updated,
        }


@dataclass(frozen=True, slots=True)
class MemoryFilter:
    """Constraints ANDed together inside the query. ``None`` means "any"; sequences mean "one of"."""

    owner_type: str | None = None
    owner_id: str | None = None
    pools: Sequence[str] | None = None
    scopes: Sequence[str] | None = None
    visibility: Sequence[str] | None = None
    types: Sequence[str] | None = None
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    # Access rule of a reader (owner_type, owner_id): its own items OR items with a visibility in
    # ``reader_visibility``. ANDed with everything above, and evaluated inside the query.
    reader: tuple[str, str] | None = None
    reader_visibility: Sequence[str] = ("public",)

    def access_branches(self) -> list[MemoryFilter]:
        """The reader rule as a union of AND-only filters (vec0 KNN constraints cannot express OR)."""
        if self.reader is None:
            return [self]
        own = replace(self, reader=None, owner_type=self.reader[0], owner_id=self.reader[1])
        if (self.owner_type not in (None, self.reader[0])) or (self.owner_id not in (None, self.reader[1])):
            own_branch: list[MemoryFilter] = []
        else:
            own_branch = [own]
        allowed = list(self.reader_visibility)
        if self.visibility is not None:
            allowed = [v for v in allowed if v in self.visibility]
        shared = replace(self, reader=None, visibility=allowed)
        return [*own_branch, shared]


@dataclass(frozen=True, slots=True)
class SearchHit:
    item: MemoryItem
    score: float
    similarity: float | None
    keyword_rank: int | None
    vector_rank: int | None
    chunk: str


_ITEM_COLUMNS = (
    "m.id, m.owner_type, m.owner_id, m.pool, m.scope, m.type, m.content, m.metadata, m.visibility, m.ttl_s,"
    " m.expires_at, m.created, m.updated"
)


def _item(row: Sequence[Any]) -> MemoryItem:
    return MemoryItem(
        str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]), str(row[6]),
        json.loads(row[7]), str(row[8]), row[9], row[10], float(row[11]), float(row[12]),
    )


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Split long content into overlapping chunks, preferring to break at whitespace."""
    if len(text) <= size:
        return [text]
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            if space > start:
                end = space
        chunks.append(text[start:end])
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return chunks


def vector_blob(vector: Sequence[float], dim: int) -> bytes:
    if len(vector) != dim:
        raise InvalidInputError(f"vector has {len(vector)} dimensions, the store uses {dim}")
    try:
        values = [float(v) for v in vector]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("vector must contain numbers") from exc
    if not all(math.isfinite(v) for v in values):
        raise InvalidInputError("vector must contain finite numbers")
    return struct.pack(f"<{dim}f", *values)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class Memory:
    """Memory items; each write also enqueues a ``memory`` outbox record in the same transaction."""

    def __init__(
        self,
        db: Database,
        *,
        embedder: Embedder | None,
        dim: int,
        chunk_chars: int,
        chunk_overlap: int,
        clock: Callable[[], float],
        vector_index: VectorIndex = "ivf",
        binary_oversample: int = 10,
        ivf_probes: int = 8,
        ivf_train_at: int = 20_000,
    ) -> None:
        if vector_index not in ("exact", "binary", "ivf"):
            raise InvalidInputError(f"vector_index must be 'exact', 'binary' or 'ivf', got {vector_index!r}")
        if vector_index == "binary" and dim % 8:
            raise InvalidInputError("vector_index 'binary' needs embedding_dim divisible by 8")
        self.vector_index: VectorIndex = vector_index
        self._oversample = max(1, binary_oversample)
        # exact: one vec0 float table does KNN and holds the vectors. binary: a vec0 bit table (sign of
        # each dimension) finds candidates by Hamming distance, a plain table holds the float vectors
        # that re-rank them exactly.
        # ivf: one plain table holds each float vector with its access columns, keyed so that each
        # partition (nearest centroid, see daemon/store/ivf.py) is one rowid range; partition -1 holds
        # vectors not assigned yet and is always scanned, so search stays exact for them.
        self._knn_table = {"exact": "chunk_vec", "binary": "chunk_bits", "ivf": "ivf_vectors"}[vector_index]
        self._float_table = {"exact": "chunk_vec", "binary": "chunk_f32", "ivf": "ivf_vectors"}[vector_index]
        self._probes = max(1, ivf_probes)
        self._train_at = ivf_train_at
        self._trained = False
        self._building = False
        if dim <= 0 or dim > 8192:
            raise InvalidInputError(f"embedding_dim must be 1..8192, got {dim}")
        if embedder is not None and embedder.dim != dim:
            raise InvalidInputError(f"embedder produces {embedder.dim} dimensions but embedding_dim is {dim}")
        self._db = db
        self.embedder = embedder
        self.dim = dim
        self._chunk_chars = max(100, chunk_chars)
        self._chunk_overlap = max(0, min(chunk_overlap, self._chunk_chars // 2))
        self._clock = clock

    def setup(self, conn: sqlite3.Connection) -> None:
        """Writer thread, at open: create the vector table for the configured dimension."""
        for key, value in (("embedding_dim", str(self.dim)), ("vector_index", self.vector_index)):
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            if row is not None and str(row[0]) != value:
                raise StoreError(f"database was built with {key} = {row[0]}, configured {key} is {value}")
            conn.execute("INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)", (key, value))
        access_columns = (
            " owner_type TEXT, owner_id TEXT, pool TEXT, scope TEXT, type TEXT, visibility TEXT, expires_at FLOAT"
        )
        if self.vector_index == "exact":
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vec USING vec0("
                f"chunk_id INTEGER PRIMARY KEY, embedding float[{self.dim}] distance_metric=cosine,{access_columns})"
            )
        elif self.vector_index == "binary":
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_bits USING vec0("
                f"chunk_id INTEGER PRIMARY KEY, embedding bit[{self.dim}],{access_columns})"
            )
        else:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ivf_vectors(id INTEGER PRIMARY KEY, chunk_id INTEGER NOT NULL UNIQUE,"
                " embedding BLOB NOT NULL, owner_type TEXT NOT NULL, owner_id TEXT NOT NULL, pool TEXT NOT NULL,"
                " scope TEXT NOT NULL, type TEXT NOT NULL, visibility TEXT NOT NULL, expires_at REAL NOT NULL)"
            )
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS ivf_centroids USING vec0("
                f"id INTEGER PRIMARY KEY, embedding float[{self.dim}] distance_metric=cosine,"
                f" chunk_size={ivf.CENTROID_CHUNK})"
            )
            self._migrate_vec0_ivf(conn)
            self._trained = conn.execute("SELECT count(*) FROM ivf_centroids").fetchone()[0] > 0
        if self.vector_index == "binary":
            conn.execute(
                "CREATE TABLE IF NOT EXISTS chunk_f32(chunk_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL,"
                " cluster INTEGER NOT NULL DEFAULT -1)"
            )

    @staticmethod
    def _migrate_vec0_ivf(conn: sqlite3.Connection) -> None:
        """Move vectors of the first ivf layout (a vec0 table partitioned by centroid plus a float copy in
        chunk_f32) into ivf_vectors: on disk, vec0 read every partition's chunk list per probe (~50 ms at
        1M vectors) where a rowid range reads only that partition's pages."""
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "chunk_ivf" not in tables or "chunk_f32" not in tables:
            return
        conn.execute(
            "INSERT OR IGNORE INTO ivf_vectors(id, chunk_id, embedding, owner_type, owner_id, pool, scope, type,"
            " visibility, expires_at) SELECT ((f.cluster + 1) << ?) | f.chunk_id, f.chunk_id, f.embedding,"
            " m.owner_type, m.owner_id, m.pool, m.scope, m.type, m.visibility, coalesce(m.expires_at, ?)"
            " FROM chunk_f32 f JOIN chunks c ON c.id = f.chunk_id JOIN memories m ON m.id = c.memory_id",
            (IVF_SHIFT, NO_EXPIRY),
        )
        conn.execute("DROP TABLE chunk_ivf")
        conn.execute("DROP TABLE chunk_f32")
        log.info("ivf vectors moved to the range-partitioned table")

    async def aclose(self) -> None:
        if self.embedder is not None:
            await self.embedder.aclose()

    # -- writes ----------------------------------------------------------------------------------

    async def _vectors_for(
        self, chunks: list[str], vector: Sequence[float] | None, chunk_vectors: Sequence[Sequence[float]] | None
    ) -> list[bytes | None]:
        if chunk_vectors is not None:
            if len(chunk_vectors) != len(chunks):
                raise InvalidInputError(f"{len(chunk_vectors)} chunk vectors for {len(chunks)} chunks")
            return [vector_blob(v, self.dim) for v in chunk_vectors]
        if vector is not None:
            # A caller-supplied vector describes the whole item; it is searched through the first chunk.
            return [vector_blob(vector, self.dim)] + [None] * (len(chunks) - 1)
        if self.embedder is not None:
            embedded = await self.embedder.embed(chunks)
            return [vector_blob(v, self.dim) for v in embedded]
        return [None] * len(chunks)

    def _insert_chunks(
        self, conn: sqlite3.Connection, item: MemoryItem, chunks: list[str], vectors: list[bytes | None]
    ) -> None:
        expires = item.expires_at if item.expires_at is not None else NO_EXPIRY
        for idx, (text, vec) in enumerate(zip(chunks, vectors, strict=True)):
            cursor = conn.execute("INSERT INTO chunks(memory_id, idx, text) VALUES (?, ?, ?)", (item.id, idx, text))
            if vec is not None:
                access = (item.owner_type, item.owner_id, item.pool, item.scope, item.type, item.visibility, expires)
                if self.vector_index == "exact":
                    conn.execute(
                        "INSERT INTO chunk_vec(chunk_id, embedding, owner_type, owner_id, pool, scope, type,"
                        " visibility, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (cursor.lastrowid, vec, *access),
                    )
                elif self.vector_index == "ivf":
                    self._insert_ivf(conn, int(cursor.lastrowid or 0), vec, access, self._nearest(conn, vec))
                else:
                    conn.execute(
                        "INSERT INTO chunk_bits(chunk_id, embedding, owner_type, owner_id, pool, scope, type,"
                        " visibility, expires_at) VALUES (?, vec_quantize_binary(?), ?, ?, ?, ?, ?, ?, ?)",
                        (cursor.lastrowid, vec, *access),
                    )
                    conn.execute("INSERT INTO chunk_f32(chunk_id, embedding) VALUES (?, ?)", (cursor.lastrowid, vec))

    def _nearest(self, conn: sqlite3.Connection, vec: bytes) -> int:
        """The partition of a vector: its nearest centroid, or -1 before the index is trained."""
        if not self._trained or self._building:
            return -1
        row = conn.execute("SELECT id FROM ivf_centroids WHERE embedding MATCH ? AND k = 1", (vec,)).fetchone()
        return -1 if row is None else int(row[0])

    @staticmethod
    def _insert_ivf(conn: sqlite3.Connection, chunk_id: int, vec: bytes, access: Sequence[Any], cluster: int) -> None:
        if not 0 < chunk_id <= MAX_CHUNK_ID:
            raise StoreError(f"chunk id {chunk_id} does not fit the ivf rowid layout")
        conn.execute(
            "INSERT INTO ivf_vectors(id, chunk_id, embedding, owner_type, owner_id, pool, scope, type, visibility,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((cluster + 1) << IVF_SHIFT | chunk_id, chunk_id, vec, *access),
        )

    async def build_vector_index(
        self, *, lists: int | None = None, sample: int = 20_000, iterations: int = ivf.DEFAULT_ITERATIONS,
        batch: int = 500,
    ) -> int:
        """Train the IVF centroids on a sample and move every vector into its partition; returns lists.

        Runs in small write jobs so other writes keep flowing; searches stay correct throughout because
        partition -1 (not yet assigned) is always scanned in full.
        """
        if self.vector_index != "ivf":
            raise InvalidInputError("build_vector_index needs vector_index 'ivf'")

        def read_sample(conn: sqlite3.Connection) -> tuple[int, list[bytes]]:
            total = int(conn.execute("SELECT count(*) FROM ivf_vectors").fetchone()[0])
            rows = conn.execute("SELECT embedding FROM ivf_vectors ORDER BY random() LIMIT ?", (sample,))
            return total, [bytes(r[0]) for r in rows]

        total, samples = await self._db.read(read_sample)
        if not samples:
            return 0
        n_lists = lists or ivf.default_lists(total)
        centroids = await asyncio.to_thread(ivf.train, samples, self.dim, n_lists, iterations=iterations)

        def start(conn: sqlite3.Connection) -> None:
            self._building = True  # new vectors go to -1 until the new centroids are in place

        await self._db.write(start)
        try:
            while await self._db.write(functools.partial(self._reassign_batch, to_unassigned=True, batch=batch)):
                pass

            def install(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM ivf_centroids")
                conn.executemany("INSERT INTO ivf_centroids(id, embedding) VALUES (?, ?)", list(enumerate(centroids)))
                self._trained, self._building = True, False

            await self._db.write(install)
        finally:
            def stop(conn: sqlite3.Connection) -> None:
                self._building = False

            await self._db.write(stop)
        while await self._db.write(functools.partial(self._reassign_batch, to_unassigned=False, batch=batch)):
            pass
        return len(centroids)

    def _reassign_batch(self, conn: sqlite3.Connection, *, to_unassigned: bool, batch: int) -> int:
        """Writer thread: move up to ``batch`` vectors to partition -1, or from -1 to their centroid.

        A move changes only the row's key (its partition); SQLite rewrites the row under the new rowid."""
        rows = conn.execute(
            "SELECT chunk_id, embedding FROM ivf_vectors WHERE id >= ? LIMIT ?" if to_unassigned
            else "SELECT chunk_id, embedding FROM ivf_vectors WHERE id < ? LIMIT ?",
            (1 << IVF_SHIFT, batch),
        ).fetchall()
        moved = 0
        for chunk_id, vec in rows:
            cluster = -1 if to_unassigned else self._nearest(conn, vec)
            if cluster == -1 and not to_unassigned:
                break  # no centroids (a concurrent rebuild started): leave the rest unassigned
            conn.execute("UPDATE ivf_vectors SET id = ? WHERE chunk_id = ?", ((cluster + 1) << IVF_SHIFT | chunk_id,
                                                                             chunk_id))
            moved += 1
        return moved

    async def maintain_index(self) -> None:
        """Train the IVF index once enough vectors exist (called by the store's periodic task)."""
        if self.vector_index != "ivf" or self._trained or self._building:
            return
        count = await self._db.read(lambda c: int(c.execute("SELECT count(*) FROM ivf_vectors").fetchone()[0]))
        if count >= self._train_at:
            await self.build_vector_index()

    def _delete_chunks(self, conn: sqlite3.Connection, memory_id: str) -> None:
        ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE memory_id = ?", (memory_id,))]
        for chunk_id in ids:
            conn.execute(f"DELETE FROM {self._knn_table} WHERE chunk_id = ?", (chunk_id,))  # noqa: S608 - table name is one of two constants
            if self._float_table != self._knn_table:
                conn.execute(f"DELETE FROM {self._float_table} WHERE chunk_id = ?", (chunk_id,))  # noqa: S608 - as above
        conn.execute("DELETE FROM chunks WHERE memory_id = ?", (memory_id,))

    def _outbox(self, conn: sqlite3.Connection, op: str, item: MemoryItem | None, memory_id: str) -> None:
        body: dict[str, Any] = {"op": op, "id": memory_id}
        if item is not None:
            body["item"] = item.to_json()
        now = self._clock()
        enqueue(conn, "memory", f"{memory_id}:{op}:{now!r}", json.dumps(body, sort_keys=True).encode(), now)

    async def create(
        self,
        *,
        owner_type: str,
        owner_id: str,
        content: str,
        pool: str = "default",
        scope: str = "AGENT_PRIVATE",
        type: MemoryType | str = "long_term",
        metadata: Mapping[str, Any] | None = None,
        visibility: str = "private",
        ttl_s: float | None = None,
        vector: Sequence[float] | None = None,
        chunk_vectors: Sequence[Sequence[float]] | None = None,
        memory_id: str | None = None,
    ) -> MemoryItem:
        """Store a memory item (chunked, indexed, vectors when given or embedded); durable on return."""
        _check_choice("type", type, MEMORY_TYPES)
        _check_choice("scope", scope, SCOPES)
        _check_choice("visibility", visibility, VISIBILITIES)
        if not content or len(content) > MAX_CONTENT_CHARS:
            raise InvalidInputError(f"content must be 1..{MAX_CONTENT_CHARS} characters")
        if ttl_s is not None and (not math.isfinite(ttl_s) or ttl_s <= 0):
            raise InvalidInputError("ttl_s must be a positive number of seconds")
        meta = dict(metadata or {})
        try:
            meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from exc
        now = self._clock()
        item = MemoryItem(
            memory_id or str(uuid.uuid4()), owner_type, owner_id, pool, scope, type, content, json.loads(meta_json),
            visibility, ttl_s, None if ttl_s is None else now + ttl_s, now, now,
        )
        chunks = chunk_text(content, self._chunk_chars, self._chunk_overlap)
        vectors = await self._vectors_for(chunks, vector, chunk_vectors)

        def run(conn: sqlite3.Connection) -> MemoryItem:
            try:
                conn.execute(
                    "INSERT INTO memories(id, owner_type, owner_id, pool, scope, type, content, metadata, visibility,"
                    " ttl_s, expires_at, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (item.id, owner_type, owner_id, pool, scope, type, content, meta_json, visibility, ttl_s,
                     item.expires_at, now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise InvalidInputError(f"memory {item.id} already exists") from exc
            self._insert_chunks(conn, item, chunks, vectors)
            self._outbox(conn, "upsert", item, item.id)
            return item

        return await self._db.write(run)

    async def get(self, memory_id: str) -> MemoryItem | None:
        """The item, or None when it does not exist or has expired."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> MemoryItem | None:
            row = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM memories m WHERE m.id = ?"  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                " AND (m.expires_at IS NULL OR m.expires_at > ?)",
                (memory_id, now),
            ).fetchone()
            return None if row is None else _item(row)

        return await self._db.read(run)

    @staticmethod
    def list_queries(flt: MemoryFilter, now: float, rows: int) -> list[tuple[str, list[Any]]]:
        """The statements of ``list_items``: one per pool, each reading one range of ``memories_pool_created``
        in (created, id) order; ``pool IN (...)`` would make SQLite sort every row of those pools first."""
        pools = None if flt.pools is None else list(dict.fromkeys(flt.pools))
        parts = [flt] if pools is None or len(pools) <= 1 else [replace(flt, pools=[p]) for p in pools]
        out: list[tuple[str, list[Any]]] = []
        for part in parts:
            where, args = Memory._where(part, now)
            out.append((
                f"SELECT {_ITEM_COLUMNS} FROM memories m WHERE {where} ORDER BY m.created, m.id LIMIT ?",  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                [*args, rows],
            ))
        return out

    async def list_items(
        self, flt: MemoryFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[MemoryItem]:
        """Items passing ``flt`` in (created, id) order, oldest first."""
        limit, offset = max(0, min(limit, 1000)), max(0, offset)
        queries = self.list_queries(flt or MemoryFilter(), self._clock(), offset + limit)

        def run(conn: sqlite3.Connection) -> list[MemoryItem]:
            rows: list[Any] = []
            for sql, args in queries:
                rows += conn.execute(sql, args).fetchall()
            if len(queries) > 1:
                rows.sort(key=lambda r: (r[11], r[0]))  # str order is SQLite's BINARY order for UTF-8 text
            return [_item(r) for r in rows[offset : offset + limit]]

        return await self._db.read(run)

    async def update(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        pool: str | None = None,
        scope: str | None = None,
        type: str | None = None,
        visibility: str | None = None,
        ttl_s: float | None = None,
        vector: Sequence[float] | None = None,
    ) -> MemoryItem:
        """Change fields of an item; content changes re-chunk and re-index it. Durable on return."""
        current = await self.get(memory_id)
        if current is None:
            raise NotFoundError(f"memory {memory_id} not found")
        if type is not None:
            _check_choice("type", type, MEMORY_TYPES)
        if scope is not None:
            _check_choice("scope", scope, SCOPES)
        if visibility is not None:
            _check_choice("visibility", visibility, VISIBILITIES)
        if content is not None and (not content or len(content) > MAX_CONTENT_CHARS):
            raise InvalidInputError(f"content must be 1..{MAX_CONTENT_CHARS} characters")
        now = self._clock()
        meta = current.metadata if metadata is None else dict(metadata)
        try:
            meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from exc
        new_ttl = current.ttl_s if ttl_s is None else ttl_s
        item = replace(
            current,
            content=current.content if content is None else content,
            metadata=json.loads(meta_json),
            pool=current.pool if pool is None else pool,
            scope=current.scope if scope is None else scope,
            type=current.type if type is None else type,
            visibility=current.visibility if visibility is None else visibility,
            ttl_s=new_ttl,
            expires_at=current.expires_at if ttl_s is None else now + ttl_s,
            updated=now,
        )
        rechunk = content is not None or vector is not None
        chunks = chunk_text(item.content, self._chunk_chars, self._chunk_overlap)
        vectors = await self._vectors_for(chunks, vector, None) if rechunk else []

        def run(conn: sqlite3.Connection) -> MemoryItem:
            changed = conn.execute(
                "UPDATE memories SET content = ?, metadata = ?, pool = ?, scope = ?, type = ?, visibility = ?,"
                " ttl_s = ?, expires_at = ?, updated = ? WHERE id = ?",
                (item.content, meta_json, item.pool, item.scope, item.type, item.visibility, item.ttl_s,
                 item.expires_at, now, memory_id),
            ).rowcount
            if not changed:
                raise NotFoundError(f"memory {memory_id} not found")
            if rechunk:
                if vector is None and self.embedder is None:
                    # Keep caller-supplied vectors of the first chunk when only the text changed.
                    kept = conn.execute(
                        f"SELECT v.embedding FROM {self._float_table} v JOIN chunks c ON c.id = v.chunk_id"  # noqa: S608 - table name is one of two constants
                        " WHERE c.memory_id = ? AND c.idx = 0",
                        (memory_id,),
                    ).fetchone()
                    if kept is not None:
                        vectors[0] = bytes(kept[0])
                self._delete_chunks(conn, memory_id)
                self._insert_chunks(conn, item, chunks, vectors)
            else:
                conn.execute(
                    f"UPDATE {self._knn_table} SET pool = ?, scope = ?, type = ?, visibility = ?, expires_at = ?"  # noqa: S608 - table name is one of two constants
                    " WHERE chunk_id IN (SELECT id FROM chunks WHERE memory_id = ?)",
                    (item.pool, item.scope, item.type, item.visibility,
                     item.expires_at if item.expires_at is not None else NO_EXPIRY, memory_id),
                )
            self._outbox(conn, "upsert", item, memory_id)
            return item

        return await self._db.write(run)

    async def delete(self, memory_id: str) -> bool:
        """Remove an item and its index entries; False when it did not exist."""

        def run(conn: sqlite3.Connection) -> bool:
            self._delete_chunks(conn, memory_id)
            gone = conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,)).rowcount > 0
            if gone:
                self._outbox(conn, "delete", None, memory_id)
            return gone

        return await self._db.write(run)

    async def purge_expired(self) -> int:
        """Delete items whose TTL has passed (they are already invisible to reads and searches)."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            ids = [str(r[0]) for r in conn.execute(
                "SELECT id FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 10000", (now,)
            )]
            for memory_id in ids:
                self._delete_chunks(conn, memory_id)
                conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
                self._outbox(conn, "expire", None, memory_id)
            return len(ids)

        return await self._db.write(run)

    # -- search ----------------------------------------------------------------------------------

    @staticmethod
    def _column_filters(flt: MemoryFilter, alias: str) -> tuple[list[str], list[Any]]:
        """Owner equality and pool/scope/visibility/type membership, shared by the item and vector queries.
        An empty membership list matches nothing (``0``)."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("owner_type", flt.owner_type), ("owner_id", flt.owner_id)):
            if value is not None:
                clauses.append(f"{alias}.{column} = ?")
                args.append(value)
        for column, values in (
            ("pool", flt.pools), ("scope", flt.scopes), ("visibility", flt.visibility), ("type", flt.types)
        ):
            if values is not None:
                chosen = list(values)
                if not chosen:
                    return ["0"], []
                clauses.append(f"{alias}.{column} IN ({','.join('?' * len(chosen))})")
                args.extend(chosen)
        return clauses, args

    @staticmethod
    def _where(flt: MemoryFilter, now: float, alias: str = "m") -> tuple[str, list[Any]]:
        columns, column_args = Memory._column_filters(flt, alias)
        clauses = [f"({alias}.expires_at IS NULL OR {alias}.expires_at > ?)", *columns]
        args: list[Any] = [now, *column_args]
        if flt.reader is not None:
            allowed = list(flt.reader_visibility)
            marks = ",".join("?" * len(allowed)) or "NULL"
            clauses.append(
                f"(({alias}.owner_type = ? AND {alias}.owner_id = ?) OR {alias}.visibility IN ({marks}))"
            )
            args.extend([flt.reader[0], flt.reader[1], *allowed])
        for key, wanted in flt.metadata.items():
            if not _META_KEY_RE.match(key):
                raise InvalidInputError(f"metadata filter key {key!r} must match {_META_KEY_RE.pattern}")
            if not isinstance(wanted, str | int | float | bool):
                raise InvalidInputError(f"metadata filter {key!r} must be a string, number or boolean")
            clauses.append(f"json_extract({alias}.metadata, ?) = ?")
            bound: str | int | float = int(wanted) if isinstance(wanted, bool) else wanted
            args.extend([f'$."{key}"', bound])
        return " AND ".join(clauses), args

    @staticmethod
    def _vec_where(flt: MemoryFilter, now: float) -> tuple[str, list[Any]]:
        columns, column_args = Memory._column_filters(flt, "v")
        if columns == ["0"]:
            return "0", []
        return " AND ".join(["v.expires_at > ?", *columns]), [now, *column_args]

    async def search(
        self,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        flt: MemoryFilter | None = None,
        limit: int = 10,
        threshold: float | None = None,
    ) -> list[SearchHit]:
        """Keyword, vector or hybrid (RRF) search; ``threshold`` is a minimum cosine similarity.

        With text and no vector, the embedder (if any) turns the text into the query vector, so text
        queries are hybrid whenever an embedder is configured. The threshold drops vector hits below it;
        keyword hits carry no similarity and are kept.
        """
        flt = flt or MemoryFilter()
        limit = max(1, min(limit, 1000))
        if text is not None and not text.strip():
            text = None
        if text is None and vector is None:
            raise InvalidInputError("search needs text, a vector, or both")
        query_blob: bytes | None = None
        if vector is not None:
            query_blob = vector_blob(vector, self.dim)
        elif text is not None and self.embedder is not None:
            query_blob = vector_blob((await self.embedder.embed([text]))[0], self.dim)
        now = self._clock()
        # Fusion needs more of each ranking than it returns; a keyword-only search is that ranking itself.
        depth = min(4096, max(limit * 4, 40)) if query_blob is not None else limit

        def run(conn: sqlite3.Connection) -> list[SearchHit]:
            keyword: list[tuple[str, str]] = []
            vectors: list[tuple[str, str, float]] = []
            if text is not None:
                keyword = self._keyword(conn, text, flt, now, depth)
            if query_blob is not None:
                vectors = self._vector(conn, query_blob, flt, now, depth)
                if threshold is not None:
                    vectors = [v for v in vectors if v[2] >= threshold]
            scores: dict[str, float] = {}
            best_chunk: dict[str, str] = {}
            sim: dict[str, float] = {}
            krank: dict[str, int] = {}
            vrank: dict[str, int] = {}
            for rank, (mid, chunk) in enumerate(keyword, start=1):
                scores[mid] = scores.get(mid, 0.0) + 1.0 / (RRF_K + rank)
                krank[mid] = rank
                best_chunk.setdefault(mid, chunk)
            for rank, (mid, chunk, similarity) in enumerate(vectors, start=1):
                scores[mid] = scores.get(mid, 0.0) + 1.0 / (RRF_K + rank)
                vrank[mid] = rank
                sim[mid] = similarity
                best_chunk[mid] = chunk if mid not in krank else best_chunk[mid]
            ordered = sorted(scores, key=lambda m: (-scores[m], m))[:limit]
            if not ordered:
                return []
            marks = ",".join("?" * len(ordered))
            items = {
                str(r[0]): _item(r)
                for r in conn.execute(f"SELECT {_ITEM_COLUMNS} FROM memories m WHERE m.id IN ({marks})", ordered)  # noqa: S608 - only fixed column names and ? placeholders are interpolated
            }
            return [
                SearchHit(items[m], scores[m], sim.get(m), krank.get(m), vrank.get(m), best_chunk[m])
                for m in ordered
                if m in items
            ]

        return await self._db.read(run)

    def _keyword(
        self, conn: sqlite3.Connection, text: str, flt: MemoryFilter, now: float, depth: int
    ) -> list[tuple[str, str]]:
        """The ``depth`` best memories for the words of ``text`` (see daemon/store/keyword.py)."""
        where, args = self._where(flt, now)
        return [(mid, chunk) for mid, chunk, _ in keyword_top(conn, query_words(text), depth, where, args)]

    def _ivf_candidates(
        self, conn: sqlite3.Connection, query: bytes, depth: int, where: str, args: list[Any]
    ) -> list[Any]:
        """KNN inside the query's nearest partitions plus the unassigned one, filters applied inside.

        A selective filter can leave the nearest partitions without a single match (the usual IVF
        weakness); then the probe count grows fourfold until enough matches are found or every
        partition has been scanned, so a filter never hides results that exist.
        """
        lists = int(conn.execute("SELECT count(*) FROM ivf_centroids").fetchone()[0])
        probes = min(self._probes, max(lists, 1))
        want = max(1, depth // 4)
        while True:
            clusters = [-1] + [
                int(r[0]) for r in conn.execute(
                    "SELECT id FROM ivf_centroids WHERE embedding MATCH ? AND k = ?", (query, probes)
                )
            ]
            bounds: list[int] = []
            for cluster in clusters:
                bounds += [(cluster + 1) << IVF_SHIFT, ((cluster + 2) << IVF_SHIFT) - 1]
            # CROSS JOIN: the probed ranges drive, each read as one rowid range of ivf_vectors.
            rows = conn.execute(
                f"WITH p(lo, hi) AS (VALUES {','.join(['(?, ?)'] * len(clusters))})"  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                " SELECT c.memory_id, c.text, knn.d FROM ("
                " SELECT v.chunk_id, vec_distance_cosine(v.embedding, ?) AS d FROM p"
                f" CROSS JOIN ivf_vectors v ON v.id BETWEEN p.lo AND p.hi WHERE {where} ORDER BY d LIMIT ?"
                ") knn JOIN chunks c ON c.id = knn.chunk_id ORDER BY knn.d",
                [*bounds, query, *args, depth],
            ).fetchall()
            if len(rows) >= want or probes >= lists:
                return rows
            probes = min(lists, probes * 4)

    def _binary_candidates(
        self, conn: sqlite3.Connection, query: bytes, depth: int, where: str, args: list[Any]
    ) -> list[Any]:
        """Hamming-distance KNN on sign bits (filters inside), then exact cosine re-ranking of the candidates."""
        k = min(4096, depth * self._oversample)
        ids = [
            int(r[0]) for r in conn.execute(
                "SELECT v.chunk_id FROM chunk_bits v WHERE v.embedding MATCH vec_quantize_binary(?) AND k = ?"  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                f" AND {where}",
                [query, k, *args],
            )
        ]
        if not ids:
            return []
        return conn.execute(
            "SELECT c.memory_id, c.text, vec_distance_cosine(f.embedding, ?) AS d FROM chunk_f32 f"  # noqa: S608 - placeholders only
            f" JOIN chunks c ON c.id = f.chunk_id WHERE f.chunk_id IN ({','.join('?' * len(ids))})"
            " ORDER BY d LIMIT ?",
            [query, *ids, depth],
        ).fetchall()

    def _vector(
        self, conn: sqlite3.Connection, query: bytes, flt: MemoryFilter, now: float, depth: int
    ) -> list[tuple[str, str, float]]:
        if flt.metadata:
            # Metadata is not a vec0 column: an exact scan with every filter inside the WHERE clause.
            where, args = self._where(flt, now)
            rows = conn.execute(
                f"SELECT c.memory_id, c.text, vec_distance_cosine(v.embedding, ?) AS d FROM {self._float_table} v"  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                " JOIN chunks c ON c.id = v.chunk_id JOIN memories m ON m.id = c.memory_id"
                f" WHERE {where} ORDER BY d LIMIT ?",
                [query, *args, depth],
            ).fetchall()
        else:
            rows = []
            for branch in flt.access_branches():
                where, args = self._vec_where(branch, now)
                if where == "0":
                    continue
                if self.vector_index == "binary":
                    rows += self._binary_candidates(conn, query, depth, where, args)
                    continue
                if self.vector_index == "ivf":
                    rows += self._ivf_candidates(conn, query, depth, where, args)
                    continue
                rows += conn.execute(
                    "SELECT c.memory_id, c.text, knn.distance FROM ("  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                    f" SELECT v.chunk_id, v.distance FROM chunk_vec v WHERE v.embedding MATCH ? AND k = ? AND {where}"
                    ") knn JOIN chunks c ON c.id = knn.chunk_id ORDER BY knn.distance",
                    [query, depth, *args],
                ).fetchall()
            # Each branch is exact within its subset, so the union's best ``depth`` are among them.
            rows.sort(key=lambda r: r[2])
        seen: set[str] = set()
        out: list[tuple[str, str, float]] = []
        for mid, chunk, distance in rows[: depth * 4]:
            if mid not in seen:
                seen.add(mid)
                out.append((str(mid), str(chunk), 1.0 - float(distance)))
        return out
