"""Store benchmarks, each printed next to a baseline measured in the same run on the same machine.

    .venv/bin/python -m bench.store [--blocks 20000] [--rounds 3] [--memories 100000] [--vectors 10000] [--dim 384]
                                    [--only append latency verify memory search]

Figures: durable append of 1 KiB blocks (vs plain SQLite inserts of the same bytes at the same
durability), p99 append latency at 1,000 blocks/s, verify throughput (vs hashlib SHA-256 over the same
payloads), memory list and keyword search p95 with the hub's pool filter (vs an indexed plain table and
FTS5 alone), vector top-10 p95 and recall@10 (vs an exact scan), hybrid search p95.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import os
import random
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from daemon.store import Ed25519Signer, Store
from daemon.store.blocklog import BlockInput
from daemon.store.db import open_connection
from daemon.store.keyword import fts_query
from daemon.store.memory import MemoryFilter, MemoryItem
from daemon.store.verify_worker import WALK_COLUMNS

PAYLOAD = 1024


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _line(name: str, value: str, baseline: str, note: str = "") -> None:
    print(f"{name:<44} {value:>18}   baseline {baseline:>18}   {note}")


def _store(path: Path, **kw: object) -> Store:
    return Store(path, signer=Ed25519Signer.generate(), integrity_check="quick", ttl_sweep_s=0, **kw)  # type: ignore[arg-type]


# -- baselines -------------------------------------------------------------------------------------


def plain_sqlite_inserts(path: Path, n: int, per_commit: int, *, autocheckpoint: bool = True) -> float:
    """Rows/s inserting 1 KiB blobs into a bare table, WAL + synchronous=FULL, ``per_commit`` per COMMIT.

    ``autocheckpoint=False`` leaves the WAL uncopied, as the store's writer does (its checkpoints run
    on another thread): the baseline for what the commit path alone costs."""
    conn = open_connection(path)
    if not autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS plain(id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    payloads = [os.urandom(PAYLOAD) for _ in range(256)]
    start = time.perf_counter()
    done = 0
    while done < n:
        k = min(per_commit, n - done)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO plain(body) VALUES (?)", [(payloads[(done + i) % 256],) for i in range(k)])
        conn.execute("COMMIT")
        done += k
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def plain_sqlite_latency(path: Path, n: int, rate: float) -> list[float]:
    """Per-insert latency (one durable COMMIT each) at a fixed rate, in milliseconds."""
    conn = open_connection(path)
    conn.execute("CREATE TABLE IF NOT EXISTS plain_lat(id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    payload = os.urandom(PAYLOAD)
    out: list[float] = []
    next_at = time.perf_counter()
    for _ in range(n):
        next_at += 1 / rate
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO plain_lat(body) VALUES (?)", (payload,))
        conn.execute("COMMIT")
        out.append((time.perf_counter() - t0) * 1000)
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    conn.close()
    return out


# -- block log -------------------------------------------------------------------------------------


async def _append_round(path: Path, n: int, payloads: list[bytes]) -> tuple[float, float, float, bool]:
    """One fresh store: single appends from 256 tasks, then 64-block appends from 16; blocks/s each."""
    async with _store(path) as store:
        counter = iter(range(n))

        async def producer() -> None:
            for i in counter:
                await store.append_block("BINA", payloads[i % 256])

        start = time.perf_counter()
        await asyncio.gather(*[producer() for _ in range(256)])
        single = n / (time.perf_counter() - start)
        group = n / max(1, store.db.commits)

        batches = iter(range(0, n, 64))

        async def batch_producer() -> None:
            for b in batches:
                await store.append_blocks([BlockInput("BINA", payloads[(b + i) % 256]) for i in range(64)])

        start = time.perf_counter()
        await asyncio.gather(*[batch_producer() for _ in range(16)])
        batched = n / (time.perf_counter() - start)
        ok = (await store.verify_blocks()).ok
    return single, batched, group, ok


async def bench_append(tmp: Path, n: int, rounds: int) -> None:
    """Store and plain SQLite take turns, ``rounds`` times, each on fresh files: the machine's speed
    drifts by tens of percent within seconds here, so each round's ratio compares neighbours, and
    the median round is printed with the spread."""
    payloads = [os.urandom(PAYLOAD) for _ in range(256)]
    figures: list[tuple[float, float, float, float, float]] = []
    ok = True
    group = 1.0
    for r in range(rounds):
        single, batched, group, round_ok = await _append_round(tmp / f"append{r}.db", n, payloads)
        ok = ok and round_ok
        same_groups = plain_sqlite_inserts(tmp / f"plain1-{r}.db", n, max(1, int(group)))
        no_ckpt = plain_sqlite_inserts(tmp / f"plain3-{r}.db", n, max(1, int(group)), autocheckpoint=False)
        figures.append((single, batched, same_groups, no_ckpt, single / same_groups))
        _remove(tmp, f"*{r}.db*")
    one_each = plain_sqlite_inserts(tmp / "plain2.db", min(n, 2000), 1)
    single, batched, same_groups, no_ckpt, _ = sorted(figures, key=lambda f: f[4])[len(figures) // 2]
    spread_single = ", ".join(f"{f[0] / f[2]:.2f}" for f in figures)
    spread_batched = ", ".join(f"{f[1] / f[2]:.2f}" for f in figures)
    _line("append 1 KiB, one block per await", f"{single:,.0f} blocks/s", f"{same_groups:,.0f} rows/s",
          f"ratio {single / same_groups:.2f} vs plain rows in the same group size ({group:.0f}/commit);"
          f" rounds {spread_single}")
    _line("append 1 KiB, 64 blocks per await", f"{batched:,.0f} blocks/s", f"{same_groups:,.0f} rows/s",
          f"ratio {batched / same_groups:.2f}; rounds {spread_batched}")
    _line("  plain rows, no checkpoint in COMMIT", "", f"{no_ckpt:,.0f} rows/s",
          f"ratios {single / no_ckpt:.2f} / {batched / no_ckpt:.2f} vs plain with SQLite's checkpoints taken "
          "out of its commits too")
    _line("  plain SQLite, one COMMIT per row", "", f"{one_each:,.0f} rows/s",
          f"store/plain {single / one_each:.1f}x (same per-write durability); chains ok={ok}")


async def bench_latency(tmp: Path, seconds: float, rate: float = 1000.0) -> None:
    payload = os.urandom(PAYLOAD)
    lat: list[float] = []
    async with _store(tmp / "latency.db") as store:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        async def one() -> None:
            t0 = time.perf_counter()
            await store.append_block("BINA", payload)
            lat.append((time.perf_counter() - t0) * 1000)

        start = loop.time()
        count = int(seconds * rate)
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    base = plain_sqlite_latency(tmp / "plain_lat.db", min(count, 1000), rate)
    _line("append p99 latency at 1,000 blocks/s", f"{_pct(lat, 99):.2f} ms", f"{_pct(base, 99):.2f} ms",
          f"p50 {_pct(lat, 50):.2f} ms; baseline = one plain durable insert per COMMIT")


async def bench_verify(tmp: Path, n: int, rounds: int) -> None:
    """Hashing, one-thread verification and worker verification take turns ``rounds`` times; the
    median of each round's ratio is printed with the spread (see ``bench_append`` for why)."""
    pool = [os.urandom(PAYLOAD) for _ in range(1024)]
    single_r: list[tuple[float, float]] = []
    parallel_r: list[tuple[float, float]] = []
    ok = True
    async with _store(tmp / "verify.db") as store:
        for start in range(0, n, 2000):
            count = min(2000, n - start)
            await store.append_blocks([BlockInput("BINA", pool[(start + i) % 1024]) for i in range(count)])
        for _ in range(rounds):
            hash_s = _hash_time(pool, n)
            t0 = time.perf_counter()
            single = await store.blocks.verify(workers=1)
            single_r.append((hash_s, time.perf_counter() - t0))
            hash_s = _hash_time(pool, n)
            t0 = time.perf_counter()
            parallel = await store.blocks.verify(workers=max(2, os.cpu_count() or 1), parallel_from=1)
            parallel_r.append((hash_s, time.perf_counter() - t0))
            ok = ok and single.ok and parallel.ok
    # What one thread spends before hashing anything: the same rows fetched into Python and dropped.
    conn = sqlite3.connect(f"file:{tmp / 'verify.db'}?mode=ro", uri=True)
    t0 = time.perf_counter()
    for _ in conn.execute(f"SELECT {WALK_COLUMNS} FROM blocks ORDER BY seq"):
        pass
    fetch_s = time.perf_counter() - t0
    conn.close()
    fetch_hash_s = _hash_time(pool, n)
    mb = n * PAYLOAD / 1e6
    for label, runs in ((f"verify chain, {n:,} x 1 KiB, one thread", single_r),
                        (f"verify chain, {n:,} x 1 KiB, {max(2, os.cpu_count() or 1)} workers", parallel_r)):
        hash_s, took = sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2]
        _line(label, f"{mb / took:,.0f} MB/s", f"{mb / hash_s:,.0f} MB/s",
              f"ratio {hash_s / took:.2f} vs hashlib.sha256 per payload; rounds "
              + ", ".join(f"{h / t:.2f}" for h, t in runs) + f"; ok={ok}")
    _line("  rows fetched alone, one thread", f"{mb / fetch_s:,.0f} MB/s", f"{mb / fetch_hash_s:,.0f} MB/s",
          f"ceiling for one thread: fetch + hash = ratio {fetch_hash_s / (fetch_s + fetch_hash_s):.2f}")


