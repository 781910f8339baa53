"""The memory list and keyword-search paths: the v2 migration, their query plans, exact pruned ranking."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from daemon.store import Ed25519Signer, Store, keyword
from daemon.store.db import split_sql
from daemon.store.keyword import fts_query, fts_row_count, keyword_top, query_words
from daemon.store.memory import Memory, MemoryFilter

HUB_FILTER = MemoryFilter(pools=["p1"], scopes=["USER", "PROJECT", "TEAM", "GLOBAL"], visibility=["pool", "public"])


def _plan(conn: sqlite3.Connection, sql: str, args: list[object]) -> list[str]:
    return [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]


async def test_v1_database_migrates_and_keeps_its_items(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    script = resources.files("daemon.store").joinpath("schema_v1.sql").read_text(encoding="utf-8")
    for statement in split_sql(script):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO memories(id, owner_type, owner_id, pool, scope, type, content, metadata, visibility, created,"
        " updated) VALUES ('old', 'agent', 'a', 'p1', 'TEAM', 'long_term', 'spores', '{}', 'pool', 1, 1)"
    )
    conn.execute("INSERT INTO chunks(memory_id, idx, text) VALUES ('old', 0, 'spores')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        version, indexes = await store.db.read(lambda c: (
            c.execute("PRAGMA user_version").fetchone()[0],
            {str(r[0]) for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")},
        ))
        assert version == 2
        assert {"memories_pool_created", "memories_owner_pool_created", "memories_owner_created"} <= indexes
        assert "memories_pool" not in indexes
        assert [i.id for i in await store.memory.list_items(HUB_FILTER)] == ["old"]
        assert [h.item.id for h in await store.memory.search(text="spores", flt=HUB_FILTER)] == ["old"]
        assert await store.integrity_check() == ["ok"]


async def test_list_queries_read_an_index_range_without_sorting(store: Store) -> None:
    private = MemoryFilter(owner_id="a", pools=["private"], scopes=["AGENT_PRIVATE", "USER"])
    owner = MemoryFilter(owner_type="agent", owner_id="a")
    for flt, index in ((HUB_FILTER, "memories_pool_created"), (private, "memories_owner_pool_created"),
                       (owner, "memories_owner_created"), (MemoryFilter(), "memories_created")):
        queries = Memory.list_queries(flt, 0.0, 20)
        assert len(queries) == 1
        plan = await store.db.read(lambda c, q=queries[0]: _plan(c, *q))
        assert any(index in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan
    two = Memory.list_queries(MemoryFilter(pools=["p1", "p2", "p1"]), 0.0, 20)
    assert len(two) == 2


async def test_list_across_pools_merges_in_created_order(tmp_path: Path, signer: Ed25519Signer) -> None:
    now = [1000.0]
    async with Store(tmp_path / "l.db", signer=signer, embedding_dim=4, ttl_sweep_s=0, clock=lambda: now[0]) as store:
        made = []
        for i in range(30):
            now[0] += 1 if i % 4 else 0  # some equal times: id breaks the tie
            made.append(await store.memory.create(owner_type="agent", owner_id="a", content=f"note {i}",
                                                  pool=f"p{i % 3}", memory_id=f"id{29 - i:02d}"))
        want = sorted((m for m in made if m.pool in ("p0", "p2")), key=lambda m: (m.created, m.id))
        got = await store.memory.list_items(MemoryFilter(pools=["p2", "p0"]), limit=7, offset=5)
        assert [m.id for m in got] == [m.id for m in want[5:12]]
        assert len(await store.memory.list_items(MemoryFilter(pools=["p2", "p0"]), limit=100)) == len(want)


def _reference(conn: sqlite3.Connection, text: str, where: str, args: list[object], k: int) -> list[tuple[str, float]]:
    rows = conn.execute(
        "SELECT c.memory_id, bm25(chunks_fts) AS r FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
        f" JOIN memories m ON m.id = c.memory_id WHERE chunks_fts MATCH ? AND {where} ORDER BY r",
        [fts_query(text), *args],
    ).fetchall()
    best: dict[str, float] = {}
    for mid, rank in rows:
        best.setdefault(str(mid), -float(rank))
    return list(best.items())[:k]


async def test_pruned_keyword_search_is_the_exact_top_k(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the plain OR query over every matching row, for queries mixing common and rare words."""
    calls: list[int] = []
    original = keyword._top

    def counting(conn: sqlite3.Connection, queries: Sequence[str], *args: Any) -> Any:
        calls.append(len(queries))
        return original(conn, queries, *args)

    monkeypatch.setattr(keyword, "_top", counting)
    rnd = random.Random(5)
    vocab = [f"w{i}" for i in range(300)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf: a few words are in most items
    async with Store(tmp_path / "k.db", signer=signer, embedding_dim=4, ttl_sweep_s=0, chunk_chars=100,
                     chunk_overlap=10) as store:
        for start in range(0, 600, 200):
            for i in range(start, start + 200):
                words = rnd.choices(vocab, weights, k=rnd.choice((6, 12, 40)))  # 40 words: several chunks
                await store.memory.create(
                    owner_type="agent", owner_id=f"a{i % 3}", content=" ".join(words), pool=f"p{i % 4}",
                    scope="TEAM", visibility=("pool", "public", "private")[i % 3],
                )
        queries = [" ".join(rnd.choices(vocab, weights, k=rnd.randint(1, 4))) for _ in range(40)]
        queries += ["w0 w1 w2 w250", "W0 w0 w299", "w0 nosuchword", "w1 héllo w5", "w0 snake_case w7"]
        filters = [MemoryFilter(), HUB_FILTER, MemoryFilter(owner_id="a1", pools=["p1", "p3"])]

        def check(conn: sqlite3.Connection) -> int:
            assert fts_row_count(conn) == conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            compared = pruned = 0
            for text in queries:
                for flt in filters:
                    where, args = Memory._where(flt, 0.0)
                    for k in (1, 10):
                        calls.clear()
                        got = keyword_top(conn, query_words(text), k, where, args, split_min_rows=0, split_factor=0)
                        pruned += calls[-1:] == [2]  # the answer came from a split, not the plain query
                        want = _reference(conn, text, where, args, k)
                        assert [round(s, 9) for _, _, s in got] == [round(s, 9) for _, s in want], (text, flt, k)
                        scores = dict(_reference(conn, text, where, args, 10_000))
                        assert all(abs(scores[mid] - s) < 1e-9 for mid, _, s in got), (text, flt, k)
                        compared += 1
            return compared, pruned

        compared, pruned = await store.db.read(check)
        assert compared == len(queries) * 6
        assert pruned > compared // 4  # the bound held often enough for the split path to be tested


async def test_first_ivf_layout_moves_into_range_partitions(tmp_path: Path, signer: Ed25519Signer) -> None:
    """A database whose ivf vectors sit in the first layout (vec0 chunk_ivf + chunk_f32) is moved at open."""
    import struct

    import sqlite_vec

    path = tmp_path / "old-ivf.db"
    async with Store(path, signer=signer, embedding_dim=4, vector_index="ivf", ttl_sweep_s=0) as store:
        near = await store.memory.create(owner_type="agent", owner_id="a", content="near", vector=[1, 0, 0, 0])
        far = await store.memory.create(owner_type="agent", owner_id="a", content="far", vector=[0, 1, 0, 0])
    conn = sqlite3.connect(path)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.execute(
        "CREATE VIRTUAL TABLE chunk_ivf USING vec0(chunk_id INTEGER PRIMARY KEY, cluster INTEGER PARTITION KEY,"
        " embedding float[4] distance_metric=cosine, owner_type TEXT, owner_id TEXT, pool TEXT, scope TEXT, type TEXT,"
        " visibility TEXT, expires_at FLOAT, chunk_size=128)"
    )
    conn.execute("CREATE TABLE chunk_f32(chunk_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL,"
                 " cluster INTEGER NOT NULL DEFAULT -1)")
    for chunk_id, vec in conn.execute("SELECT chunk_id, embedding FROM ivf_vectors").fetchall():
        conn.execute("INSERT INTO chunk_f32(chunk_id, embedding, cluster) VALUES (?, ?, -1)", (chunk_id, vec))
        conn.execute("INSERT INTO chunk_ivf(chunk_id, cluster, embedding, owner_type, owner_id, pool, scope, type,"
                     " visibility, expires_at) VALUES (?, -1, ?, 'agent', 'a', 'default', 'AGENT_PRIVATE',"
                     " 'long_term', 'private', 1e300)", (chunk_id, vec))
    conn.execute("DELETE FROM ivf_vectors")
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, vector_index="ivf", ttl_sweep_s=0) as store:
        tables = await store.db.read(lambda c: {str(r[0]) for r in c.execute("SELECT name FROM sqlite_master")})
        assert "chunk_ivf" not in tables and "chunk_f32" not in tables
        hits = await store.memory.search(vector=[0.9, 0.1, 0, 0], limit=2)
        assert [h.item.id for h in hits] == [near.id, far.id]
        stored = await store.db.read(lambda c: c.execute("SELECT embedding FROM ivf_vectors WHERE id >> 40 = 0"
                                                         " ORDER BY chunk_id").fetchall())
        assert [struct.unpack("<4f", bytes(r[0])) for r in stored] == [(1, 0, 0, 0), (0, 1, 0, 0)]
        assert await store.integrity_check() == ["ok"]
