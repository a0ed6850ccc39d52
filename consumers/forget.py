"""The forget commands over NATS: find the target and its organization, check the caller,
delete the data keys, then append ``data.forgotten`` (``agentmem.domain.forget``).

A target is found in the log by its id, whatever its events still say: a forget that
failed after deleting the keys (so the target already reads as gone) is finished by
sending it again. Another organization's target is answered as a missing one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmem import ids, ingestion, subjects
from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import (
    check_service_admin,
    keep_service_admin,
    missing_org,
    missing_user,
)
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import agents, forget, memories, messages, users
from agentmem.domain.aggregate import Evolve, Write
from agentmem.domain.forget import (
    ForgetAgent,
    ForgetConversation,
    ForgetMemory,
    ForgetMemoryScope,
    ForgetUser,
)
from agentmem.errors import AgentMemError, NotFoundError, UnavailableError
from agentmem.events import ForgetTarget
from agentmem.keys import matches
from agentmem.personal import user_of

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts


def command_router(parts: Parts) -> Router:
    router = Router()
    runner, log = parts.runner, parts.log

    async def target_subject(aggregate: str, aggregate_id: str, missing: AgentMemError) -> str:
        try:
            return await runner.subject_of(aggregate, aggregate_id)
        except NotFoundError:
            raise missing from None

    async def forget_and_record(
        request: Request[Any],
        target: ForgetTarget,
        org_id: str,
        target_ids: dict[str, str],
        subject: str | None = None,
        evolve: Evolve[Any] | None = None,
        named: tuple[str, ...] = (),
    ) -> Result:
        keys = log.keys
        if keys is None:
            raise UnavailableError("this process holds no data keys: it cannot forget")
        erased = await keys.forget(forget.keys_of(target, org_id, target_ids))
        for pattern in forget.graph_keys_of(target, org_id, target_ids):
            erased += await keys.forget(pattern)
        # Keys its events name that the wildcard does not match (a new memory's key, made
        # ahead: agentmem.keypool).
        for name in named:
            erased += await keys.forget(name)
        # Commands parked with the target's data in plaintext go too (before the event, so
        # that a forget that failed here is finished by sending it again).
        await ingestion.forget_parked(parts.nc, org_id, target, target_ids)
        forget_id = ids.new_id()

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            version = None  # a conversation's subject: written at no version
            if subject is not None and evolve is not None:
                version = (await loader.load(subject, evolve)).version
            return forget.forget(target, org_id, target_ids, forget_id, erased, subject, version)

        return await runner.run(request, plan)

    @router.handle(ForgetUser)
    async def forget_user(request: Request[ForgetUser]) -> Result:
        user_id = request.body.user_id
        subject = await target_subject("user", user_id, missing_user(user_id))
        org_id = subjects.parse(subject).org_id
        caller = request.caller
        authorize(caller, request.need, org_id, missing_user(user_id), user_id)
        # An admin of the service's organization forgot the service administrator, and with
        # it the only key that could make another. (A retried forget reads no state.)
        loaded = await Loader(runner.cache, "", refresh=True).load(subject, users.evolve)
        if loaded.state is not None:
            check_service_admin(caller, loaded.state)
            keep_service_admin(loaded.state)
        target = {"user_id": user_id}
        return await forget_and_record(request, "user", org_id, target, subject, users.evolve)

    @router.handle(ForgetAgent)
    async def forget_agent(request: Request[ForgetAgent]) -> Result:
        agent_id = request.body.agent_id
        subject = await target_subject("agent", agent_id, agents.missing(agent_id))
        org_id = subjects.parse(subject).org_id
        authorize(request.caller, request.need, org_id, agents.missing(agent_id))
        target = {"agent_id": agent_id}
        return await forget_and_record(request, "agent", org_id, target, subject, agents.evolve)

    @router.handle(ForgetConversation)
    async def forget_conversation(request: Request[ForgetConversation]) -> Result:
        command = request.body
        org_id = command.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        subject = messages.subject(org_id, command.session_id)
        if await log.last_on(subject) is None:
            raise messages.missing_conversation(command.session_id)
        target = {"session_id": command.session_id}
        return await forget_and_record(request, "conversation", org_id, target, subject)

    @router.handle(ForgetMemory)
    async def forget_memory(request: Request[ForgetMemory]) -> Result:
        memory_id = request.body.memory_id
        subject = await target_subject("memory", memory_id, memories.missing(memory_id))
        org_id = subjects.parse(subject).org_id
        loaded = await Loader(runner.cache, "", refresh=True).load(subject, memories.evolve)
        state = loaded.state
        if isinstance(state, memories.Claim):
            raise memories.missing(memory_id)  # a content's claim, not a memory
        sealed_with = await log.sealed_keys(subject)
        # Whose it is: while it reads, its scope; once its key is gone (a forget cut short,
        # or done, sent again by its user), the user its key names, which the service
        # wrote and nobody else can.
        owner = state.user_id if isinstance(state, memories.Memory) else None
        if owner is None and len(users_named := {user_of(k) for k in sealed_with}) == 1:
            owner = users_named.pop()
        authorize(request.caller, request.need, org_id, memories.missing(memory_id), owner)
        target = {"memory_id": memory_id}
        wildcard = forget.keys_of("memory", org_id, target)
        named = tuple(sorted(k for k in sealed_with if not matches(wildcard, k)))
        return await forget_and_record(
            request, "memory", org_id, target, subject, memories.evolve, named
        )

    @router.handle(ForgetMemoryScope)
    async def forget_scope(request: Request[ForgetMemoryScope]) -> Result:
        command = request.body
        org_id = command.org_id or request.caller.org_id
        scope = forget.scope_ids(command)
        authorize(request.caller, request.need, org_id, missing_org(org_id), command.user_id)
        return await forget_and_record(request, "memory_scope", org_id, scope)

    return router
