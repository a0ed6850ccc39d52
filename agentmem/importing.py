"""``agentmem import``: an export (``agentmem.exporting``), or a mem0 memory list, replayed
into a deployment as commands.

Commands, not events: the target's own handlers decide every write, so its invariants
(unique emails, label reservations, memory deduplication, limits) hold for imported data
as for any other, and its own keys seal it. Each command is sent with a command id made
from the source (the export's organization, the event's sequence and place in its commit;
a mem0 memory's id), so importing the same file again is answered by the log with the
first outcome (``AlreadyApplied``) and changes nothing; a create that meets what an
earlier import made (``conflict``) counts as already there.

Ids are kept: organizations, users, agents, tools and blocks are created with their own
ids, and a memory's id is derived from its organization, scope and content as in the
source (a memory whose source id had a later generation is mapped to the target's). A
message is appended with a new id: message ids are the service's, global, and a client
never picks one. Passwords are not carried (the export holds no hash): an imported user
gets a random password and signs in after an administrator gives them a key or they
change it. Every event with a command is sent as that command, those that end or undo
something too (redactions, deletions, archives and restores, supersedes): the target must
answer as the source did. Events with no command (sessions, API keys, forgets, working
memory, graph facts) are counted as skipped, by type; those the target writes itself
(reservations, an expiry) are neither sent nor counted.

mem0: a JSON list of memories, or an object whose ``results`` is one (``get_all``), each
``{"id", "memory", "user_id", "agent_id", "run_id", "metadata", "categories",
"created_at", ...}``, becomes memories of the organization given: ``run_id`` is the
session, ``categories`` the tags, ``created_at`` the valid time, and the mem0 id is kept
in ``metadata.mem0_id`` (an id AgentMem does not allow, such as an email as ``user_id``,
is made one, and the original kept in ``metadata``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec

from agentmem.client import Client
from agentmem.commands import (
    AppendMessages,
    ArchiveAgent,
    CreateAgent,
    CreateOrg,
    DeleteAgent,
    DeleteConversation,
    DeleteOrg,
    DeleteTool,
    DeleteUser,
    RedactMessage,
    RegisterTool,
    RegisterUser,
    RenameOrg,
    SetAgentState,
    SetRoles,
    UnarchiveAgent,
    UpdateAgent,
    UpdateProfile,
    UpdateTool,
)
from agentmem.domain.blocks import AttachBlock, CreateBlock, DeleteBlock, DetachBlock, SetBlock
from agentmem.domain.memories import (
    MAX_BATCH,
    AddMemories,
    AddMemory,
    ArchiveMemory,
    DeleteMemory,
    NewMemory,
    RestoreMemory,
    SupersedeMemory,
    UpdateMemory,
)
from agentmem.errors import AgentMemError, ConflictError
from agentmem.exporting import FORMAT, VERSION
from agentmem.protocol import Request, operation_of

ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}\Z")
# Which fields of an event its command takes, by name.
AGENT: tuple[str, ...] = ("agent_id", "name", "description", "persona", "model", "metadata", "tags")
TOOL: tuple[str, ...] = ("tool_id", "name", "description", "parameters", "tags")
MEMORY: tuple[str, ...] = (
    "content", "memory_type", "user_id", "agent_id", "session_id", "metadata", "tags",
    "importance", "valid_from", "valid_to", "expires_at", "source", "uri", "mime_type",
)  # fmt: skip
MEMORY_UPDATE: tuple[str, ...] = (
    "content", "metadata", "tags", "importance", "valid_from", "valid_to", "expires_at",
)  # fmt: skip
BLOCK: tuple[str, ...] = (
    "block_id", "label", "content", "char_limit", "description", "agent_id", "user_id",
)  # fmt: skip
BLOCK_UPDATE: tuple[str, ...] = ("block_id", "content", "char_limit", "description")
MEMORY_SUPERSEDE: tuple[str, ...] = (
    "content", "metadata", "tags", "importance", "valid_from", "source",
)  # fmt: skip

# Events whose command takes the event's own fields, by name (the organization's id added
# where the command names it, a memory's id mapped to the target's).
BY_FIELDS: dict[str, tuple[type[Request], tuple[str, ...]]] = {
    "org.renamed": (RenameOrg, ("org_id", "name")),
    "org.deleted": (DeleteOrg, ("org_id",)),
    "user.profile_updated": (UpdateProfile, ("user_id", "name", "email")),
    "user.roles_set": (SetRoles, ("user_id", "roles")),
    "user.deleted": (DeleteUser, ("user_id",)),
    "agent.created": (CreateAgent, AGENT),
    "agent.updated": (UpdateAgent, AGENT),
    "agent.archived": (ArchiveAgent, ("agent_id",)),
    "agent.unarchived": (UnarchiveAgent, ("agent_id",)),
    "agent.deleted": (DeleteAgent, ("agent_id",)),
    "agent.state_set": (SetAgentState, ("agent_id", "state")),
    "conversation.deleted": (DeleteConversation, ("session_id",)),
    "tool.registered": (RegisterTool, TOOL),
    "tool.updated": (UpdateTool, TOOL),
    "tool.deleted": (DeleteTool, ("tool_id",)),
    "memory.updated": (UpdateMemory, ("memory_id", *MEMORY_UPDATE)),
    "memory.archived": (ArchiveMemory, ("memory_id",)),
    "memory.restored": (RestoreMemory, ("memory_id",)),
    "memory.deleted": (DeleteMemory, ("memory_id",)),
    "block.created": (CreateBlock, BLOCK),
    "block.updated": (SetBlock, BLOCK_UPDATE),
    "block.attached": (AttachBlock, ("block_id", "agent_id")),
    "block.detached": (DetachBlock, ("block_id", "agent_id")),
    "block.deleted": (DeleteBlock, ("block_id",)),
}
# Events the target writes itself, with the commands above (reservations of names and
# contents, an agent's state cleared with its deletion) or by its own expiry sweep (an
# imported memory keeps its ``expires_at``): not sent, not counted as skipped.
MADE_BY_THE_TARGET = frozenset(
    {
        "email.reserved", "email.released", "tool_name.reserved", "tool_name.released",
        "block_label.reserved", "block_label.released", "memory.content_claimed",
        "agent.state_cleared", "memory.expired",
    }
)  # fmt: skip


class ImportError_(ValueError):
    """A file that is neither an export this version reads nor a mem0 memory list."""


@dataclass
class Imported:
    applied: int = 0  # commands that wrote
    already: int = 0  # commands an earlier import had applied
    skipped: Counter[str] = field(default_factory=Counter)  # events with no command, by type
    failed: list[str] = field(default_factory=list)  # what the target refused, and why
    complete: bool = True  # False: the export had no trailer (it was cut short)


def command_id(*parts: object) -> str:
    """A command id made from the source: the same line imported twice has the same."""
    digest = hashlib.sha256(msgspec.json.encode([str(p) for p in parts])).hexdigest()
    return f"imp-{digest[:40]}"


def _body(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: event[name] for name in names if event.get(name) is not None}


class _Importer:
    def __init__(self, client: Client, org_id: str, result: Imported) -> None:
        self.client = client
        self.org_id = org_id
        self.result = result
        self.memory_ids: dict[str, str] = {}  # source memory id -> the target's
        self.message_ids: dict[str, str] = {}  # source message id -> the target's
        # What a memory's supersede needs of the memory that replaces it: its fields, by
        # source id (a supersede by a memory already there names it only).
        self.memory_fields: dict[str, dict[str, Any]] = {}
        self.superseded: set[str] = set()  # old memories a supersede here already ended
        # The events of the source command being imported: one written twice in an atomic
        # batch (an agent's archive, an organization's deletion) is sent once.
        self._command = ("", set[bytes]())
        # The target log's end before the import: a reply at or below it is the first
        # outcome of a command an earlier import sent (or a duplicate the target found).
        self.start = 0
        self.fresh = False  # the last command's reply was a new write

    async def begin(self) -> None:
        """Read where the target's log ends (``agentmem.sys.status``; a caller that may
        not read it counts every answered command as applied)."""
        with contextlib.suppress(AgentMemError):
            report = await self.client.status()
            self.start = int(report["stream"]["last_seq"])

    async def send(
        self, request_type: type[Request], body: dict[str, Any], cid: str, count: bool = True
    ) -> Any:
        """One command; its reply's data, or None when the target refused it. ``count``:
        count it as one applied (or already there); else the caller counts."""
        subject = operation_of(request_type).subject
        try:
            reply = await self.client.request(subject, {**body, "command_id": cid})
        except ConflictError as exc:
            self.result.already += 1
            return exc.details or {}
        except AgentMemError as exc:
            self.result.failed.append(f"{subject}: {exc.code}: {exc.message}")
            return None
        self.client.last_seq = max(self.client.last_seq, reply.seq or 0)
        data = reply.data if isinstance(reply.data, dict) else {}
        self.fresh = (reply.seq or 0) > self.start
        if not count:
            return data
        if data.get("deduplicated") is True or not self.fresh:
            self.result.already += 1
        else:
            self.result.applied += 1
        return data

    def memory(self, source_id: str) -> str:
        return self.memory_ids.get(source_id, source_id)

    async def commit(self, lines: list[dict[str, Any]]) -> None:
        """The events of one source commit."""
        first = lines[0]
        cid = command_id(self.org_id, first["seq"])
        events = [line["event"] for line in lines]
        if all(e["type"] == "message.appended" for e in events):
            await self.messages(events, cid)
            return
        for line in lines:
            if self._seen(line):
                continue
            await self.event(line["event"], command_id(self.org_id, line["seq"], line["index"]))

    def _seen(self, line: dict[str, Any]) -> bool:
        """Was this event already met in the same source command (one written on two
        subjects in one atomic batch)?"""
        source_command, events = self._command
        if line.get("command_id") != source_command:
            events = set()
            self._command = (str(line.get("command_id", "")), events)
        event = msgspec.json.encode(line["event"])
        if event in events:
            return True
        events.add(event)
        return False

    async def messages(self, events: list[dict[str, Any]], cid: str) -> None:
        head = events[0]
        body = {
            "org_id": self.org_id,
            "session_id": head["session_id"],
            "agent_id": head["agent_id"],
            "user_id": head.get("user_id"),
            "messages": [
                _body(e, "role", "content", "tool_calls", "tool_call_id", "metadata")
                for e in events
            ],
        }
        data = await self.send(AppendMessages, body, cid)
        made = (data or {}).get("message_ids") or []
        if len(made) == len(events):  # message ids are the target's own: mapped for redactions
            for event, message_id in zip(events, made, strict=True):
                self.message_ids[str(event["message_id"])] = str(message_id)

    async def event(self, event: dict[str, Any], cid: str) -> None:
        kind = event["type"]
        org = {"org_id": self.org_id}
        if kind in BY_FIELDS:
            request_type, names = BY_FIELDS[kind]
            body = _body(event, *names)
            if "org_id" in request_type.__struct_fields__:
                body = {**body, **org}
            if "memory_id" in body:
                body["memory_id"] = self.memory(body["memory_id"])
            if kind == "memory.updated" and event["memory_id"] in self.memory_fields:
                self.memory_fields[event["memory_id"]].update(_body(event, *MEMORY_UPDATE))
            await self.send(request_type, body, cid)
            return
        match kind:
            case "org.created":
                await self.send(CreateOrg, {"org_id": event["org_id"], "name": event["name"]}, cid)
            case "user.registered":
                body = {
                    **org,
                    **_body(event, "user_id", "name", "email", "roles"),
                    "password": secrets.token_urlsafe(24),
                }
                await self.send(RegisterUser, body, cid)
            case "memory.added":
                await self.added(event, cid)
            case "memory.superseded":
                if event["memory_id"] not in self.superseded:  # by a memory already there
                    replacing = self.memory_fields.get(event["superseded_by"], {})
                    await self.supersede(event["memory_id"], replacing, cid)
            case "message.redacted":
                body = {
                    **org,
                    **_body(event, "session_id", "reason"),
                    "message_id": self.message_ids.get(event["message_id"], event["message_id"]),
                }
                await self.send(RedactMessage, body, cid)
            case _ if kind in MADE_BY_THE_TARGET:
                pass
            case _:
                self.result.skipped[kind] += 1

    async def added(self, event: dict[str, Any], cid: str) -> None:
        """A new memory, or (``supersedes``) the memory that replaced another."""
        self.memory_fields[event["memory_id"]] = _body(event, *MEMORY)
        old = event.get("supersedes")
        if old:
            new_id = await self.supersede(old, event, cid)
        else:
            data = await self.send(AddMemory, {"org_id": self.org_id, **_body(event, *MEMORY)}, cid)
            new_id = (data or {}).get("memory_id")
        if new_id:
            self.memory_ids[event["memory_id"]] = str(new_id)

    async def supersede(self, old: str, replacing: dict[str, Any], cid: str) -> str | None:
        """``memory.supersede`` of ``old`` by a memory of ``replacing``'s fields; the id of
        the memory that replaces it."""
        self.superseded.add(old)
        body = {**_body(replacing, *MEMORY_SUPERSEDE), "memory_id": self.memory(old)}
        data = await self.send(SupersedeMemory, body, cid)
        found = (data or {}).get("superseded_by")
        return str(found) if found else None


def _lines(source: IO[bytes]) -> Iterator[dict[str, Any]]:
    for number, raw in enumerate(source, start=1):
        if raw.strip():
            try:
                yield msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise ImportError_(f"line {number} is not JSON: {exc}") from None


def _commits(lines: Iterable[dict[str, Any]], ended: list[bool]) -> Iterator[list[dict[str, Any]]]:
    """The event lines grouped by the commit (sequence) they came from, in log order; the
    trailer sets ``ended``."""
    group: list[dict[str, Any]] = []
    for line in lines:
        if "end" in line:
            ended.append(True)
            break
        if group and line["seq"] != group[0]["seq"]:
            yield group
            group = []
        group.append(line)
    if group:
        yield group


async def import_export(client: Client, source: IO[bytes]) -> Imported:
    """Replay an ``agentmem export`` file into the deployment ``client`` speaks to."""
    lines = _lines(source)
    header = next(lines, None)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ImportError_(f"not an AgentMem export: its first line names no {FORMAT!r} format")
    if header.get("version") != VERSION:
        raise ImportError_(
            f"an export of format version {header.get('version')}; this version reads {VERSION}"
        )
    result = Imported()
    importer = _Importer(client, str(header["org_id"]), result)
    await importer.begin()
    ended: list[bool] = []
    for commit in _commits(lines, ended):
        await importer.commit(commit)
    result.complete = bool(ended)
    return result


# mem0 ----------------------------------------------------------------------------------
def _ms(value: Any) -> int | None:
    """An ISO 8601 time (mem0's ``created_at``) as ms since the epoch; None when absent."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _id(value: Any, kind: str, metadata: dict[str, Any]) -> str | None:
    """An id AgentMem allows: the value itself, or (keeping the original in ``metadata``)
    its characters outside [A-Za-z0-9_-] made "-" plus a short hash, so two originals never
    meet."""
    if value is None or value == "":
        return None
    text = str(value)
    if ID.match(text):
        return text
    metadata[f"mem0_{kind}"] = text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', text)[:55]}-{digest}"


def mem0_memories(data: Any) -> list[dict[str, Any]]:
    """The memories of a mem0 export, as ``memory.add_batch`` items."""
    items = data.get("results") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ImportError_("a mem0 export is a JSON list of memories, or has one as 'results'")
    memories = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("memory"), str):
            raise ImportError_(f"mem0 memory {number} has no 'memory' text")
        metadata = dict(item.get("metadata") or {})
        if item.get("id"):
            metadata["mem0_id"] = str(item["id"])
        if item.get("app_id"):
            metadata["mem0_app_id"] = str(item["app_id"])
        memory: dict[str, Any] = {
            "content": item["memory"],
            "user_id": _id(item.get("user_id"), "user_id", metadata),
            "agent_id": _id(item.get("agent_id"), "agent_id", metadata),
            "session_id": _id(item.get("run_id"), "run_id", metadata),
            "tags": [str(c)[:64] for c in (item.get("categories") or [])][:32],
            "valid_from": _ms(item.get("created_at")),
        }
        memory["metadata"] = metadata
        if not any(memory[k] for k in ("user_id", "agent_id", "session_id")):
            memory["agent_id"] = "mem0"  # a memory needs a scope; mem0's had none named
        memories.append({k: v for k, v in memory.items() if v is not None})
    return memories


