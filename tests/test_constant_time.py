"""Secrets are compared in constant time: a password against its scrypt hash, a token's secret
against the digest the log keeps (docs/security.md, "Credentials").

``==`` stops at the first byte that differs, so how long it takes tells a guesser how much of
a guess was right; ``hmac.compare_digest`` takes the same time whatever the bytes. No
functional test can tell the two apart, since both give the same answers. So these replace
``hmac.compare_digest`` with a spy that answers what the test chooses: the check must ask it,
with the derived digest and the stored one, and answer what it answered. A ``==`` anywhere
in the decision (instead of the compare, or beside it) fails them.
"""

from __future__ import annotations

import base64
import hmac

import pytest

from agentmem.auth import tokens
from agentmem.domain import passwords
from tests.support import TEST_PASSWORD_COST

PASSWORD = "correct horse battery"


class Compare:
    """Stands in for ``hmac.compare_digest``: records what it is asked, answers ``answer``."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[tuple[bytes | str, bytes | str]] = []

    def __call__(self, a: bytes | str, b: bytes | str) -> bool:
        self.asked.append((a, b))
        return self.answer


def stored_digest(encoded: str) -> bytes:
    b64 = encoded.rsplit("$", 1)[1]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))


def test_the_real_checks_tell_right_from_wrong() -> None:
    """Without a spy: the checks below are about how they decide, not whether."""
    encoded = passwords.hash_password(PASSWORD, TEST_PASSWORD_COST)
    assert passwords.verify_password(PASSWORD, encoded)
    assert not passwords.verify_password("a wrong guess", encoded)
    token = tokens.new_token("key", "org", "user")
    assert tokens.matches(token.secret, tokens.digest(token.secret))
    assert not tokens.matches("0" * 64, tokens.digest(token.secret))


@pytest.mark.parametrize("answer", [True, False])
def test_a_password_is_checked_by_a_constant_time_compare(
    monkeypatch: pytest.MonkeyPatch, answer: bool
) -> None:
    encoded = passwords.hash_password(PASSWORD, TEST_PASSWORD_COST)
    compare = Compare(answer)
    monkeypatch.setattr(hmac, "compare_digest", compare)
    # The right password and a wrong one both get whatever the compare answered.
    assert passwords.verify_password(PASSWORD, encoded) is answer
    assert passwords.verify_password("a wrong guess", encoded) is answer
    stored = stored_digest(encoded)
    assert [b for _, b in compare.asked] == [stored, stored]
    (right, _), (wrong, _) = compare.asked
    assert right == stored  # what scrypt derived from the right password
    assert wrong != stored
    assert len(wrong) == len(stored)


@pytest.mark.parametrize("answer", [True, False])
def test_a_token_secret_is_checked_by_a_constant_time_compare(
    monkeypatch: pytest.MonkeyPatch, answer: bool
) -> None:
    token = tokens.new_token("session", "org", "user")
    stored = tokens.digest(token.secret)
    guess = "0" * 64
    compare = Compare(answer)
    monkeypatch.setattr(hmac, "compare_digest", compare)
    assert tokens.matches(token.secret, stored) is answer
    assert tokens.matches(guess, stored) is answer
    assert compare.asked == [(stored, stored), (tokens.digest(guess), stored)]
