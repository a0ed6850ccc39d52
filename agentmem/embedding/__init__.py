"""The embedder port: text in, unit vectors out, each vector named by the model that made it.

Embeddings are derived data (``agentmem.projections.vectors`` makes them from the log), so
what made a vector travels with it: ``model_id`` is stored beside every vector, and a change
of model is a rebuild under a new id, never a migration of events. ``configured()`` builds
the embedder the settings ask for (``AGENTMEM_EMBEDDER``); the model itself is loaded on the
first call, not at import.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from agentmem.config import StartupError

# One BLAS thread in this process. A search is one matrix-vector product, bound by memory
# bandwidth; a pool of BLAS threads gains little on it and spins against the event loop and
# the projection thread: 100,000 x 256 took 43 ms p50 with the default pool and 13 ms with
# one thread, on 2 busy cores (docs/architecture.md, "Semantic search"). Set at run time
# (numpy may be loaded before this module, so an environment variable would come too late).
threadpool_limits(limits=1, user_api="blas")

Vectors = npt.NDArray[np.float32]

DEFAULT = "wordllama"


class Embedder(Protocol):
    # What made the vectors: stored with each one, and the vector projection's variant.
    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    # False: one query's embedding is cheap enough to compute on the event loop (a thread
    # hop would cost more); True: it blocks (a network call), so callers use a thread.
    @property
    def blocking(self) -> bool: ...

    def embed(self, texts: list[str]) -> Vectors:
        """One row per text, float32, each of unit length (so a dot product is a cosine).
        CPU-bound or blocking: callers on the event loop run it in a thread."""


def content_hash(text: str) -> str:
    """The cache key of a text under one model: unchanged content is not embedded twice."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def unit(vectors: npt.NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length (a zero row stays zero)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    scaled: Vectors = (matrix / norms).astype(np.float32, copy=False)
    return scaled


def _env(name: str) -> str | None:
    value = os.environ.get(f"AGENTMEM_{name}")
    return value if value else None


@lru_cache(maxsize=1)
def configured() -> Embedder:
    """The embedder of this process, from the environment:

    - ``AGENTMEM_EMBEDDER=wordllama`` (default): the static model shipped in the
      ``wordllama`` wheel, loaded from its package folder with downloads disabled.
    - ``AGENTMEM_EMBEDDER=openai``: an OpenAI-compatible ``/v1/embeddings`` endpoint at
      ``AGENTMEM_EMBEDDING_URL`` with ``AGENTMEM_EMBEDDING_MODEL``, and
      ``AGENTMEM_EMBEDDING_KEY`` as its bearer token when set.
    """
    kind = (_env("EMBEDDER") or DEFAULT).lower()
    if kind == "wordllama":
        from agentmem.embedding.wordllama import WordLlamaEmbedder

        return WordLlamaEmbedder()
    if kind == "openai":
        from agentmem.embedding.remote import RemoteEmbedder

        url, model = _env("EMBEDDING_URL"), _env("EMBEDDING_MODEL")
        if url is None or model is None:
            raise StartupError(
                "AGENTMEM_EMBEDDER=openai needs AGENTMEM_EMBEDDING_URL and AGENTMEM_EMBEDDING_MODEL"
            )
        dim = _env("EMBEDDING_DIM")
        return RemoteEmbedder(url, model, _env("EMBEDDING_KEY"), int(dim) if dim else None)
    raise StartupError(f"AGENTMEM_EMBEDDER must be wordllama or openai, not {kind!r}")


__all__ = ["DEFAULT", "Embedder", "Vectors", "configured", "content_hash", "unit"]
