"""``context.assemble``: what to put before a model call, within a token budget.

The candidates come in six sections, always in this order: the agent's persona, the core
blocks (the agent's, then the user's, by label), the session's working memory (highest
priority first), the memories that match the query (best first, as ``memory.search`` ranks
them, live and unexpired only), the valid facts of the knowledge graph about the entities
the query names (``graph.facts``' order, entity by entity as the query names them), and
the conversation's tail. The budget is spent in that
order, so what an agent is and what it must always know come before what it recalls, and
recall before the older turns of the conversation.

``fit`` is the whole rule, and pure: an item of the first four sections is taken when its
``tokens`` fit in what is left, else left out (a later, smaller one may still fit); the
conversation's tail is taken from the newest message back while each fits, and the first
that does not ends it (that one and every older one are left out: a conversation with a
hole in it would mislead the model). The items returned never add up to more than the
budget, counted by the request's counter (``agentmem.tokens``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agentmem.commands import Id
from agentmem.domain.entities import normalise
from agentmem.protocol import query
from agentmem.queries import InOrg, Limit, SearchMode, SearchText, Unit
from agentmem.replies import AssembledContext, ContextItem, LeftOutItem
from agentmem.tokens import CounterName

SECTIONS = ("persona", "block", "working", "memory", "fact", "message")
MAX_NAME_WORDS = 4  # the longest run of the query's words looked up as an entity's name
MAX_TOKENS = 2_000_000  # beyond any model's context window today

Budget = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]


@query("context.assemble", need="reader", reply=AssembledContext)
class AssembleContext(InOrg, frozen=True, kw_only=True):
    """What to put before a model call for ``agent_id`` (and ``user_id``, ``session_id``),
    ``query`` being what the memories are searched with, within ``max_tokens``."""

    agent_id: Id
    query: SearchText
    max_tokens: Budget
    user_id: Id | None = None  # the user's blocks, and the memories of this user
    session_id: Id | None = None  # its working memory and its conversation's tail
    counter: CounterName = "chars4"
    # How memory.search finds the memories: hybrid by default, with its floor of relevance
    # (the mode's default floor, agentmem/ranking.py, unless min_score is given).
    mode: SearchMode = "hybrid"
    min_score: Unit | None = None
    memories: Limit = 20  # at most this many memories are considered
    messages: Limit = 50  # the conversation's last this many messages are considered
    working_items: Limit = 50
    facts: Limit = 20  # at most this many facts about the entities the query names


def named_in(text: str) -> list[str]:
    """Every run of 1 to ``MAX_NAME_WORDS`` words of ``text``, normalised as entity names
    are (``entities.normalise``), punctuation at a word's ends dropped, in the order they
    start: the names a query may say, looked up among the entities' names and aliases."""
    words = [w.strip(".,;:!?()[]{}\"'") for w in normalise(text).split()]
    words = [w for w in words if w]
    runs: dict[str, None] = {}
    for start in range(len(words)):
        for size in range(1, MAX_NAME_WORDS + 1):
            if start + size <= len(words):
                runs[" ".join(words[start : start + size])] = None
    return list(runs)


def fit(
    sections: list[list[ContextItem]], max_tokens: int
) -> tuple[list[ContextItem], list[LeftOutItem]]:
    """The items kept, in order (the tail oldest first), and those left out for lack of
    room; ``sections`` in ``SECTIONS`` order, the conversation's tail newest first."""
    left = max_tokens
    kept: list[ContextItem] = []
    left_out: list[LeftOutItem] = []

    def leave(item: ContextItem) -> None:
        left_out.append(
            LeftOutItem(section=item.section, id=item.id, type=item.type, tokens=item.tokens)
        )

    for items in sections:
        taken: list[ContextItem] = []
        ended = False  # the tail has ended: every older message stays out
        for item in items:
            tail = item.section == "message"
            if item.tokens <= left and not ended:
                taken.append(item)
                left -= item.tokens
            else:
                ended = tail
                leave(item)
        kept.extend(taken[::-1] if taken and taken[0].section == "message" else taken)
    return kept, left_out


__all__ = ["AssembleContext", "fit", "named_in"]
