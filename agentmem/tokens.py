"""How many tokens a text costs in a model's context: the port ``context.assemble`` counts
its budget with, and the counters it offers.

A counter is named in the request (``counter``), so that a caller can match its model's
tokenizer as closely as the service can, and the reply names the one it used. Every item's
``tokens`` is its counter's count of the item's ``text``, and the items returned never add
up to more than the budget by that count: exactly, not approximately. A real tokenizer
(tiktoken, a SentencePiece model) is a new entry in ``COUNTERS``; none is bundled, since
each is tied to one model family and some download their vocabulary at run time.
"""

from __future__ import annotations

import math
import re
from typing import Literal, Protocol

CounterName = Literal["chars4", "words"]

_PIECES = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class CharsOverFour:
    """``ceil(characters / 4)``: OpenAI's rule of thumb for English text (about four
    characters a token); characters are Unicode code points."""

    name = "chars4"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / 4)


class WordPieces:
    """One token per run of word characters (``\\w+``) and one per other non-space
    character: a word-level count that never reads a long word as several tokens, so it
    undercounts rare words and overcounts nothing else by much."""

    name = "words"

    def count(self, text: str) -> int:
        return len(_PIECES.findall(text))


COUNTERS: dict[str, TokenCounter] = {c.name: c for c in (CharsOverFour(), WordPieces())}


def counter(name: str) -> TokenCounter:
    return COUNTERS[name]
