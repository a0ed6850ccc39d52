"""Commits with their personal fields sealed: the one place events are encrypted and opened.

On the way into the log (``seal``), every event that has personal fields
(``agentmem.personal``) loses them from its JSON object, which gains instead::

    "_sealed": {"k": <key name>, "i": <key id>, "n": <nonce>, "c": <ciphertext>}

``c`` is AES-GCM (256-bit key, 96-bit random nonce) of the JSON object of those fields, with
the event's type, the key name and the key id as associated data: a sealed part opens only
in the event it was written in. Ids, types, times, roles and sequences stay readable.

On the way out (``open_events``), a commit without ``_sealed`` is decoded as it always was
(the fast path: commits without personal data, and every commit of earlier versions); a
sealed one has its parts opened with the keys of ``agentmem.keys.KeyRing`` and is then
converted to the events. An event whose key is gone (forgotten) reads as ``Shredded``: its
type, and nothing else. Every reader (aggregate loads, projections, history, the access
view, replay) goes through here, through ``EventLog``; decoders are built once.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

from agentmem import subjects
from agentmem.events import (
    EVENT_TYPES,
    AnyEvent,
    Commit,
    Event,
    Shredded,
    decode_commit,
    encode_commit,
    read_commit,
)
from agentmem.keypool import KeyPool
from agentmem.keys import DataKey, KeyRing
from agentmem.personal import key_name, personal_fields

SEALED = "_sealed"
_MARK = b'"_sealed"'

# Each event type's personal fields, found once from the declarations.
PERSONAL: dict[type[Event], tuple[str, ...]] = {
    cls: fields for cls in EVENT_TYPES if (fields := personal_fields(cls))
}


class Sealed(msgspec.Struct, frozen=True):
    k: str  # the key's name: its data subject
    i: str  # the key's id
    n: bytes  # nonce
    c: bytes  # ciphertext and tag


class NoKeys(Exception):
    """A sealed commit read by an event log that was given no keys."""


_json = msgspec.json.Encoder()


def _aad(event_type: str, name: str, kid: str) -> bytes:
    return f"{event_type}|{name}|{kid}".encode()


# The aggregates whose new subjects take a key made ahead (``agentmem.keypool``): each new
# one is a data subject of its own, and its single forget finds its keys by their names in
# its events (``EventLog.sealed_keys``).
POOLED = frozenset({"memory"})


def is_personal(event: AnyEvent) -> bool:
    return type(event) in PERSONAL


def _pool(keys: KeyRing) -> KeyPool:
    if keys.pool is None:
        keys.pool = KeyPool(keys)
    return keys.pool


async def _key(keys: KeyRing, subject: str, name: str, fresh: bool, ahead: bool = True) -> DataKey:
    """The key that seals an event whose usual key is ``name``: for the first event of a
    new memory, one made ahead; for a later one, the key its first event used here."""
    new = fresh and subjects.parse(subject).aggregate in POOLED
    if keys.pool is None and not new:
        return await keys.key_for(name)
    pool = _pool(keys)
    if new:
        return await pool.take(subject, name, ahead)
    return await keys.key_for(pool.name_for(subject, name))


async def new_keys(
    keys: KeyRing | None, writes: list[tuple[str, list[AnyEvent]]]
) -> dict[str, DataKey]:
    """The keys that the new aggregates of an atomic batch that take keys made ahead (its
    new memories: ``writes``, each one's subject and events) are sealed with, by usual key
    name, for ``seal``'s ``made``: stored many in one atomic write (``KeyPool.take_many``),
    where sealing each alone stored a key each."""
    if keys is None:
        return {}
    wanted: dict[str, str] = {}
    for subject, events in writes:
        if subjects.parse(subject).aggregate in POOLED:
            for event in events:
                if type(event) in PERSONAL:
                    wanted.setdefault(key_name(subject, event), subject)
    return await _pool(keys).take_many(wanted) if wanted else {}


async def seal(
    subject: str,
    events: list[AnyEvent],
    keys: KeyRing | None,
    fresh: bool = False,
    ahead: bool = True,
    made: dict[str, DataKey] | None = None,
) -> bytes:
    """The commit body of ``events`` on ``subject``, personal fields sealed (plaintext
    without ``keys``: a test's log, or a tool that writes no personal data). ``fresh``:
    the subject's first commit (written at expected sequence 0). ``ahead`` false: a new
    memory takes a key made ahead if its scope has one, but starts no pool (an atomic
    batch: ``agentmem.keypool.KeyPool.take``). ``made``: keys taken for this commit's new
    aggregates already (``new_keys``), by usual name."""
    if keys is None or not any(type(e) in PERSONAL for e in events):
        return encode_commit(events)
    items: list[Any] = []
    chosen: dict[str, DataKey] = {}  # by usual name: a new memory's events share one key
    for event in events:
        fields = PERSONAL.get(type(event))
        if fields is None:
            if isinstance(event, Shredded):
                raise ValueError("a shredded event is what a forgotten one reads as; never written")
            items.append(event)
            continue
        name = key_name(subject, event)
        key = chosen.get(name) or (made.get(name) if made and fresh else None)
        if key is None:
            key = chosen[name] = await _key(keys, subject, name, fresh, ahead)
        body: dict[str, Any] = msgspec.to_builtins(event)
        secret = {field: body.pop(field) for field in fields}
        nonce = secrets.token_bytes(12)
        ciphertext = key.aead.encrypt(
            nonce, _json.encode(secret), _aad(body["type"], key.name, key.kid)
        )
        body[SEALED] = Sealed(key.name, key.kid, nonce, ciphertext)
        items.append(body)
    return _json.encode({"events": items})


class _Envelope(msgspec.Struct, frozen=True):
    """What opening needs of an event: its type and its sealed part (nothing else decoded)."""

    type: str = ""
    _sealed: Sealed | None = msgspec.field(default=None, name=SEALED)


class _RawCommit(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw]


_raw_commit = msgspec.json.Decoder(_RawCommit)
_envelope = msgspec.json.Decoder(_Envelope)
_event = msgspec.json.Decoder(AnyEvent)


def _join(raw: bytes, fields: bytes) -> bytes:
    """An event's JSON object with its opened fields added (its ``_sealed`` member stays, and
    is ignored: events take unknown fields)."""
    if fields.strip() == b"{}":
        return raw
    return raw.rstrip()[:-1] + b"," + fields.lstrip()[1:]


def _parts(payload: bytes, keys: KeyRing | None) -> tuple[list[bytes], list[_Envelope]] | None:
    """A commit's events, raw and as envelopes; None when it holds nothing sealed (or is
    not a commit this reader knows: the plain readers say why)."""
    if _MARK not in payload:
        return None
    if keys is None:
        raise NoKeys("this commit holds sealed personal data and this reader has no keys")
    try:
        raws = [bytes(raw) for raw in _raw_commit.decode(payload).events]
        return raws, [_envelope.decode(raw) for raw in raws]
    except msgspec.DecodeError:
        return None


def _wanted(envelopes: list[_Envelope]) -> list[tuple[str, str]]:
    return [(e._sealed.k, e._sealed.i) for e in envelopes if e._sealed is not None]


def _open_parts(
    raws: list[bytes], envelopes: list[_Envelope], keys: KeyRing
) -> list[bytes | Shredded]:
    """The events with their sealed parts opened (or ``Shredded`` when the key is gone),
    once ``keys.resolve`` has read their keys."""
    opened: list[bytes | Shredded] = []
    for raw, envelope in zip(raws, envelopes, strict=True):
        part = envelope._sealed
        if part is None:
            opened.append(raw)
            continue
        cipher = keys.opener(part.k, part.i)
        if cipher is None:
            opened.append(Shredded(of=envelope.type))
            continue
        fields = cipher.decrypt(part.n, part.c, _aad(envelope.type, part.k, part.i))
        opened.append(_join(raw, fields))
    return opened


async def _opened(payload: bytes, keys: KeyRing | None) -> list[bytes | Shredded] | None:
    """The commit's events as JSON objects with their sealed parts opened (or ``Shredded``
    when the key is gone); None when the commit holds nothing sealed."""
    parts = _parts(payload, keys)
    if parts is None or keys is None:
        return None
    raws, envelopes = parts
    await keys.resolve(_wanted(envelopes))
    return _open_parts(raws, envelopes, keys)


def sealed_key_names(payload: bytes) -> set[str]:
    """The names of the keys that a commit's sealed parts name (none for a plain one)."""
    if _MARK not in payload:
        return set()
    try:
        raws = _raw_commit.decode(payload).events
        envelopes = [_envelope.decode(raw) for raw in raws]
    except msgspec.DecodeError:
        return set()
    return {e._sealed.k for e in envelopes if e._sealed is not None}