def _remove(directory: Path, pattern: str) -> None:
    for path in directory.glob(pattern):
        path.unlink()


def _hash_time(pool: list[bytes], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        hashlib.sha256(pool[i % 1024]).digest()
    return time.perf_counter() - t0


# -- memory search ---------------------------------------------------------------------------------


def _clustered_vectors(n: int, dim: int, seed: int = 7) -> list[bytes]:
    """Unit vectors around 256 random centres: closer to real embeddings than uniform noise."""
    rnd = random.Random(seed)
    centres = [[rnd.gauss(0, 1) for _ in range(dim)] for _ in range(256)]
    out = []
    for i in range(n):
        c = centres[i % 256]
        v = [x + rnd.gauss(0, 0.6) for x in c]
        norm = sum(x * x for x in v) ** 0.5
        out.append(struct.pack(f"<{dim}f", *[x / norm for x in v]))
    return out


WORDS = [
    "spore", "mycelium", "humidity", "substrate", "fruiting", "oyster", "shiitake", "temperature", "airflow",
    "colony", "contamination", "agar", "grain", "casing", "pinning", "harvest", "flush", "lion", "mane", "reishi",
]
# A Zipf-distributed vocabulary (word of rank r drawn with weight 1/r), as in natural text: a few words
# are everywhere, most are rare, so keyword queries match a realistic share of the corpus.
VOCABULARY = WORDS + [f"term{i}" for i in range(8000)]
_CUM_WEIGHTS = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(VOCABULARY))))


