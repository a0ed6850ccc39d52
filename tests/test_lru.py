"""The bounded map behind the aggregate cache and the access view (pure logic)."""

from __future__ import annotations

from agentmem.consumers.lru import LRU, json_size


def test_it_drops_the_least_recently_used_past_the_bytes() -> None:
    lru: LRU[str] = LRU(len, max_entries=100, max_bytes=10)
    lru.put("a", "xxxx")
    lru.put("b", "xxxx")
    assert lru.get("a") == "xxxx"  # a is now the most recently used
    lru.put("c", "xxxx")  # 12 bytes: b goes
    assert lru.get("b") is None
    assert (lru.get("a"), lru.get("c")) == ("xxxx", "xxxx")
    assert lru.bytes == 8


def test_it_drops_past_the_count_and_keeps_one_entry_larger_than_the_bound() -> None:
    lru: LRU[str] = LRU(len, max_entries=2, max_bytes=5)
    for key in "abc":
        lru.put(key, "x")
    assert len(lru) == 2
    assert lru.get("a") is None
    lru.put("huge", "x" * 50)  # alone over the bound: kept, the others go
    assert len(lru) == 1
    assert lru.bytes == 50


def test_a_value_stored_again_is_weighed_again() -> None:
    lru: LRU[str] = LRU(len, max_entries=10, max_bytes=100)
    lru.put("a", "x" * 40)
    lru.put("a", "x")
    assert lru.bytes == 1
    assert lru.pop("a") == "x"
    assert lru.bytes == 0


def test_the_weight_is_the_json_size() -> None:
    assert json_size({"state": "x" * 1000}) > 1000
    assert json_size(object()) == 1024  # not encodable: a fixed guess
