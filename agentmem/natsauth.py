"""Who may do what on NATS: the accounts, principals and permissions of every deployment
AgentMem starts (the embedded server, compose's cluster), and the rule a client follows.

Three NATS accounts, each a subject namespace of its own:

- ``AGENTMEM``: the service principal (user ``agentmem``) and JetStream, so the event
  stream, its API and the service's own inboxes exist only here. It exports the request
  subjects as services.
- ``CLIENTS``: every other connection. It imports ``agentmem.cmd.>``, ``agentmem.q.>``,
  ``agentmem.sys.>`` and the ingestion tree ``agentmem.in.>`` (with the caller's
  connection details shared, ``Nats-Request-Info``), and the outcome tree ``agentmem.out.>``
  as a stream (what the service sends there arrives in ``CLIENTS``), and nothing else: no
  event subject, no
  ``$JS.API``, no service inbox exists in it. Its users are made per connection by the
  service through nats-server's *auth callout*: a client sends its AgentMem credential (API
  key or session token) as its NATS token, the service checks it as it checks a request,
  and the connection may then publish requests and commands to be ingested (in its own
  organization's tree, ``agentmem.in.<org_id>.>``, but a service administrator's), and subscribe
  to its own inbox prefix (``inbox_prefix``) and its own user's outcome tree
  (``agentmem.out.<org_id>.<user_id>.>``) only.
- ``SYS``: the system account, whose user ``agentmem-system`` lets the service close the
  connections of a credential it revoked.

Secrets (the two passwords and the callout's signing key) live in one file in the data dir,
readable only by the service's user; the server's config holds the issuer's public key.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from agentmem import subjects
from agentmem.auth import natsjwt, tokens

SECRETS_FILE = "nats-credentials.json"
SERVICE_ACCOUNT = "AGENTMEM"
CLIENT_ACCOUNT = "CLIENTS"
SYSTEM_ACCOUNT = "SYS"
SERVICE_USER = "agentmem"
SYSTEM_USER = "agentmem-system"
# What the service exports and every client connection may send requests to.
REQUEST_SUBJECTS = ["agentmem.cmd.>", "agentmem.q.>", "agentmem.sys.>"]
# Where clients publish commands to be executed later (docs/protocol.md, Ingestion): the
# ingestion stream in the service's account captures them; a JetStream publish's
# acknowledgement comes back as a request's reply does.
INGEST_SUBJECTS = ["agentmem.in.>"]
# What the service exports and a client with a credential may publish to.
CLIENT_SUBJECTS = REQUEST_SUBJECTS + INGEST_SUBJECTS
# What the service publishes for clients to receive: the outcomes of published commands
# (``AgentMem-Outcome-To``), exported as a stream; a connection may subscribe to its own
# user's subtree only (``outcome_subscriptions``).
OUTCOME_SUBJECTS = [f"{subjects.OUTCOME_TO_PREFIX}.>"]
# A connection without a credential may only reach the public subjects.
PUBLIC_SUBJECTS = ["agentmem.cmd.auth.login", "agentmem.sys.health", "agentmem.sys.schema"]
ANONYMOUS_PREFIX = "anon_"
# An anonymous connection names its own inbox: long and random enough that nobody guesses it.
_ANONYMOUS_ID = re.compile(r"^anon_[A-Za-z0-9]{22,64}\Z")


@dataclass(frozen=True)
class NatsSecrets:
    service_password: str
    system_password: str
    issuer_seed: str  # the account nkey that signs the users the callout lets in

    @property
    def issuer(self) -> str:
        return natsjwt.public_key(self.issuer_seed)

    def service_url(self, host: str, port: int) -> str:
        return as_user(f"nats://{host}:{port}", SERVICE_USER, self.service_password)

    def system_url(self, host: str, port: int) -> str:
        return as_user(f"nats://{host}:{port}", SYSTEM_USER, self.system_password)


def as_user(url: str, user: str, password: str) -> str:
    """``url`` with ``user`` and ``password`` in it, unless it names a user already."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return url
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def load_secrets(path: Path) -> NatsSecrets | None:
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if "issuer_seed" not in saved:
        return None  # an older file (a password for one user): made again
    return NatsSecrets(
        str(saved["service_password"]), str(saved["system_password"]), str(saved["issuer_seed"])
    )


