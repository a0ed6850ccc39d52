"""The JetStream API, asked directly (nats-py's wrappers add a round of decoding and hide the
error codes): one request with its failures made ``unavailable``, an atomic batch, and a
stream made when missing or checked when present, never rewritten."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem import ids
from agentmem.errors import AgentMemError, UnavailableError

STREAM_NOT_FOUND = 10059
NO_MESSAGE = 10037
TOO_MANY_BATCHES = 10210  # the server's limit of atomic batches in flight per stream (50)

_json = msgspec.json.Encoder()


class Delivery(NamedTuple):
    stream_seq: int
    consumer_seq: int
    num_pending: int


def delivery(message: Msg) -> Delivery:
    """A pulled message's place, read from its ack subject. nats-py's ``Msg.metadata``
    builds two dataclasses and a datetime for it (3 µs against 0.5 µs here), and every
    worker reads it for every message it is delivered."""
    tokens = (message.reply or "").split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
    # or with <domain>.<account hash> after $JS.ACK (and a token at the end).
    at = 4 if len(tokens) == 9 else 6 if len(tokens) >= 11 else -1
    if at < 0 or tokens[0] != "$JS" or tokens[1] != "ACK":
        meta = message.metadata  # raises nats-py's NotJSMessageError
        return Delivery(meta.sequence.stream, meta.sequence.consumer, meta.num_pending)
    return Delivery(int(tokens[at + 1]), int(tokens[at + 2]), int(tokens[at + 4]))


class StreamConfigMismatch(AgentMemError):
    code = "internal"


async def api(
    nc: NATS, subject: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """``$JS.API.<subject>``'s answer, an ``error`` member and all; no answer in time is
    ``UnavailableError``."""
    payload = _json.encode(body) if body is not None else b""
    try:
        reply = await nc.request(f"$JS.API.{subject}", payload, timeout=timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise UnavailableError(f"JetStream did not answer {subject}: {exc!r}") from exc
    result: dict[str, Any] = msgspec.json.decode(reply.data)
    return result


async def direct_get(
    nc: NATS, stream: str, request: dict[str, Any], timeout: float = 5.0
) -> tuple[dict[str, str], bytes] | None:
    """One stored message of ``stream`` by direct get (``seq``, ``next_by_subj``,
    ``last_by_subj``...): its headers (``Nats-Sequence``, ``Nats-Subject`` among them) and
    payload; None when there is none. Any other refusal, or no answer, is unavailable."""
    try:
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}", _json.encode(request), timeout=timeout
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise UnavailableError(f"stream {stream} did not answer a read: {exc!r}") from exc
    headers = dict(reply.headers or {})
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise UnavailableError(
            f"stream {stream} refused a read: {status} {headers.get('Description', '')}"
        )
    return headers, reply.data


async def leader_get(
    nc: NATS, stream: str, request: dict[str, Any], timeout: float = 5.0
) -> tuple[dict[str, str], bytes] | None:
    """``direct_get``, answered by the stream's leader alone. Any replica of a stream with
    ``allow_direct`` answers a direct get from what it has applied so far, which may not
    yet hold a write the leader has acknowledged (nats ADR-31): a read that must see every
    acknowledged write (is a projection caught up?) asks the leader."""
    reply = await api(nc, f"STREAM.MSG.GET.{stream}", request, timeout)
    error = reply.get("error")
    if error:
        if error.get("err_code") == NO_MESSAGE:
            return None
        raise UnavailableError(f"stream {stream} refused a read: {error.get('description')}")
    message = reply["message"]
    headers = header_block(base64.b64decode(message.get("hdrs") or ""))
    # What a direct get's reply carries besides the message's own headers.
    headers["Nats-Stream"] = stream
    headers["Nats-Sequence"] = str(message["seq"])
    headers["Nats-Time-Stamp"] = message.get("time", "")
    headers["Nats-Subject"] = message["subject"]
    return headers, base64.b64decode(message.get("data") or "")


def header_block(block: bytes) -> dict[str, str]:
    """The headers of a NATS header block (``NATS/1.0\r\nName: value\r\n...``)."""
    headers: dict[str, str] = {}
    for line in block.decode().split("\r\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name:
            headers[name.strip()] = value.strip()
    return headers


async def publish_atomic(
    nc: NATS, messages: Sequence[tuple[str, bytes, dict[str, str]]], timeout: float = 5.0
) -> bytes:
    """Publish ``messages`` (subject, payload, headers) as one atomic batch (nats-server
    2.12+, a stream with ``allow_atomic``): every one stored, or none. A batch costs
    nats-server about 2.5 ms plus 0.04 ms a message, where messages stored one by one cost
    0.2-0.4 ms each, every one a durable write (``python -m bench.keywrites``): so a single
    message is sent as a plain publish, without the batch. The first and the last message
    are requests, the middle ones plain publishes. Returns the reply that decides: the
    first message's when it was refused, else the commit's PubAck (the whole batch's, its
    ``seq`` the last message's); the caller reads its ``error``."""
    if len(messages) == 1:
        subject, payload, headers = messages[0]
        return bytes((await nc.request(subject, payload, timeout=timeout, headers=headers)).data)
    batch_id = ids.new_id()
    count = len(messages)
    for index, (subject, payload, headers) in enumerate(messages, start=1):
        batch_headers = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
        if index == count:
            batch_headers["Nats-Batch-Commit"] = "1"
        if index not in (1, count):
            await nc.publish(subject, payload, headers=batch_headers)
            continue
        reply = await nc.request(subject, payload, timeout=timeout, headers=batch_headers)
        if index == count or (reply.data and b'"error"' in reply.data):
            return bytes(reply.data)  # the first message answers only when it was refused
    raise ValueError("an atomic batch needs at least one message")


async def update_settings(
    nc: NATS, config: dict[str, Any], settings: dict[str, Any], timeout: float = 5.0
) -> None:
    """Give the stream whose current ``config`` this is these ``settings``, when it has
    others (a stream made by an earlier version): only settings that change nothing
    stored, which nats-server changes on a live stream."""
    if all(config.get(key) == value for key, value in settings.items()):
        return
    name = config["name"]
    updated = await api(nc, f"STREAM.UPDATE.{name}", {**config, **settings}, timeout)
    if "error" in updated:
        raise UnavailableError(f"could not set {sorted(settings)} on {name}: {updated['error']}")


async def allow_atomic(nc: NATS, config: dict[str, Any], timeout: float = 5.0) -> None:
    """Allow atomic batches on the stream whose current ``config`` this is."""
    await update_settings(nc, config, {"allow_atomic": True}, timeout)


def _normal(value: Any) -> Any:
    """A setting as compared: JetStream leaves out or blanks the members of a nested setting
    (a subject transform) that a config gives as empty."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v not in (None, "")}
    return value


async def ensure_stream(
    nc: NATS,
    config: dict[str, Any],
    checked: Iterable[str],
    also: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Create the stream ``config`` names when missing; when present, check the settings
    ``checked`` (and what ``also`` finds wrong in the stream's config) and never rewrite
    them: a stream this code cannot run on is ``StreamConfigMismatch``, for an operator."""
    name = config["name"]
    reply = await api(nc, f"STREAM.INFO.{name}", timeout=timeout)
    error = reply.get("error")
    if error and error.get("err_code") == STREAM_NOT_FOUND:
        reply = await api(nc, f"STREAM.CREATE.{name}", config, timeout)
        if "error" in reply:
            said = reply["error"].get("description") or ""
            hint = (
                " (JetStream reserves a bounded stream's max_bytes on the disk: free some "
                "space, or lower AGENTMEM_INGEST_MAX_BYTES)"
                if "insufficient storage" in said
                else ""
            )
            raise StreamConfigMismatch(f"could not create stream {name}: {said}{hint}")
        return reply
    if error:
        raise UnavailableError(f"stream {name}: {error.get('description')}")
    actual = reply["config"]
    wrong = {
        key: {"expected": config[key], "actual": actual.get(key)}
        for key in checked
        if key in config and _normal(actual.get(key)) != _normal(config[key])
    }
    if also is not None:
        wrong.update(also(actual))
    if wrong:
        raise StreamConfigMismatch(
            f"stream {name} exists with settings AgentMem cannot run on; "
            "fix them by hand (AgentMem never rewrites a stream)",
            {"settings": wrong},
        )
    return reply
