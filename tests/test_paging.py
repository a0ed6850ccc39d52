"""``fitting``, the page's size check, against its definition: the first ``n`` items whose
JSON sizes sum to at most the limit, at least one (pure logic, no service)."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from agentmem import envelope
from agentmem.consumers.queries import encoded_page, fitting, page


def by_definition(items: list[dict[str, Any]], max_bytes: int) -> int:
    total = 0
    for n, item in enumerate(items):
        total += len(msgspec.json.encode(item))
        if total > max_bytes and n > 0:
            return n
    return len(items)


def items_of(sizes: list[int]) -> list[dict[str, Any]]:
    return [{"id": n, "text": 'é"x' * (size // 3)} for n, size in enumerate(sizes)]


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [10],
        [600_000],  # one item over the limit: still a page of one
        [600_000, 10, 10],
        [100] * 50,
        [30_000] * 40,  # the limit crossed inside the second chunk
        [10] * 15 + [600_000],  # crossed by the last item of the first chunk
        [10] * 16 + [600_000] + [10] * 20,
    ],
)
def test_fitting_is_its_definition(sizes: list[int]) -> None:
    items = items_of(sizes)
    assert fitting(items, 512 * 1024) == by_definition(items, 512 * 1024)


def test_fitting_at_every_limit_around_a_page() -> None:
    rng = random.Random(7)
    items = items_of([rng.randrange(1, 4_000) for _ in range(100)])
    total = sum(len(msgspec.json.encode(i)) for i in items)
    for limit in [*range(0, 200, 7), *range(total - 300, total + 300, 13), 10_000, 50_000]:
        assert fitting(items, limit) == by_definition(items, limit), limit


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [100] * 51,  # a full page and one more: a next cursor
        [100] * 20,  # the last page
        [30_000] * 40,  # past the limit in one piece: cut as page cuts it
        [600_000, 10],
    ],
)
def test_an_encoded_page_answers_what_page_answers(sizes: list[int]) -> None:
    """The reply an encoded page makes is the reply ``page`` with the size check makes,
    byte for byte: the same items, the same cursor."""
    items = [{**item, "id": f"item-{n}"} for n, item in enumerate(items_of(sizes))]
    encoded = encoded_page(items, 50, "id", 512 * 1024)
    paged = page(items, 50, "id", 512 * 1024)
    assert envelope.ok(encoded, 7) == envelope.ok(paged, 7)
    # Within the limit, the items go out as the one encoding that sized them.
    fits = len(msgspec.json.encode(items[:50])) <= 512 * 1024
    assert isinstance(encoded["items"], msgspec.Raw) == fits
