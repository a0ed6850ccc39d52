"""Data keys for crypto-shredding: one per data subject, kept apart from the log.

Where they live: the JetStream key-value bucket ``AGENTMEM_KEYS`` (stream
``KV_AGENTMEM_KEYS``, file storage, one value per key, replicated like the event log). It
allows deletes, which the event stream does not. A key's name is its data subject
(``agentmem.personal.key_name``); its value is the 256-bit AES-GCM key *wrapped* (itself
encrypted with AES-GCM) by a master key that is not in NATS (``MasterKeys``: a file under
the data dir, or a setting), with a random ``kid`` that the sealed events name.

Created with the first event that needs it: ``KeyRing.key_for`` writes it with expected
last subject sequence, so two processes racing to create one agree on the first.

Forgetting deletes keys for real: a value's message is erased in place
(``$JS.API.STREAM.MSG.DELETE`` without ``no_erase``: nats-server overwrites its bytes in the
block file, which a purge or a plain delete does not), then one notice on the bucket's key
``_meta.forgotten`` names the wildcard of the keys deleted, so that every process hears of it.

A secure erase rewrites the whole block file that holds the message (nats-server's
``eraseMsg``: ``atomicOverwriteFile`` of the block, up to 8 MB), so erasing 10,000 keys one
by one rewrote megabytes 10,000 times (37-102 s for a user with 10,000 memories). Hence
*scope keys*: a data key whose name holds a user, an agent or a session is also wrapped,
inside the master key's layer, by the scope key of each (``_scope.<org>.<user|agent|session>.<id>``,
one AES-GCM layer each, innermost the user's). Forgetting a whole user, agent or
conversation erases that one scope key, after which none of its data keys opens, whatever
bytes of them are left; then the data keys are purged (one request, not an erase) and only
keys made before scope keys existed are erased one by one. A forget of one memory, or of a
memory scope that is not a whole user, agent or session, erases its data keys one by one.

Each process caches the keys it used (``KeyRing``), and drops the matching ones as soon as
the notice arrives: an ordered push consumer on the bucket's subjects, which recovers by
itself from a lost message or a reconnect. A sealed event names its key's ``kid``, so a key deleted
and created again under the same name (a conversation forgotten, then used again) never
opens what the old one sealed, and a ``kid`` that the bucket does not hold is known to be
gone, for good.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import jetstream
from agentmem.errors import AgentMemError, UnavailableError
from agentmem.jetstream import NO_MESSAGE, STREAM_NOT_FOUND
from agentmem.pullfeed import PullFeed

if TYPE_CHECKING:
    from agentmem.keypool import KeyPool

log = structlog.get_logger(__name__)

BUCKET = "AGENTMEM_KEYS"
STREAM = f"KV_{BUCKET}"
PREFIX = f"$KV.{BUCKET}."
MASTER_KEY_FILE = "master.key"
# Where the bucket records, when it was first made for a log that already held events, the
# last sequence that earlier versions may have written personal data to in plaintext.
PLAINTEXT_MARK = "_meta.plaintext_until"
# Where each forget says which keys it deleted (a wildcard over key names, in a header).
FORGOTTEN = "_meta.forgotten"
H_FORGOTTEN = "AgentMem-Forgotten"

WRONG_LAST_SEQUENCE = 10071
MAX_CACHED = 100_000
# How many keys a forget erases at once (each: a read, an erase, a marker).
FORGET_CONCURRENCY = 64
SUBJECTS_PAGE = 100_000
READS_IN_FLIGHT = 16
# New keys stored at once by ``create``: the disk takes a few thousand durable writes a
# second at best, saturated from about 16 in flight (``python -m bench.keywrites``); more
# only queue in nats-server, where a write can outwait its timeout on a busy machine (8
# batches of 1,000 new memories, 64 each in flight, did).
CREATES_IN_FLIGHT = 32
# Atomic batches of new keys stored at once (``create_many``): nats-server refuses more
# than 50 in flight per stream; a refusal is retried after a pause, this many times.
BATCHES_IN_FLIGHT = 8
BATCH_RETRIES = 20
# A replay reads the bucket in one pass first (``preload``): at most this many wrapped keys
# are held (about 200 bytes each), the rest are read one by one as their events come.
MAX_PRELOADED = 200_000
# Scope keys: one per user, agent and session, named after the positions of a key name.
SCOPE_PREFIX = "_scope"
SCOPE_KINDS = ("user", "agent", "session")
# A key is stored where none was: two processes making one name agree on the first.
_FIRST = {"Nats-Expected-Last-Subject-Sequence": "0"}
# nats-server's limit of messages in one atomic batch (``max_batch_size``, 1,000).
MAX_ATOMIC = 1000
NO_ID = "="  # ``agentmem.personal.NO_ID``: a key name's token for an id the event has none of


class KeyError_(AgentMemError):
    """A data key that exists but cannot be opened here (another master key)."""

    code = "internal"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


class _Wrapped(msgspec.Struct, frozen=True):
    """A data key as the bucket holds it."""

    kid: str
    master: str  # the id of the master key that wrapped it
    nonce: bytes
    key: bytes  # AES-GCM(master, nonce, data key, aad = name and kid)
    # The scope keys (name, kid) whose layers ``key`` holds inside the master's, innermost
    # first; none for a scope key itself, and for keys made before scope keys existed.
    scopes: tuple[tuple[str, str], ...] = ()


_wrapped_decoder = msgspec.json.Decoder(_Wrapped)
_json = msgspec.json.Encoder()


class MasterKeys:
    """The keys that wrap data keys. The first wraps new ones; any of them unwraps.

    Rotation: put a new key first (a new line at the top of the file, or first in the
    setting), restart, run ``agentmem admin rewrap-keys`` (every data key wrapped again by
    the new one), then remove the old key. A master key is never in NATS: a copy of the
    bucket without it opens nothing."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("master keys are 32 bytes each")
        self._keys = {self.key_id(k): AESGCM(k) for k in keys}
        self.current = self.key_id(keys[0])

    @staticmethod
    def key_id(key: bytes) -> str:
        return hashlib.sha256(b"agentmem master key" + key).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str) -> MasterKeys:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        try:
            return cls([base64.urlsafe_b64decode(line) for line in lines])
        except ValueError as exc:
            raise ValueError(f"a master key must be 32 bytes in base64: {exc}") from None

    @classmethod
    def load(cls, path: Path, setting: str | None = None, create: bool = True) -> MasterKeys:
        """From ``setting`` (keys in base64, separated by commas or lines) when given; else
        from the file at ``path``, made (0600, one new random key) when missing and
        ``create`` (a deployment's first start; a tool must find the deployment's own)."""
        if setting:
            return cls.parse(setting.replace(",", "\n"))
        if not path.exists() and not create:
            raise ValueError(
                f"no master key at {path}: give the deployment's data dir (--data-dir) or "
                "its AGENTMEM_MASTER_KEY"
            )
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(_b64(secrets.token_bytes(32)) + "\n")
        return cls.parse(path.read_text())

    def wrap(
        self, name: str, kid: str, key: bytes, scopes: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        """``key``: the data key, or its scope layers (``scopes``) around it."""
        nonce = secrets.token_bytes(12)
        sealed = self._keys[self.current].encrypt(nonce, key, f"{name}|{kid}".encode())
        return _json.encode(_Wrapped(kid, self.current, nonce, sealed, scopes))

    @staticmethod
    def scopes_of(data: bytes) -> tuple[tuple[str, str], ...]:
        """The scope keys (name, kid) a stored value is wrapped under."""
        return _wrapped_decoder.decode(data).scopes

    def unwrap(self, name: str, data: bytes) -> tuple[str, bytes]:
        wrapped = _wrapped_decoder.decode(data)
        master = self._keys.get(wrapped.master)
        if master is None:
            raise KeyError_(
                f"data key {name} is wrapped by master key {wrapped.master}, which this "
                "process does not have (see docs/security.md, 'Keys')"
            )
        try:
            key = master.decrypt(wrapped.nonce, wrapped.key, f"{name}|{wrapped.kid}".encode())
        except InvalidTag:
            raise KeyError_(f"data key {name} does not open with its master key") from None
        return wrapped.kid, key

    def needs_rewrap(self, data: bytes) -> bool:
        return _wrapped_decoder.decode(data).master != self.current


async def plaintext_until(nc: NATS, timeout: float = 5.0) -> int | None:
    """The last sequence of the log that earlier versions may have written personal data
    to in plaintext (recorded when the key bucket was first made for a log that already
    held events); None when the whole log was written sealed, or there is no bucket yet."""
    try:
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{STREAM}",
            _json.encode({"last_by_subj": PREFIX + PLAINTEXT_MARK}),
            timeout=timeout,
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    message = msgspec.json.decode(reply.data).get("message")
    if not message or not message.get("data"):
        return None
    return int(msgspec.json.decode(base64.b64decode(message["data"]))["last_seq"])


def matches(pattern: str, name: str) -> bool:
    """Does the NATS wildcard ``pattern`` (``*`` one token, ``>`` the rest) match ``name``?"""
    tokens = name.split(".")
    for index, token in enumerate(pattern.split(".")):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(pattern.split(".")) == len(tokens)


def scope_names(name: str) -> list[str]:
    """The scope keys that data key ``name`` is wrapped under: one per id its name holds
    (user, agent, session: ``agentmem.personal.key_name``), innermost first."""
    tokens = name.split(".")
    if len(tokens) != 6 or name.startswith("_"):
        return []
    return [
        f"{SCOPE_PREFIX}.{tokens[0]}.{kind}.{value}"
        for kind, value in zip(SCOPE_KINDS, tokens[1:4], strict=True)
        if value != NO_ID
    ]


def scope_of(pattern: str) -> str | None:
    """The scope key whose data keys are exactly those of a forget's wildcard: a whole
    user's (``<org>.<user>.*.*.>``), agent's or session's; None for any other wildcard."""
    tokens = pattern.split(".")
    if len(tokens) != 5 or tokens[4] != ">" or tokens[0] in ("*", ">"):
        return None
    named = [(k, v) for k, v in zip(SCOPE_KINDS, tokens[1:4], strict=True) if v != "*"]
    if len(named) != 1 or named[0][1] in (">", NO_ID):
        return None
    kind, value = named[0]
    return f"{SCOPE_PREFIX}.{tokens[0]}.{kind}.{value}"


def _layer_aad(name: str, kid: str, scope: DataKey) -> bytes:
    return f"{name}|{kid}|{scope.name}|{scope.kid}".encode()


def _seal_layers(raw: bytes, name: str, kid: str, layers: list[DataKey]) -> bytes:
    """``raw`` in one AES-GCM layer per scope key, innermost the first."""
    data = raw
    for scope in layers:
        nonce = secrets.token_bytes(12)
        data = nonce + scope.aead.encrypt(nonce, data, _layer_aad(name, kid, scope))
    return data


def _open_layers(data: bytes, name: str, kid: str, layers: list[DataKey]) -> bytes:
    for scope in reversed(layers):
        data = scope.aead.decrypt(data[:12], data[12:], _layer_aad(name, kid, scope))
    return data


@dataclass(frozen=True, slots=True)
class DataKey:
    name: str
    kid: str
    # The key's bytes, not an ``AESGCM``: one of those holds about 1.3 KB (a replay caches
    # up to ``MAX_CACHED`` keys) and costs about 1 µs to make, less than a use.
    raw: bytes

    @property
    def aead(self) -> AESGCM:
        return AESGCM(self.raw)


def bucket_config(replicas: int = 1) -> dict[str, Any]:
    """A key-value bucket (``nats kv`` reads it) with one value per key, kept forever,
    replicated like the log; deletes allowed, which is the point."""
    return {
        "name": STREAM,
        "subjects": [f"{PREFIX}>"],
        "retention": "limits",
        "storage": "file",
        "max_msgs_per_subject": 1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "discard": "old",
        "num_replicas": replicas,
        "duplicate_window": 120 * 1_000_000_000,
        "allow_rollup_hdrs": True,
        # Keys made ahead are stored many in one atomic batch (``KeyRing.create_many``).
        "allow_atomic": True,
        "deny_delete": False,
        "deny_purge": False,
        "allow_direct": False,  # reads go to the leader: a key just made is always there
    }


class KeyRing:
    """This process's view of the data keys: cached, created on first use, forgotten
    everywhere within the time a delete marker takes to arrive (milliseconds)."""

    def __init__(self, nc: NATS, master: MasterKeys, timeout: float = 5.0) -> None:
        self.nc = nc
        self.master = master
        self.timeout = timeout
        self._keys: OrderedDict[str, DataKey] = OrderedDict()
        self._gone: OrderedDict[str, None] = OrderedDict()  # kids known to be deleted
        self._creating: dict[str, asyncio.Lock] = {}
        self._reading: dict[str, asyncio.Future[tuple[int, bytes | None] | None]] = {}
        self._read_slots = asyncio.Semaphore(READS_IN_FLIGHT)
        self._create_slots = asyncio.Semaphore(CREATES_IN_FLIGHT)
        self._batch_slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        # name -> wrapped key, read by ``preload`` and unwrapped on first use.
        self._preloaded: dict[str, bytes] = {}
        self._watch: Any = None
        self._listeners: list[Callable[[str], None]] = []
        self.plaintext_until: int | None = None
        # Keys made ahead for new memories (``agentmem.keypool``), made on first use.
        self.pool: KeyPool | None = None

    # Starting --------------------------------------------------------------------------
    async def start(self, replicas: int = 1, log_last_seq: int = 0) -> None:
        """Make the bucket when missing (noting the log's last sequence when it already held
        events: those may hold personal data in plaintext), then listen for deletes."""
        info = await self._api(f"STREAM.INFO.{STREAM}")
        error = info.get("error")
        if error and error.get("err_code") == STREAM_NOT_FOUND:
            created = await self._api(f"STREAM.CREATE.{STREAM}", bucket_config(replicas))
            if "error" in created and "already in use" not in str(created["error"]):
                raise UnavailableError(f"could not create the key bucket: {created['error']}")
            if log_last_seq > 0:
                await self.nc.request(
                    PREFIX + PLAINTEXT_MARK,
                    _json.encode({"last_seq": log_last_seq}),
                    timeout=self.timeout,
                    headers={"Nats-Expected-Last-Subject-Sequence": "0"},
                )
        elif error:
            raise UnavailableError(f"key bucket: {error.get('description')}")
        else:
            await jetstream.allow_atomic(self.nc, info["config"], self.timeout)
        self.plaintext_until = await plaintext_until(self.nc, self.timeout)
        self._watch = await self.nc.jetstream().subscribe(
            f"{PREFIX}>",
            cb=self._on_change,
            stream=STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,
            idle_heartbeat=5.0,
        )

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stop()
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.unsubscribe()
            self._watch = None

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """``listener(pattern)`` runs whenever keys are deleted (here or in another process),
        with the wildcard over the names deleted: the aggregate caches drop what they folded
        from events that no longer open, the vector index the vectors of forgotten data."""
        self._listeners.append(listener)

    async def _on_change(self, msg: Msg) -> None:
        # A new value (a key made, or wrapped again) changes no key this process holds: a
        # key is never replaced under a name while it lives, only deleted, and a forget
        # says which ones on FORGOTTEN (a delete by hand, ``nats kv del``, by its marker).
        headers = msg.headers or {}
        pattern = headers.get(H_FORGOTTEN)
        if pattern is None and headers.get("KV-Operation") in ("DEL", "PURGE"):
            pattern = msg.subject.removeprefix(PREFIX)
        if pattern is not None:
            self._drop(pattern)

    # Reading and creating ----------------------------------------------------------------
    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await jetstream.api(self.nc, subject, body, self.timeout)

    async def _last(self, name: str) -> tuple[int, bytes | None] | None:
        """The last message on a key: its sequence and its value (None for a delete
        marker); None when the key never had one."""
        request = {"last_by_subj": PREFIX + name}
        found = await jetstream.leader_get(self.nc, STREAM, request, self.timeout)
        if found is None:
            return None
        headers, data = found
        seq = int(headers["Nats-Sequence"])
        return (seq, None) if "KV-Operation" in headers else (seq, data)

    def _remember(self, key: DataKey) -> DataKey:
        self._keys[key.name] = key
        self._keys.move_to_end(key.name)
        while len(self._keys) > MAX_CACHED:
            self._keys.popitem(last=False)
        return key

    async def _open(self, name: str, data: bytes) -> DataKey | None:
        """The key a stored value holds; None when a scope key it is wrapped under is gone
        (forgotten: the key is gone too)."""
        kid, key = self.master.unwrap(name, data)
        scopes = self.master.scopes_of(data)
        if scopes:
            layers = [await self._scope_key(scope, skid) for scope, skid in scopes]
            if any(layer is None for layer in layers):
                return None
            try:
                key = _open_layers(key, name, kid, [k for k in layers if k is not None])
            except InvalidTag:
                raise KeyError_(f"data key {name} does not open with its scope keys") from None
        return DataKey(name, kid, key)

    async def _scope_key(self, name: str, kid: str) -> DataKey | None:
        """Scope key ``name`` with ``kid``, read once and cached; None when it is gone."""
        cached = self._keys.get(name)
        if cached is not None and cached.kid == kid:
            return cached
        if kid in self._gone:
            return None
        wrapped = self._preloaded.get(name)  # kept: every key of the scope needs it
        last = (0, wrapped) if wrapped is not None else await self._shared_read(name)
        if last is not None and last[1] is not None:
            key = await self._open(name, last[1])
            if key is not None and key.kid == kid:
                return self._remember(key)
        self._forget_kid(kid)
        return None

    def _forget_kid(self, kid: str) -> None:
        self._gone[kid] = None
        while len(self._gone) > MAX_CACHED:
            self._gone.popitem(last=False)

    async def key_for(self, name: str) -> DataKey:
        """The key that seals new events of data subject ``name``, made when it has none."""
        cached = self._keys.get(name)
        if cached is not None:
            return cached
        lock = self._creating.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                return await self._key_for(name)
        finally:
            if not lock.locked():
                self._creating.pop(name, None)

    async def _key_for(self, name: str) -> DataKey:
        # Most keys are asked for by the first event of their data subject: try to make it
        # at once (expected sequence 0); only when the name is taken, read what holds it.
        last: tuple[int, bytes | None] | None = None
        for attempt in range(5):
            cached = self._keys.get(name)
            if cached is not None:
                return cached
            if attempt > 0:
                last = await self._last(name)
                if last is not None and last[1] is not None:
                    found = await self._open(name, last[1])
                    if found is not None:
                        return self._remember(found)
                    # Wrapped under a scope key since forgotten: replaced below.
            kid = secrets.token_hex(8)
            raw = AESGCM.generate_key(bit_length=256)
            layers = [await self.key_for(scope) for scope in scope_names(name)]
            scopes = tuple((layer.name, layer.kid) for layer in layers)
            reply = await self.nc.request(
                PREFIX + name,
                self.master.wrap(name, kid, _seal_layers(raw, name, kid, layers), scopes),
                timeout=self.timeout,
                headers={"Nats-Expected-Last-Subject-Sequence": str(last[0] if last else 0)},
            )
            ack = msgspec.json.decode(reply.data)
            error = ack.get("error")
            if error is None:
                return self._remember(DataKey(name, kid, raw))
            if error.get("err_code") != WRONG_LAST_SEQUENCE:
                raise UnavailableError(f"could not store data key {name}: {error}")
            # Made before (by another process, or deleted since): read it, then decide again.
        raise UnavailableError(f"data key {name} kept changing; retry")

    async def create(self, name: str) -> DataKey:
        """Store a new key under ``name``, which no key has had (a fresh random name:
        ``agentmem.keypool``), and hold it. Raises when the name is taken or the bucket
        does not store it."""
        key, value = await self._new_value(name)
        try:
            async with self._create_slots:
                reply = await self.nc.request(
                    PREFIX + name, value, timeout=self.timeout, headers=_FIRST
                )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise UnavailableError(f"the key bucket did not answer: {exc!r}") from exc
        error = msgspec.json.decode(reply.data).get("error")
        if error is not None:
            raise UnavailableError(f"could not store data key {name}: {error}")
        return self._remember(key)

    async def create_many(self, names: list[str]) -> list[DataKey]:
        """``create`` for each of ``names`` (at most ``MAX_ATOMIC`` of them), stored in one
        atomic batch, all or none: one durable write where ``create`` each is one per key,
        that the events written meanwhile wait behind (``jetstream.publish_atomic``)."""
        # Their scope keys first, a few at a time (a batch of new memories may name a
        # thousand new users); each is then at hand, cached.
        scopes = sorted({scope for name in names for scope in scope_names(name)})
        for start in range(0, len(scopes), CREATES_IN_FLIGHT):
            await asyncio.gather(*map(self.key_for, scopes[start : start + CREATES_IN_FLIGHT]))
        made = [await self._new_value(name) for name in names]
        messages = [(PREFIX + key.name, value, _FIRST) for key, value in made]
        for attempt in range(BATCH_RETRIES):
            try:
                async with self._batch_slots:
                    reply = await jetstream.publish_atomic(self.nc, messages, self.timeout)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                raise UnavailableError(f"the key bucket did not answer: {exc!r}") from exc
            error = msgspec.json.decode(reply).get("error")
            if error is None:
                return [self._remember(key) for key, _ in made]
            if error.get("err_code") != jetstream.TOO_MANY_BATCHES:
                raise UnavailableError(f"could not store {len(names)} data keys: {error}")
            await asyncio.sleep(0.002 * (attempt + 1))
        raise UnavailableError("the key bucket is too busy with atomic writes; retry")

    async def _new_value(self, name: str) -> tuple[DataKey, bytes]:
        """A new random key for ``name`` and its value as the bucket stores it: wrapped by
        the master key and, inside it, by its scope keys, as ``key_for`` wraps (a scope's
        forget covers it)."""
        kid = secrets.token_hex(8)
        raw = AESGCM.generate_key(bit_length=256)
        layers = [await self.key_for(scope) for scope in scope_names(name)]
        scopes = tuple((layer.name, layer.kid) for layer in layers)
        value = self.master.wrap(name, kid, _seal_layers(raw, name, kid, layers), scopes)
        return DataKey(name, kid, raw), value

    async def resolve(self, wanted: list[tuple[str, str]]) -> None:
        """Make ``opener(name, kid)`` answer for each of ``wanted`` without I/O: read from
        the bucket each key this process has not cached (``kid`` is the one a sealed event
        names). A kid the bucket does not hold (deleted, or made again) is gone for good."""
        missing = {
            (name, kid)
            for name, kid in wanted
            if kid not in self._gone and getattr(self._keys.get(name), "kid", None) != kid
        }
        # Those a replay's ``preload`` holds open without I/O, one after the other (a task
        # each would cost more than the opening); the others are read concurrently.
        held = [(name, kid) for name, kid in missing if name in self._preloaded]
        for name, kid in held:
            await self._read(name, kid)
        if len(held) < len(missing):
            await asyncio.gather(*(self._read(n, k) for n, k in missing.difference(held)))

    async def preload(self, batch: int = 1000) -> int:
        """Read the whole bucket in one pass (pulls of ``batch`` values), for a replay: it
        opens events of every data subject from the first on, and one read per key costs
        far more than one delivery. A ``PullFeed``, not nats-py's ``fetch``, which waits for
        each message apart (a task and an inbox id per message: most of the pass). Keys
        deleted during or after the pass are dropped by their delete markers as usual.
        Returns how many values it holds."""
        js = self.nc.jetstream()
        left = min((await js.stream_info(STREAM)).state.messages, MAX_PRELOADED)
        consumer = await js.add_consumer(
            STREAM,
            ConsumerConfig(
                filter_subject=f"{PREFIX}>",
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=30.0,
            ),
        )
        feed = PullFeed(self.nc, STREAM, consumer.name, batch, idle_wait=self.timeout)
        await feed.start()
        try:
            while left > 0:
                messages = await feed.next_batch()
                left -= len(messages)
                for message in messages:
                    name = message.subject.removeprefix(PREFIX)
                    if message.data and not (message.headers or {}).get("KV-Operation"):
                        self._preloaded[name] = message.data
                if not messages or messages[-1].metadata.num_pending == 0:
                    break
        finally:
            await feed.stop()
            with contextlib.suppress(Exception):
                await js.delete_consumer(STREAM, consumer.name)
        return len(self._preloaded)

    async def _read(self, name: str, kid: str) -> None:
        """Read one key from the bucket (its leader: a key just made is there); readers of
        the same key share one read."""
        wrapped = self._preloaded.pop(name, None)
        if wrapped is not None and await self._found(name, kid, (0, wrapped)):
            return
        if await self._found(name, kid, await self._shared_read(name)):
            return
        self._forget_kid(kid)

    async def _shared_read(self, name: str) -> tuple[int, bytes | None] | None:
        """``_last(name)``, one read shared by every caller that asks meanwhile."""
        reading = self._reading.get(name)
        if reading is None:
            reading = self._reading[name] = asyncio.ensure_future(self._read_slot(name))
            reading.add_done_callback(lambda _: self._reading.pop(name, None))
        return await asyncio.shield(reading)

    async def _read_slot(self, name: str) -> tuple[int, bytes | None] | None:
        # A few reads in flight at a time: a thousand at once were five times slower per
        # key here than sixteen (the client's and the JetStream API's queues).
        async with self._read_slots:
            return await self._last(name)

    async def _found(self, name: str, kid: str, last: tuple[int, bytes | None] | None) -> bool:
        """Whether ``last`` (a read of key ``name``) holds the key ``kid``; it is cached."""
        if last is None or last[1] is None:
            return False
        key = await self._open(name, last[1])
        if key is None or key.kid != kid:
            return False
        self._remember(key)
        return True

    def cached(self, name: str) -> str | None:
        """The id of the key this process holds for ``name``, if it holds one."""
        key = self._keys.get(name)
        return key.kid if key is not None else None

    def opener(self, name: str, kid: str) -> AESGCM | None:
        """The cipher of key ``name`` with ``kid``, or None when it is gone (after
        ``resolve``)."""
        key = self._keys.get(name)
        if key is not None and key.kid == kid:
            return key.aead
        if kid in self._gone:
            return None
        raise UnavailableError(f"data key {name} was not read before use")

    # Forgetting ----------------------------------------------------------------------------
    async def names(self, pattern: str) -> list[str]:
        """The names of the keys matching a wildcard ``pattern`` that hold a value or did."""
        found: list[str] = []
        offset = 0
        while True:
            reply = await self._api(
                f"STREAM.INFO.{STREAM}", {"subjects_filter": PREFIX + pattern, "offset": offset}
            )
            if "error" in reply:
                raise UnavailableError(f"key bucket listing: {reply['error'].get('description')}")
            page = reply.get("state", {}).get("subjects") or {}
            found += [subject.removeprefix(PREFIX) for subject in page]
            total = int(reply.get("total", 0))
            offset += len(page)
            if not page or offset >= total or len(page) < SUBJECTS_PAGE:
                return found

    async def _values(self, pattern: str) -> list[tuple[str, int, bytes]]:
        """The name, sequence and value of every key matching ``pattern`` that holds one:
        one pass over the bucket's last message per key, a thousand at a time (each fetch
        asks for exactly what is left: nats-py waits for a full batch)."""
        left = len(await self.names(pattern))
        if not left:
            return []
        subscription = await self.nc.jetstream().pull_subscribe(
            PREFIX + pattern,
            stream=STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=30.0,
            ),
        )
        found: list[tuple[str, int, bytes]] = []
        try:
            while left > 0:
                try:
                    messages = await subscription.fetch(min(1000, left), timeout=self.timeout)
                except nats.errors.TimeoutError:
                    return found
                left -= len(messages)
                for message in messages:
                    if not (message.headers or {}).get("KV-Operation"):
                        name = message.subject.removeprefix(PREFIX)
                        found.append((name, message.metadata.sequence.stream, message.data))
                if not messages or messages[-1].metadata.num_pending == 0:
                    return found
            return found
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def forget(self, pattern: str) -> int:
        """Delete every key matching ``pattern``, then send one notice (the pattern, on
        ``FORGOTTEN``) that every process hears and drops the matching keys on. A whole
        user's, agent's or session's wildcard erases its scope key and purges the data
        keys wrapped under it; every other key (of another wildcard, or made before scope
        keys) is erased on disk one by one. Returns how many data keys went. Deleting
        again is harmless, so a forget that failed half-way is finished by running it
        again."""
        values = await self._values(pattern)
        scope = scope_of(pattern)
        slots = asyncio.Semaphore(FORGET_CONCURRENCY)

        async def erase(name: str, seq: int) -> None:
            async with slots:
                erased = await self._api(
                    f"STREAM.MSG.DELETE.{STREAM}", {"seq": seq, "no_erase": False}
                )
            if "error" in erased and erased["error"].get("err_code") != NO_MESSAGE:
                raise UnavailableError(f"could not erase data key {name}: {erased['error']}")

        if scope is None:
            await asyncio.gather(*(erase(name, seq) for name, seq, _ in values))
        else:
            # Keys not wrapped under the scope key (made before there were scope keys) are
            # erased each; the scope key once; then the rest are purged in one request.
            alone = [
                (name, seq)
                for name, seq, data in values
                if scope not in {n for n, _ in self.master.scopes_of(data)}
            ]
            await asyncio.gather(*(erase(name, seq) for name, seq in alone))
            last = await self._last(scope)
            if last is not None and last[1] is not None:
                await erase(scope, last[0])
            purged = await self._api(f"STREAM.PURGE.{STREAM}", {"filter": PREFIX + pattern})
            if "error" in purged:
                raise UnavailableError(f"could not purge data keys: {purged['error']}")
        await self.nc.request(
            PREFIX + FORGOTTEN, b"", timeout=self.timeout, headers={H_FORGOTTEN: pattern}
        )
        self._drop(pattern)
        return len(values)

    def _drop(self, pattern: str) -> None:
        """Forget the cached keys that ``pattern`` matches (and the scope key it names),
        and what was folded from them."""
        scope = scope_of(pattern)
        for cache in (self._keys, self._preloaded):
            for name in [name for name in cache if matches(pattern, name) or name == scope]:
                del cache[name]
        for listener in self._listeners:
            listener(pattern)

    async def rewrap(self) -> int:
        """Wrap every data key again with the current master key (after a rotation)."""
        count = 0
        for name in await self.names(">"):
            last = await self._last(name)
            if last is None or not last[1] or name.startswith("_meta."):
                continue
            if not self.master.needs_rewrap(last[1]):
                continue
            kid, raw = self.master.unwrap(name, last[1])
            await self.nc.request(
                PREFIX + name,
                self.master.wrap(name, kid, raw, self.master.scopes_of(last[1])),
                timeout=self.timeout,
                headers={"Nats-Expected-Last-Subject-Sequence": str(last[0])},
            )
            count += 1
        return count
