"""Pure rules: token parsing and the role matrix, without any I/O."""

from __future__ import annotations

from typing import Any

import pytest

from agentmem import events
from agentmem.auth import tokens
from agentmem.domain.access import Principal, allowed, narrows_access
from agentmem.headers import header


def principal(*roles: str, org: str = "org-a", user: str = "u1", admin: bool = False) -> Principal:
    return Principal(user_id=user, org_id=org, roles=roles, service_admin=admin)  # type: ignore[arg-type]


def test_a_new_token_round_trips_and_stores_only_a_digest() -> None:
    token = tokens.new_token("key", "org-a", "user-1")
    parsed = tokens.parse(f"Bearer {token}")
    assert parsed == token
    assert tokens.matches(token.secret, tokens.digest(token.secret))
    flipped = token.secret[:-1] + ("1" if token.secret.endswith("0") else "0")
    assert not tokens.matches(flipped, tokens.digest(token.secret))
    assert token.secret not in token.display_prefix
    assert token.display_prefix.startswith("amk_")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer amk_only_three",
        "Bearer xyz_a_b_c_" + "0" * 64,  # unknown prefix
        "Bearer amk_a_b_c_short",  # secret of the wrong length
        "Bearer amk_a.b_c_d_" + "0" * 64,  # an id that is not a NATS token
    ],
)
def test_malformed_credentials_parse_to_none(header: str | None) -> None:
    assert tokens.parse(header) is None


SECRET = "f" * 64


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("Bearer", "no token after 'Bearer'"),
        ("bearer   ", "no token after 'Bearer'"),
        (f"Basic amk_a_b_c_{SECRET}", "scheme is not Bearer"),
        (f"Token amk_a_b_c_{SECRET}", "scheme is not Bearer"),
        ("Bearer not-a-token", "not an AgentMem API key"),
        (f"Bearer amk_a_b_c_{SECRET[:-1]}", "not an AgentMem API key"),
        (f"amk_a.b_c_d_{SECRET}", "not an AgentMem API key"),  # bare, but not a token
        (f"Bearer xyz_a_b_c_{SECRET}", "not an AgentMem API key"),
    ],
)
def test_what_is_wrong_with_a_malformed_credential(value: str, says: str) -> None:
    assert tokens.parse(value) is None
    problem = tokens.malformed(value)
    assert says in problem
    # No part of what was sent comes back: it may be a secret, or most of one.
    for part in value.replace("_", " ").split():
        if len(part) >= 8:
            assert part not in problem, (part, problem)


def test_a_header_is_found_whatever_the_case_of_its_name() -> None:
    value = f"Bearer amk_a_b_c_{SECRET}"
    for name in ("Authorization", "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"):
        assert header({name: value}, "Authorization") == value
        assert header({"Other": "x", name: value}, "authorization") == value
    assert header({"AgentMem-Correlation-Id": "c1"}, "agentmem-correlation-id") == "c1"
    assert header({}, "Authorization") is None
    assert header(None, "Authorization") is None
    assert header({"Authorisation": value}, "Authorization") is None
    # The Kelvin sign lowers to "k": only ASCII names match.
    assert header({"\u212aey": "v"}, "key") is None
    # Sent twice in different cases, the exact spelling wins.
    assert header({"authorization": "a", "Authorization": "b"}, "Authorization") == "b"


@pytest.mark.parametrize(
    ("roles", "need", "own_org", "expected"),
    [
        (("readonly",), "reader", True, True),
        (("readonly",), "member", True, False),
        (("readonly",), "self", True, False),
        (("member",), "member", True, True),
        (("member",), "org_admin", True, False),
        (("admin",), "org_admin", True, True),
        (("admin",), "service_admin", True, False),
        (("admin",), "reader", False, False),  # another organization
        (("member", "readonly"), "member", True, True),  # the highest role counts
    ],
)
def test_role_rules(roles: tuple[str, ...], need: str, own_org: bool, expected: bool) -> None:
    target = "org-a" if own_org else "org-b"
    assert allowed(principal(*roles), need, target) is expected  # type: ignore[arg-type]


def test_self_is_your_own_account_or_an_org_admin() -> None:
    assert allowed(principal("member"), "self", "org-a", target_user="u1")
    assert not allowed(principal("member"), "self", "org-a", target_user="u2")
    assert allowed(principal("admin"), "self", "org-a", target_user="u2")
    assert not allowed(principal("admin"), "self", "org-b", target_user="u2")


def test_a_service_admin_may_do_anything_anywhere() -> None:
    root = principal("admin", org="system", admin=True)
    for need in ("reader", "member", "self", "org_admin", "service_admin"):
        assert allowed(root, need, "any-org", target_user="anyone")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "narrows"),
    [
        (events.ApiKeyRevoked(user_id="u", key_id="k"), True),
        (events.SessionEnded(user_id="u", session_id="s"), True),
        (events.UserRolesSet(user_id="u", roles=("readonly",)), True),
        (events.UserDeleted(user_id="u"), True),
        (events.OrgDeleted(org_id="o"), True),
        (events.AgentArchived(agent_id="a"), True),
        (events.AgentDeleted(agent_id="a"), True),
        (events.ApiKeyCreated(user_id="u", key_id="k", name="n", prefix="p", digest="d"), False),
        (
            events.SessionStarted(
                user_id="u", session_id="s", digest="d", started_at=1, expires_at=2
            ),
            False,
        ),
        (events.OrgRenamed(org_id="o", name="n"), False),
        (events.AgentUnarchived(agent_id="a"), False),
    ],
)
def test_what_takes_access_away_waits_for_every_process(event: Any, narrows: bool) -> None:
    """Those events' commits are answered only once every access view has them."""
    assert narrows_access(event) is narrows