def ensure_secrets(path: Path) -> NatsSecrets:
    """The deployment's NATS secrets, made at the first start and kept, private, in ``path``."""
    found = load_secrets(path)
    if found is not None:
        return found
    made = NatsSecrets(
        secrets.token_urlsafe(32), secrets.token_urlsafe(32), natsjwt.new_account_seed()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(
            {
                "service_password": made.service_password,
                "system_password": made.system_password,
                "issuer_seed": made.issuer_seed,
            },
            out,
        )
    return made


def server_config(found: NatsSecrets) -> str:
    """The accounts and the auth callout, as a nats-server config block (the embedded server
    writes it into its config; ``agentmem nats-config`` prints it for a cluster)."""
    exports = "\n".join(
        [f'      {{ service: "{s}" }}' for s in CLIENT_SUBJECTS]
        + [f'      {{ stream: "{s}" }}' for s in OUTCOME_SUBJECTS]
    )
    service = f"{{ user: {SERVICE_USER}, password: {json.dumps(found.service_password)} }}"
    system = f"{{ user: {SYSTEM_USER}, password: {json.dumps(found.system_password)} }}"
    imports = "\n".join(
        [
            f'      {{ service: {{ account: {SERVICE_ACCOUNT}, subject: "{s}" }}, share: true }}'
            for s in CLIENT_SUBJECTS
        ]
        + [
            f'      {{ stream: {{ account: {SERVICE_ACCOUNT}, subject: "{s}" }} }}'
            for s in OUTCOME_SUBJECTS
        ]
    )
    return (
        "accounts {\n"
        f"  {SERVICE_ACCOUNT} {{\n"
        "    jetstream: enabled\n"
        f"    users: [ {service} ]\n"
        f"    exports: [\n{exports}\n    ]\n"
        "  }\n"
        f"  {CLIENT_ACCOUNT} {{\n"
        f"    imports: [\n{imports}\n    ]\n"
        "  }\n"
        f"  {SYSTEM_ACCOUNT} {{\n"
        f"    users: [ {system} ]\n"
        "  }\n"
        "}\n"
        f"system_account: {SYSTEM_ACCOUNT}\n"
        "authorization {\n"
        "  timeout: 5\n"
        "  auth_callout {\n"
        f"    issuer: {found.issuer}\n"
        f"    account: {SERVICE_ACCOUNT}\n"
        f"    auth_users: [ {SERVICE_USER} ]\n"
        f"    allowed_accounts: [ {CLIENT_ACCOUNT} ]\n"
        "  }\n"
        "}\n"
    )


# The client's side ------------------------------------------------------------------------
def anonymous_token() -> str:
    """The NATS token of a connection without an AgentMem credential: it names the
    connection's own inbox, so it is random."""
    return ANONYMOUS_PREFIX + secrets.token_hex(16)


def inbox_id(nats_token: str) -> str | None:
    """The inbox a connection that sent ``nats_token`` may receive on: the id of its
    credential (the key's or the session's), or an anonymous token itself. None: a token
    that names no inbox (it is refused)."""
    token = tokens.parse(nats_token)
    if token is not None:
        return token.credential_id
    if _ANONYMOUS_ID.match(nats_token):
        return nats_token
    return None


def inbox_prefix(nats_token: str) -> str:
    """The ``inbox_prefix`` a NATS client sets: ``_INBOX_<inbox id>``."""
    found = inbox_id(nats_token)
    if found is None:
        raise ValueError("not an AgentMem credential or an anonymous token")
    return f"_INBOX_{found}"


def publish_subjects(org_id: str | None) -> list[str]:
    """What a connection with a credential may publish to: requests, and commands to be
    ingested in its own organization only (``org_id``; None, a service administrator's:
    every organization's). Publishing into another tenant's tree is refused by the service
    anyway; refused here, nobody can make an outcome appear under another tenant's
    command ids."""
    if org_id is None:
        return CLIENT_SUBJECTS
    return [*REQUEST_SUBJECTS, f"{subjects.INGEST_PREFIX}.{org_id}.>"]


def outcome_subscriptions(token: tokens.Token | None) -> list[str]:
    """The outcome subjects a connection may subscribe to: its own user's tree."""
    if token is None:
        return []
    return [subjects.outcome_tree(token.org_id, token.user_id) + ".>"]


def connection_options(token: str | None) -> dict[str, str]:
    """What ``nats.connect`` needs to connect as ``token`` (or anonymously)."""
    nats_token = token or anonymous_token()
    return {"token": nats_token, "inbox_prefix": inbox_prefix(nats_token)}


def connection_name(token: tokens.Token | None) -> str:
    """The NATS user a connection is shown as (``nats server report connections``, the
    service's ``Nats-Request-Info``): its credential without the secret."""
    if token is None:
        return "anonymous"
    prefix = tokens.API_KEY_PREFIX if token.kind == "key" else tokens.SESSION_PREFIX
    return f"{prefix}_{token.org_id}_{token.user_id}_{token.credential_id}"


# The service's side ------------------------------------------------------------------------
REQUEST_INFO_HEADER = "Nats-Request-Info"


def request_source(headers: dict[str, str]) -> str | None:
    """The address a request came from, when nats-server says so: it sets
    ``Nats-Request-Info`` on requests that cross from ``CLIENTS`` into the service's account
    (the imports share it) and overwrites any a client sent. On a NATS deployment of one's
    own without that import, a client could write it: it only ever adds a limit."""
    value = headers.get(REQUEST_INFO_HEADER)
    if not value:
        return None
    try:
        host = json.loads(value).get("host")
    except (ValueError, AttributeError):
        return None
    return host if isinstance(host, str) and host else None
