"""The default embedder: WordLlama's static 256-d model, whose weights ship in its wheel.

Its ``load()`` would fetch a tokenizer from a model hub when the file is missing; here it is
pointed at its own package folder with downloads disabled (and the hub libraries told to
stay offline), so a machine without a network loads it, and a missing file is an error,
never a download. docs/architecture.md ("Semantic search") has the measurements behind the
choice.
"""

from __future__ import annotations

import os
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

from agentmem.embedding import Vectors, unit

CONFIG = "l2_supercat"
DIM = 256


class WordLlamaEmbedder:
    dim = DIM
    blocking = False  # about 0.1 ms for one query

    def __init__(self) -> None:
        self.model_id = f"wordllama-{CONFIG}-{DIM}@{version('wordllama')}"
        self._model: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import wordllama
                from wordllama import WordLlama

                folder = Path(wordllama.__file__).parent
                self._model = WordLlama.load(
                    config=CONFIG, dim=DIM, cache_dir=folder, disable_download=True
                )
            return self._model

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return unit(_empty())
        return unit(self._loaded().embed(texts, norm=True, batch_size=256))


def _empty() -> Any:
    import numpy as np

    return np.zeros((0, DIM), dtype=np.float32)
