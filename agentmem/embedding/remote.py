"""An OpenAI-compatible ``/v1/embeddings`` endpoint (a local server, or a hosted one).

Only used when the settings name one (``AGENTMEM_EMBEDDER=openai``). Blocking HTTP with the
standard library, in the caller's thread (the projection runs embedders off the event loop).
"""

from __future__ import annotations

import urllib.request

import msgspec
import numpy as np

from agentmem.embedding import Vectors, unit

TIMEOUT_S = 30.0
BATCH = 256  # texts per request


class _Item(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _Reply(msgspec.Struct):
    data: list[_Item]


_decode = msgspec.json.Decoder(_Reply).decode


class RemoteEmbedder:
    blocking = True

    def __init__(self, url: str, model: str, key: str | None = None, dim: int | None = None):
        base = url.rstrip("/")
        self.url = base if base.endswith("/embeddings") else f"{base}/v1/embeddings"
        self.model = model
        self.key = key
        self.model_id = f"openai-{model}"
        self._dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def _post(self, texts: list[str]) -> Vectors:
        body = msgspec.json.encode({"model": self.model, "input": texts})
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            reply = _decode(response.read())
        if len(reply.data) != len(texts):
            raise ValueError(f"{self.url} returned {len(reply.data)} vectors for {len(texts)}")
        rows = sorted(reply.data, key=lambda item: item.index)
        return unit(np.array([row.embedding for row in rows], dtype=np.float32))

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = [self._post(texts[s : s + BATCH]) for s in range(0, len(texts), BATCH)]
        vectors = np.concatenate(parts)
        self._dim = int(vectors.shape[1])
        return vectors
