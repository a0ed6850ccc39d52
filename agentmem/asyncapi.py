"""The protocol as data: an AsyncAPI 3.0 document generated from the operation registry
(``agentmem.protocol``) and the msgspec Structs, with a JSON Schema for every request, every
reply and every event.

``python -m agentmem.asyncapi`` prints it; docs/asyncapi.json is that output, checked in
(a test fails when the two differ), and ``agentmem.sys.schema`` answers it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import msgspec

from agentmem import __version__, subjects
from agentmem.envelope import ErrorBody
from agentmem.events import AnyEvent, Event
from agentmem.protocol import Operation, operations

REF = "#/components/schemas/{name}"
# Fields a reply never carries (consumers.commands.SECRET_FIELDS).
SECRETS = frozenset({"password_hash", "password", "digest"})
HEADER_FIELDS: dict[str, dict[str, str]] = {
    "Authorization": {
        "type": "string",
        "description": "`Bearer <API key or session token>`; the header name is "
        "matched without regard to case.",
    },
    "AgentMem-Correlation-Id": {
        "type": "string",
        "description": "Carried into every commit the command writes; printable "
        "characters only (else `invalid`).",
    },
    "AgentMem-Causation-Id": {
        "type": "string",
        "description": "Carried into every commit the command writes; printable "
        "characters only (else `invalid`).",
    },
}
HEADERS = {"type": "object", "properties": HEADER_FIELDS}
DESCRIPTION = (
    "An event-sourced memory service for AI agents over NATS. Every request is a NATS "
    "request with a JSON body; every reply is the envelope `{ok, data, seq}` or "
    "`{ok: false, error: {code, message, details}}`. docs/protocol.md has the prose and the "
    "worked examples."
)


def _schemas(ops: list[Operation]) -> tuple[dict[int, Any], dict[str, Any]]:
    """The schema of every request, query reply and event, as shared components."""
    types: list[Any] = [o.request for o in ops]
    types += [o.reply for o in ops if not _is_event(o.reply)]
    types += [o.extra for o in ops if o.extra is not None]
    types += [AnyEvent, ErrorBody]
    found, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip((id(t) for t in types), _asyncapi_flavour(found), strict=True))
    return by_type, _asyncapi_flavour(components)


def _asyncapi_flavour(schema: Any) -> Any:
    """msgspec writes a tagged union's ``discriminator`` the OpenAPI way (an object with a
    ``mapping``); an AsyncAPI schema names the property alone."""
    if isinstance(schema, dict):
        return {
            k: v["propertyName"]
            if k == "discriminator" and isinstance(v, dict)
            else _asyncapi_flavour(v)
            for k, v in schema.items()
        }
    if isinstance(schema, (list, tuple)):
        return [_asyncapi_flavour(v) for v in schema]
    return schema


def _is_event(reply: Any) -> bool:
    return isinstance(reply, type) and issubclass(reply, Event)


def _event_view(event: type[Event], extra: type[msgspec.Struct] | None, comps: Any) -> Any:
    """What a command answers: its event's public fields, ``event`` and ``version``, and the
    ``extra`` fields some commands add (consumers.commands.event_view)."""
    schema = comps[event.__name__]
    properties = {k: v for k, v in schema["properties"].items() if k != "type" and k not in SECRETS}
    required = [k for k in schema.get("required", []) if k in properties]
    properties["event"] = {"const": event.__struct_config__.tag}
    properties["version"] = {"type": "integer", "description": "The log sequence written."}
    required += ["event", "version"]
    if extra is not None:
        more = comps[extra.__name__]
        properties.update(more["properties"])
        required += more.get("required", [])
    return {"type": "object", "properties": properties, "required": required}


# What a retried command answers when the data its first attempt wrote was forgotten since
# (docs/protocol.md, "command_id"): it cannot read that outcome back (CommandRunner._view).
SHREDDED_RETRY = {
    "type": "object",
    "description": "A retry of this command whose data was forgotten since: it was applied, "
    "and what it wrote is gone.",
    "properties": {
        "event": {"const": "shredded"},
        "of": {"type": "string", "description": "The type of the event it wrote."},
        "version": {"type": "integer", "description": "The log sequence it wrote."},
    },
    "required": ["event", "of", "version"],
}


def _reply(data: Any) -> dict[str, Any]:
    ok = {
        "type": "object",
        "required": ["ok", "data"],
        "properties": {
            "ok": {"const": True},
            "data": data,
            "seq": {
                "type": ["integer", "null"],
                "description": "A command: the last sequence it appended. A query: the "
                "checkpoint it was read at.",
            },
        },
    }
    failed = {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {"ok": {"const": False}, "error": {"$ref": REF.format(name="ErrorBody")}},
    }
    return {"oneOf": [ok, failed]}


@functools.cache
def document() -> dict[str, Any]:
    ops = operations()
    by_type, components = _schemas(ops)
    channels: dict[str, Any] = {}
    operations_: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for op in ops:
        key = f"{op.kind}.{op.name}"
        request_name = f"{op.request.__name__}Request"
        reply_name = f"{op.request.__name__}Reply"
        if _is_event(op.reply):
            data = _event_view(op.reply, op.extra, components)
        else:
            data = by_type[id(op.reply)]
        if op.kind == "command":
            data = {"oneOf": [data, {"$ref": REF.format(name="ShreddedRetry")}]}
        messages[request_name] = {
            "name": request_name,
            "contentType": "application/json",
            "payload": by_type[id(op.request)],
            **({} if op.public else {"headers": HEADERS}),
        }
        messages[reply_name] = {
            "name": reply_name,
            "contentType": "application/json",
            "payload": _reply(data),
        }
        channels[key] = {
            "address": op.subject,
            "messages": {"request": {"$ref": f"#/components/messages/{request_name}"}},
        }
        channels[f"{key}.reply"] = {
            "address": None,
            "description": "The requester's inbox (the NATS reply subject).",
            "messages": {"reply": {"$ref": f"#/components/messages/{reply_name}"}},
        }
        who = "public: no credentials" if op.public else f"needs the role `{op.need}`"
        operations_[key] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": op.summary or f"{op.kind} {op.name}",
            "description": f"A {op.kind}; {who}.",
            "messages": [{"$ref": f"#/channels/{key}/messages/request"}],
            "reply": {
                "address": {"location": "$message.header#/replyTo"},
                "channel": {"$ref": f"#/channels/{key}.reply"},
                "messages": [{"$ref": f"#/channels/{key}.reply/messages/reply"}],
            },
        }
    messages["Commit"] = {
        "name": "Commit",
        "contentType": "application/json",
        "summary": "One commit: the events one command wrote on one aggregate's subject.",
        "payload": {
            "type": "object",
            "required": ["events"],
            "properties": {
                "events": {"type": "array", "items": by_type[id(AnyEvent)]},
            },
        },
    }
    channels["events"] = {
        "address": f"{subjects.EVENT_PREFIX}.{{org_id}}.{{aggregate}}.{{aggregate_id}}",
        "description": f"The event log: the JetStream stream {subjects.STREAM_NAME}, one "
        "subject per aggregate (docs/events.md).",
        "parameters": {"org_id": {}, "aggregate": {}, "aggregate_id": {}},
        "messages": {"commit": {"$ref": "#/components/messages/Commit"}},
    }
    _ingestion(ops, channels, operations_, messages)
    operations_["events"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/events"},
        "summary": "Every decided command, appended to the log.",
        "messages": [{"$ref": "#/channels/events/messages/commit"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "AgentMem", "version": __version__, "description": DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "`agentmem serve` with no flags.",
                "security": [{"$ref": "#/components/securitySchemes/token"}],
            }
        },
        "channels": channels,
        "operations": operations_,
        "components": {
            "messages": messages,
            "schemas": {**components, "ShreddedRetry": SHREDDED_RETRY},
            "securitySchemes": {"token": CONNECTION_TOKEN},
        },
    }


# How a client connects (docs/security.md, "The NATS layer"): AsyncAPI has no scheme for a
# NATS token, so the nearest, with the rest said in words.
CONNECTION_TOKEN = {
    "type": "apiKey",
    "in": "password",
    "description": "The NATS connection's token is an API key or a session token (nats-py "
    "`token=`, nats.js `token:`), and its inbox prefix `_INBOX_<key id>` (the fourth "
    "`_`-separated part of `amk_<org>_<user>_<key id>_<secret>`) or `_INBOX_<session id>`; "
    "the token `anon_<32 hex digits>`, with the prefix `_INBOX_anon_<the same digits>`, may "
    "only log in. Every request also carries the header `Authorization: Bearer <token>`; "
    "`agentmem.sys.health` and `agentmem.sys.schema` answer without it (docs/security.md, "
    "The NATS layer).",
}

INGEST_HEADERS = {
    "type": "object",
    "properties": {
        **HEADER_FIELDS,
        "Nats-Msg-Id": {
            "type": "string",
            "description": "The command id (unless the body names `command_id`): 1 to 64 "
            "letters, digits, `_` or `-`. A repeat is stored once.",
        },
        "AgentMem-Outcome-To": {
            "type": "string",
            "description": "A subject the outcome (IngestOutcome) is published on as "
            "well: agentmem.out.<org_id>.<user_id>.<tokens>, under the tree of the user the "
            "command runs as; another is refused (outcome_to_refused in the outcome).",
        },
    },
}


def _ingestion(
    ops: list[Operation],
    channels: dict[str, Any],
    operations_: dict[str, Any],
    messages: dict[str, Any],
) -> None:
    """The commands that may be published instead of requested (docs/protocol.md,
    Ingestion): the same bodies, on ``agentmem.in.<org_id>.<aggregate>.<verb>``, kept by
    the JetStream stream AGENTMEM_INGEST until executed; and the outcome a publisher may
    ask for."""
    from agentmem.domain.ingest import INGEST_PREFIX, PUBLISHABLE
    from agentmem.subjects import OUTCOME_TO_PREFIX

    for op in ops:
        if op.name not in PUBLISHABLE:
            continue
        key = f"ingest.{op.name}"
        name = f"{op.request.__name__}Published"
        messages[name] = {
            "name": name,
            "contentType": "application/json",
            "payload": messages[f"{op.request.__name__}Request"]["payload"],
            "headers": INGEST_HEADERS,
        }
        channels[key] = {
            "address": f"{INGEST_PREFIX}.{{org_id}}.{op.name}",
            "description": "Published (plain or JetStream publish), kept by the stream "
            "AGENTMEM_INGEST until a service executes it; a JetStream publish is "
            "acknowledged by the stream's PubAck.",
            "parameters": {"org_id": {}},
            "messages": {"command": {"$ref": f"#/components/messages/{name}"}},
        }
        operations_[key] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"publish {op.name} to be executed later",
            "description": f"Executed as the request {op.name} (needs the role "
            f"`{op.need}`), once, in order per aggregate; its outcome is read with "
            "ingest.status.",
            "messages": [{"$ref": f"#/channels/{key}/messages/command"}],
        }
    messages["IngestOutcome"] = {
        "name": "IngestOutcome",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(name="IngestOutcome")},
    }
    channels["ingest.outcome"] = {
        "address": f"{OUTCOME_TO_PREFIX}.{{org_id}}.{{user_id}}.{{name}}",
        "description": "The subject a publisher named in AgentMem-Outcome-To, under the "
        "tree of the user the command ran as (on a closed deployment, the only outcome tree "
        "its connection may subscribe to).",
        "parameters": {"org_id": {}, "user_id": {}, "name": {}},
        "messages": {"outcome": {"$ref": "#/components/messages/IngestOutcome"}},
    }
    operations_["ingest.outcome"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/ingest.outcome"},
        "summary": "The outcome of a published command, where its publisher asked for it.",
        "messages": [{"$ref": "#/channels/ingest.outcome/messages/outcome"}],
    }


def render() -> bytes:
    """The document as docs/asyncapi.json holds it: sorted keys, indented, a final newline."""
    return msgspec.json.format(msgspec.json.encode(document(), order="sorted"), indent=2) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