def _event_of(item: bytes | Shredded) -> AnyEvent:
    if isinstance(item, Shredded):
        return item
    event: AnyEvent = _event.decode(item)
    return event


async def open_events(payload: bytes, keys: KeyRing | None) -> list[AnyEvent]:
    """Every event of a commit, strictly (the projections: anything unreadable raises, and
    the worker parks the commit)."""
    opened = await _opened(payload, keys)
    if opened is None:
        return decode_commit(payload).events
    return [_event_of(item) for item in opened]


async def open_commits(
    payloads: list[bytes], keys: KeyRing | None
) -> list[list[AnyEvent] | Exception]:
    """``open_events`` of each commit of a batch (a projection's), or what it raised: the
    keys of all of them asked for at once, and no task per commit."""
    parsed: list[tuple[list[bytes], list[_Envelope]] | Exception | None] = []
    for payload in payloads:
        try:
            parsed.append(_parts(payload, keys))
        except Exception as exc:
            parsed.append(exc)
    wanted = [k for p in parsed if isinstance(p, tuple) for k in _wanted(p[1])]
    failed: Exception | None = None
    if wanted and keys is not None:
        try:
            await keys.resolve(wanted)
        except Exception as exc:  # each sealed commit fails with it, as each alone would
            failed = exc
    results: list[list[AnyEvent] | Exception] = []
    for payload, p in zip(payloads, parsed, strict=True):
        try:
            if isinstance(p, Exception):
                raise p
            if p is None:
                results.append(decode_commit(payload).events)
                continue
            if failed is not None and _wanted(p[1]):
                raise failed
            assert keys is not None  # _parts raised NoKeys without them
            results.append([_event_of(item) for item in _open_parts(*p, keys)])
        except Exception as exc:
            results.append(exc)
    return results


async def read_events(payload: bytes, keys: KeyRing | None) -> tuple[list[AnyEvent], str | None]:
    """The events this version can read, and why any were left out (``read_commit``'s
    tolerance, for the command and authentication paths)."""
    try:
        opened = await _opened(payload, keys)
    except NoKeys as exc:
        return [], str(exc)
    if opened is None:
        return read_commit(payload)
    events: list[AnyEvent] = []
    problems: list[str] = []
    for index, item in enumerate(opened):
        try:
            events.append(_event_of(item))
        except (msgspec.DecodeError, RecursionError) as exc:
            problems.append(f"event {index}: {exc}")
    return events, "; ".join(problems) or None


__all__ = ["Commit", "open_commits", "open_events", "read_events", "seal"]