async def import_mem0(client: Client, source: IO[bytes], org_id: str) -> Imported:
    """Add the memories of a mem0 export to organization ``org_id``."""
    try:
        data = msgspec.json.decode(source.read())
    except msgspec.DecodeError as exc:
        raise ImportError_(f"not JSON: {exc}") from None
    result = Imported()
    memories = []
    for number, memory in enumerate(mem0_memories(data)):
        try:  # checked here: a batch is all or none, and one bad memory failed its 1,000
            msgspec.convert(memory, NewMemory)
        except msgspec.ValidationError as exc:
            result.failed.append(f"mem0 memory {number}: {exc}")
            continue
        memories.append(memory)
    importer = _Importer(client, org_id, result)
    await importer.begin()
    for start in range(0, len(memories), MAX_BATCH):
        batch = memories[start : start + MAX_BATCH]
        ids = [m.get("metadata", {}).get("mem0_id") or m["content"] for m in batch]
        cid = command_id("mem0", org_id, *ids)
        body = {"org_id": org_id, "memories": batch}
        added = await importer.send(AddMemories, body, cid, count=False)
        if added is not None:  # counted by memory: those new, those already there
            new = int(added.get("added", 0)) if importer.fresh else 0
            result.applied += new
            result.already += len(batch) - new
    return result