def _words(rnd: random.Random, k: int) -> list[str]:
    return rnd.choices(VOCABULARY, cum_weights=_CUM_WEIGHTS, k=k)


async def _load_memories(store: Store, vectors: list[bytes], offset: int = 0) -> None:
    """Bulk load through the store's own chunk/index insert path, 5,000 items per transaction."""
    rnd = random.Random(3 + offset)
    now = time.time()

    def load(conn: sqlite3.Connection, start: int, part: list[bytes]) -> None:
        for position, vec in enumerate(part):
            i = start + position
            text = " ".join(_words(rnd, 24)) + f" item{i}"
            item = MemoryItem(f"m{i}", "agent", f"a{i % 10}", f"p{i % 4}", "AGENT_PRIVATE", "long_term", text, {},
                              "private", None, None, now, now)
            conn.execute(
                "INSERT INTO memories(id, owner_type, owner_id, pool, scope, type, content, metadata, visibility,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?)",
                (item.id, item.owner_type, item.owner_id, item.pool, item.scope, item.type, text, item.visibility,
                 now, now),
            )
            store.memory._insert_chunks(conn, item, [text], [vec])

    for start in range(0, len(vectors), 5000):
        part = vectors[start : start + 5000]
        await store.db.write(functools.partial(_load_part, load, start=offset + start, part=part))


