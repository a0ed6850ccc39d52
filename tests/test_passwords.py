"""Password work under attack (security review, findings 6 and 7).

- The throttle counts a guess before it is checked, so a burst of concurrent guesses cannot
  slip past it; a lock survives a spray of other emails; a password change is throttled too.
- Password checks run in a small bounded pool: a flood of anonymous logins is shed with
  ``unavailable`` and a retry hint, and authenticated commands do not queue behind it.

The throttle and pool are pure logic with a clock and threads, tested directly; the rest runs
against a real service and nats-server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.commands import Login
from agentmem.consumers.passwords import PasswordThrottle, PasswordWork
from agentmem.domain import users
from agentmem.domain.passwords import DEFAULT_COST, cost_of, verify_password
from agentmem.errors import UnauthenticatedError, UnavailableError
from agentmem.eventlog import EventLog
from agentmem.events import UserPasswordChanged
from agentmem.service import Service
from tests.conftest import admin_key, settings_for
from tests.realparts import deployment_keys
from tests.support import NatsServer

PASSWORD = "correct horse battery"


# The throttle and the pool, directly ------------------------------------------------------
def test_the_throttle_counts_an_attempt_before_the_check() -> None:
    throttle = PasswordThrottle(limit=3)
    for _ in range(3):
        throttle.attempt("ann@example.com")  # three checks in flight, none finished
    with pytest.raises(UnauthenticatedError, match="too many") as refused:
        throttle.attempt("ann@example.com")
    assert refused.value.details["retry_after_s"] > 0
    throttle.succeeded("ann@example.com")
    throttle.attempt("ann@example.com")


def test_a_lock_survives_a_spray_of_other_keys() -> None:
    throttle = PasswordThrottle(limit=2, max_keys=100)
    for _ in range(2):
        throttle.attempt("victim@example.com")
    for n in range(1_000):
        throttle.attempt(f"random{n}@example.com")
    with pytest.raises(UnauthenticatedError):
        throttle.attempt("victim@example.com")
    assert len(throttle._attempts) <= 101


def test_a_flood_of_locked_keys_neither_clears_a_lock_nor_grows_the_map() -> None:
    # Every key of the flood locks itself (one attempt each): there is nothing to evict
    # that is not locked. Before, the map then grew without bound.
    throttle = PasswordThrottle(limit=1, max_keys=100)
    throttle.attempt("victim@example.com")
    refusals: list[UnauthenticatedError] = []
    for n in range(1_000):
        try:
            throttle.attempt(f"random{n}@example.com")
        except UnauthenticatedError as exc:
            refusals.append(exc)
    assert len(throttle) <= 100
    assert len(refusals) >= 900
    assert all("at once" in r.message for r in refusals)
    assert all(r.details["retry_after_s"] > 0 for r in refusals)
    with pytest.raises(UnauthenticatedError, match="for this email"):
        throttle.attempt("victim@example.com")


def test_a_success_refunds_its_attempt() -> None:
    throttle = PasswordThrottle(limit=2)
    for _ in range(5):
        throttle.attempt("source:10.0.0.1")
        throttle.refund("source:10.0.0.1")  # logins that succeeded: no count left
    throttle.attempt("source:10.0.0.1")
    throttle.attempt("source:10.0.0.1")
    with pytest.raises(UnauthenticatedError):
        throttle.attempt("source:10.0.0.1")


async def test_the_pool_sheds_past_its_queue_and_runs_at_most_its_threads() -> None:
    work = PasswordWork(threads=2, queue=3)
    running, most = 0, 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    results = await asyncio.gather(
        *(work.run(slow, shed=True) for _ in range(10)), return_exceptions=True
    )
    shed = [r for r in results if isinstance(r, UnavailableError)]
    assert len(shed) == 5
    assert all(r.details["retry_after_s"] == 1 for r in shed)
    assert most == 2
    await work.run(slow, shed=True)  # room again once the burst is done


async def test_authenticated_work_waits_its_turn_instead_of_being_shed() -> None:
    work = PasswordWork(threads=1, queue=1)
    results = await asyncio.gather(*(work.run(time.sleep, 0.01) for _ in range(8)))
    assert results == [None] * 8


# Over NATS -------------------------------------------------------------------------------
async def request(nc: NATS, subject: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    reply = await nc.request(subject, msgspec.json.encode(body), timeout=60, **kw)
    decoded: dict[str, Any] = msgspec.json.decode(reply.data)
    return decoded


async def test_concurrent_guesses_cannot_pass_the_login_throttle(client: Client, nc: NATS) -> None:
    org_id = str((await client.create_org("acme")).fields["org_id"])
    await client.register_user(org_id, "Ann", "ann@acme.example", PASSWORD)
    guesses = [f"guess number {n}" for n in range(40)]
    guesses[20] = PASSWORD
    replies = await asyncio.gather(
        *(
            request(nc, Login.op.subject, {"email": "ann@acme.example", "password": g})
            for g in guesses
        )
    )
    assert not replies[20]["ok"], "the right password, sent among 40 guesses, got in"
    checked = [r for r in replies if "wrong email" in r.get("error", {}).get("message", "")]
    assert len(checked) <= 5


async def test_wrong_old_passwords_are_throttled(client: Client) -> None:
    org_id = str((await client.create_org("acme")).fields["org_id"])
    user = await client.register_user(org_id, "Ann", "ann@acme.example", PASSWORD)
    user_id = str(user.fields["user_id"])
    key = await client.create_api_key("stolen", user_id=user_id)
    thief = client.with_token(str(key.fields["token"]))
    for n in range(5):
        with pytest.raises(UnauthenticatedError, match="old password is not right"):
            await thief.change_password(user_id, f"guess {n}!", "a new password")
    with pytest.raises(UnauthenticatedError, match="too many") as throttled:
        await thief.change_password(user_id, PASSWORD, "a new password")
    assert throttled.value.details["retry_after_s"] > 0


@pytest.fixture
async def costly_service(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Service]:
    """A service whose password checks cost what an attacker would meet: tens of
    milliseconds each (a quarter of the production cost, so that the test stays short)."""
    settings = settings_for(nats_server, tmp_path)
    settings.password_cost = DEFAULT_COST // 4
    service = Service(settings)
    await service.start()
    yield service
    await service.stop()


async def test_a_flood_of_anonymous_logins_does_not_stall_commands(
    costly_service: Service, nc: NATS, tmp_path: Path
) -> None:
    admin = Client(nc, admin_key(tmp_path))
    org_id = str((await admin.create_org("acme")).fields["org_id"])
    flood = [
        asyncio.ensure_future(
            request(
                nc,
                Login.op.subject,
                {"email": f"nobody{n}@example.com", "password": "a guess!"},
            )
        )
        for n in range(1_500)
    ]
    await asyncio.sleep(0.2)  # the flood is in
    started = time.perf_counter()
    await admin.rename_org(org_id, "Acme")
    took = time.perf_counter() - started
    replies = await asyncio.gather(*flood)
    assert took < 2.0, f"an authenticated command waited {took:.1f} s behind anonymous logins"
    shed = [r for r in replies if r.get("error", {}).get("code") == "unavailable"]
    assert shed, "no login was shed"
    assert all(r["error"]["details"]["retry_after_s"] == 1 for r in shed)
    assert all(not r["ok"] for r in replies)


async def test_a_login_rehashes_a_password_made_at_a_lower_cost(
    nats_server: NatsServer, tmp_path: Path, nc: NATS
) -> None:
    settings = settings_for(nats_server, tmp_path)
    cheap = Service(settings)
    await cheap.start()
    admin = Client(nc, admin_key(tmp_path))
    org_id = str((await admin.create_org("acme")).fields["org_id"])
    user = await admin.register_user(org_id, "Ann", "ann@acme.example", PASSWORD)
    await cheap.stop()

    settings.password_cost = settings.password_cost * 2  # the operator raised the cost
    dearer = Service(settings)
    await dearer.start()
    try:
        await admin.login("ann@acme.example", PASSWORD)
        await admin.login("ann@acme.example", PASSWORD)  # the second one has nothing to do
        log = EventLog(nc, keys=deployment_keys(nc))
        commits = await log.read_subject(users.subject(org_id, str(user.fields["user_id"])))
        rehashes = [e for c in commits for e in c.events if isinstance(e, UserPasswordChanged)]
        assert len(rehashes) == 1
        assert cost_of(rehashes[0].password_hash) == settings.password_cost
        assert verify_password(PASSWORD, rehashes[0].password_hash)
    finally:
        await dearer.stop()