def _load_part(load: Callable[[sqlite3.Connection, int, list[bytes]], None], conn: sqlite3.Connection, *,
               start: int, part: list[bytes]) -> None:
    load(conn, start, part)


def _exact_top10(table: str, probe: bytes, conn: sqlite3.Connection) -> list[str]:
    return [
        str(r[0]) for r in conn.execute(
            f"SELECT c.memory_id FROM {table} v JOIN chunks c ON c.id = v.chunk_id"
            " ORDER BY vec_distance_cosine(v.embedding, ?) LIMIT 10", (probe,)
        )
    ]


async def bench_search(
    tmp: Path, n: int, dim: int, *, index: str, vectors: list[bytes], truth: dict[int, tuple[list[str], float]],
    probes_ivf: int = 8,
) -> None:
    """``truth`` caches the exact top-10 (and the time the exact scan took) per probe across indexes."""
    corpus, probes = vectors[:n], vectors[n:]
    settings = {"embedding_dim": dim, "vector_index": index, "ivf_probes": probes_ivf}
    async with _store(tmp / f"search-{index}.db", **settings) as store:
        t0 = time.perf_counter()
        build = ""
        if index == "ivf":
            # As in service: the index trains once the store holds ivf_train_at vectors (20,000), and
            # every later vector is placed in its partition as it is written.
            first = min(len(corpus), 20_000)
            await _load_memories(store, corpus[:first])
            t1 = time.perf_counter()
            lists = await store.memory.build_vector_index(lists=max(1, round(len(corpus) ** 0.5)))
            build = f"; IVF build {time.perf_counter() - t1:.0f} s, {lists} lists, {store.memory._probes} probes"
            await _load_memories(store, corpus[first:], offset=first)
        else:
            await _load_memories(store, corpus)
        load_s = time.perf_counter() - t0
        for probe in probes[:5]:  # warm the page cache, as a running node's would be
            await store.memory.search(vector=list(struct.unpack(f"<{dim}f", probe)), limit=10)
        lat: list[float] = []
        exact_lat: list[float] = []
        recall: list[float] = []
        for number, probe in enumerate(probes):
            q = list(struct.unpack(f"<{dim}f", probe))
            t0 = time.perf_counter()
            hits = await store.memory.search(vector=q, limit=10)
            lat.append((time.perf_counter() - t0) * 1000)
            if number not in truth:
                t0 = time.perf_counter()
                exact = await store.db.read(functools.partial(_exact_top10, store.memory._float_table, probe))
                truth[number] = (exact, (time.perf_counter() - t0) * 1000)
            exact, exact_ms = truth[number]
            exact_lat.append(exact_ms)
            recall.append(len({h.item.id for h in hits} & set(exact)) / 10)
        filtered: list[float] = []
        for probe in probes[: max(5, len(probes) // 2)]:
            q = list(struct.unpack(f"<{dim}f", probe))
            t0 = time.perf_counter()
            await store.memory.search(vector=q, limit=10, flt=MemoryFilter(owner_id="a3", pools=["p3", "p1"]))
            filtered.append((time.perf_counter() - t0) * 1000)
        hybrid: list[float] = []
        keyword: list[float] = []
        rnd = random.Random(11)
        for probe in probes:
            q = list(struct.unpack(f"<{dim}f", probe))
            text = " ".join(rnd.sample(VOCABULARY, 2))  # query words are content words, not the commonest
            t0 = time.perf_counter()
            await store.memory.search(text=text, vector=q, limit=10)
            hybrid.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await store.memory.search(text=text, limit=10)
            keyword.append((time.perf_counter() - t0) * 1000)
    _line(f"vector top-10 p95 at {n:,} x {dim} [{index}]", f"{_pct(lat, 95):.1f} ms", f"{_pct(exact_lat, 95):.1f} ms",
          f"recall@10 {statistics.mean(recall):.3f}; baseline = exact SQL scan; load {load_s:.0f} s{build}")
    _line(f"  filtered (owner + pools) p95 at {n:,} [{index}]", f"{_pct(filtered, 95):.1f} ms", "", "")
    _line(f"hybrid (keyword + vector, RRF) p95 at {n:,} [{index}]", f"{_pct(hybrid, 95):.1f} ms",
          f"{_pct(keyword, 95):.1f} ms", "baseline = keyword-only search")


# -- memory list and keyword search, as the agent hub's pool query uses them -----------------------


HUB_SCOPES = ["USER", "PROJECT", "TEAM", "GLOBAL"]
LIMIT = 20  # the hub asks the store for twice the 10 items a pool query returns


async def bench_memory(tmp: Path, n: int, queries: int) -> None:
    """``list_items`` and keyword ``search`` p95 at ``n`` items with the hub's pool/scope/visibility filter.

    The corpus is the hub bench's: 12 words per item from a 5,000-word vocabulary with a Zipf-like skew
    (weight 1/rank^0.8), so common query words match a third of the items. 90 % of the items sit in one
    shared pool (the hub's worst case: the filter removes almost nothing), the rest in ten agents' private
    pools. Baselines, same rows, same run: an indexed plain table read with ``ORDER BY created, id LIMIT``,
    FTS5's own ``bm25`` top k with no filter at all, and the v1 keyword query (filters joined onto every
    FTS match, then sorted).
    """
    rnd = random.Random(6)
    vocab = [f"w{i}" for i in range(5000)]
    cum = list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(len(vocab))))
    now = time.time()
    async with _store(tmp / "memory.db", embedding_dim=8) as store:
        def load(conn: sqlite3.Connection, start: int, count: int) -> None:
            for i in range(start, start + count):
                text = " ".join(rnd.choices(vocab, cum_weights=cum, k=12))
                shared = i % 10 != 0
                item = MemoryItem(f"m{i:07d}", "agent", f"a{i % 10}", "shared" if shared else "private",
                                  "TEAM" if shared else "AGENT_PRIVATE", "long_term", text, {},
                                  "pool" if shared else "private", None, None, now + i * 1e-3, now)
                conn.execute(
                    "INSERT INTO memories(id, owner_type, owner_id, pool, scope, type, content, metadata,"
                    " visibility, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?)",
                    (item.id, item.owner_type, item.owner_id, item.pool, item.scope, item.type, text,
                     item.visibility, item.created, now),
                )
                store.memory._insert_chunks(conn, item, [text], [None])

        t0 = time.perf_counter()
        for start in range(0, n, 5000):
            await store.db.write(functools.partial(load, start=start, count=min(5000, n - start)))

        def baseline_table(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE plain_mem AS SELECT * FROM memories")
            conn.execute("CREATE INDEX plain_mem_created ON plain_mem(created, id)")

        await store.db.write(baseline_table)
        load_s = time.perf_counter() - t0
        shared = MemoryFilter(pools=["shared"], scopes=HUB_SCOPES, visibility=["pool", "public"])
        private = MemoryFilter(owner_id="a3", pools=["private"], scopes=["AGENT_PRIVATE", *HUB_SCOPES])

        async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
            t = time.perf_counter()
            await fn()
            return (time.perf_counter() - t) * 1000

        def plain_list(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("SELECT * FROM plain_mem ORDER BY created, id LIMIT ?", (LIMIT,)).fetchall()

        lists: list[float] = []
        privates: list[float] = []
        plain: list[float] = []
        for _ in range(queries):
            lists.append(await timed(functools.partial(store.memory.list_items, shared, limit=LIMIT)))
            privates.append(await timed(functools.partial(store.memory.list_items, private, limit=LIMIT)))
            plain.append(await timed(lambda: store.db.read(plain_list)))
        where, args = store.memory._where(shared, time.time())

        def fts_only(query: str, conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT rowid, bm25(chunks_fts) AS r FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY r LIMIT ?",
                (query, LIMIT)).fetchall()

        def v1_query(query: str, conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT c.memory_id, c.text, bm25(chunks_fts) AS r FROM chunks_fts"
                " JOIN chunks c ON c.id = chunks_fts.rowid JOIN memories m ON m.id = c.memory_id"
                f" WHERE chunks_fts MATCH ? AND {where} ORDER BY r LIMIT {max(LIMIT * 4, 40)}",
                [query, *args]).fetchall()

        search: list[float] = []
        engine: list[float] = []
        before: list[float] = []
        qrnd = random.Random(11)
        for _ in range(queries):
            text = " ".join(qrnd.choices(vocab, cum_weights=cum, k=2))  # the hub bench's query: text(2)
            query = fts_query(text)
            search.append(await timed(functools.partial(store.memory.search, text=text, flt=shared, limit=LIMIT)))
            engine.append(await timed(functools.partial(store.db.read, functools.partial(fts_only, query))))
            before.append(await timed(functools.partial(store.db.read, functools.partial(v1_query, query))))
    _line(f"memory list p95 at {n:,} (shared pool filter)", f"{_pct(lists, 95):.2f} ms", f"{_pct(plain, 95):.2f} ms",
          f"p50 {_pct(lists, 50):.2f} ms; baseline = indexed plain table, ORDER BY created LIMIT {LIMIT};"
          f" load {load_s:.0f} s")
    _line(f"memory list p95 at {n:,} (agent's private pool)", f"{_pct(privates, 95):.2f} ms",
          f"{_pct(plain, 95):.2f} ms", f"p50 {_pct(privates, 50):.2f} ms")
    _line(f"keyword search p95 at {n:,} (shared pool filter)", f"{_pct(search, 95):.2f} ms",
          f"{_pct(engine, 95):.2f} ms",
          f"p50 {_pct(search, 50):.2f} ms; baseline = FTS5 bm25 top {LIMIT}, no filter;"
          f" v1 query p95 {_pct(before, 95):.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--verify-blocks", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="turns of store and baseline for append and verify")
    parser.add_argument("--vectors", type=int, default=10_000, help="e.g. 100000 or 1000000 for the targets")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--vector-index", nargs="+", choices=["exact", "binary", "ivf"], default=["exact", "ivf"])
    parser.add_argument("--ivf-probes", type=int, default=8)
    parser.add_argument("--memories", type=int, default=100_000, help="items for the list/keyword-search figures")
    parser.add_argument("--only", nargs="*", choices=["append", "latency", "verify", "memory", "search"])
    parser.add_argument("--dir", default=None, help="where to put the temporary databases")
    args = parser.parse_args()
    only = set(args.only or ["append", "latency", "verify", "memory", "search"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# bench.store  python {sys.version.split()[0]}  sqlite {sqlite3.sqlite_version}  cpus {os.cpu_count()}"
          f"  load average {load} (other work on the machine skews every figure; ratios are same-run)")
    try:
        if "append" in only:
            await bench_append(tmp, args.blocks, args.rounds)
        if "latency" in only:
            await bench_latency(tmp, args.latency_seconds)
        if "verify" in only:
            await bench_verify(tmp, args.verify_blocks, args.rounds)
        if "memory" in only:
            await bench_memory(tmp, args.memories, max(args.queries, 200))
        if "search" in only:
            vectors = _clustered_vectors(args.vectors + args.queries, args.dim)
            truth: dict[int, tuple[list[str], float]] = {}
            for index in args.vector_index:
                await bench_search(tmp, args.vectors, args.dim, index=index, vectors=vectors, truth=truth,
                                   probes_ivf=args.ivf_probes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
