"""Settings: flags win over ``AGENTMEM_*`` environment variables, which win over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentmem.domain.passwords import DEFAULT_COST
from agentmem.keys import MASTER_KEY_FILE, MasterKeys

if TYPE_CHECKING:
    from agentmem.extraction_model import ModelEndpoint

DEFAULT_LISTEN = "127.0.0.1:4222"


class StartupError(Exception):
    """A reason not to start that a person can fix; the CLI prints it as one line."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"AGENTMEM_{name}")
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise StartupError(f"AGENTMEM_{name} must be a whole number, not {value!r}") from None


# What one ``agentmem serve`` process runs; the default, all three, is one whole service.
ROLES = ("commands", "queries", "projections")


def parse_roles(text: str, source: str = "AGENTMEM_ROLES") -> frozenset[str]:
    """``commands,queries`` and the like: one or more of ``ROLES``, comma-separated."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names or any(name not in ROLES for name in names):
        raise StartupError(
            f"{source} must name one or more of {', '.join(ROLES)}, comma-separated, not {text!r}"
        )
    return frozenset(names)


@dataclass
class Settings:
    # None: start the embedded nats-server; a URL: use that server instead.
    nats_url: str | None = field(default_factory=lambda: _env("NATS"))
    listen: str = field(default_factory=lambda: _env("LISTEN", DEFAULT_LISTEN) or DEFAULT_LISTEN)
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", "data") or "data"))
    # An SQLite path (default: <data-dir>/agentmem.db).
    store: str | None = field(default_factory=lambda: _env("STORE"))
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "info") or "info")
    log_format: str = field(default_factory=lambda: _env("LOG_FORMAT", "auto") or "auto")
    password_cost: int = field(
        default_factory=lambda: int(_env("PASSWORD_COST", str(DEFAULT_COST)) or DEFAULT_COST)
    )
    # Embedded server only: fsync every write before acking it (see docs/architecture.md).
    sync_always: bool = field(default_factory=lambda: _env("SYNC", "always") == "always")
    # Copies of the event stream that a NATS cluster keeps: 3 survives the loss of one node
    # (docs/deploy.md). Used when the stream is created; an existing stream is only checked.
    replicas: int = field(default_factory=lambda: _env_int("REPLICAS", 1))
    # Seconds between two expiry sweeps of a process that serves commands (0: none):
    # memories past their expires_at get memory.expired (consumers/expiry.py).
    expiry_sweep_s: int = field(default_factory=lambda: _env_int("EXPIRY_SWEEP_S", 60))
    # Milliseconds a live projection worker paces its batches under a steady stream of
    # events (docs/architecture.md, "Exactly-once projection"; 0: off, each batch at once):
    # less projection work right behind each command, reads without after_seq up to that
    # much later.
    projection_pace_ms: int = field(default_factory=lambda: _env_int("PROJECTION_PACE_MS", 0))
    # Which handlers and workers this process runs (several processes share one deployment;
    # a split needs Postgres: see service.check_roles).
    roles: frozenset[str] = field(
        default_factory=lambda: parse_roles(_env("ROLES", ",".join(ROLES)) or "")
    )
    # host:port of the metrics listener (Prometheus text, /livez, /readyz); None: off.
    metrics: str | None = field(default_factory=lambda: _env("METRICS"))
    # /readyz: ready while every projection is at most this many events behind the log.
    ready_lag: int = field(default_factory=lambda: _env_int("READY_LAG", 1000))
    # The master keys that wrap the data keys of personal data, in base64, newest first,
    # separated by commas (docs/security.md, "Keys"). None: the file <data-dir>/master.key,
    # made on the first start. Every process of a deployment needs the same ones.
    master_key: str | None = field(default_factory=lambda: _env("MASTER_KEY"))
    # graph.extract's optional model: an OpenAI-compatible chat endpoint's base URL, the
    # model's name and its key (docs/architecture.md, Extraction). None: rules only.
    extraction_url: str | None = field(default_factory=lambda: _env("EXTRACTION_URL"))
    extraction_model: str | None = field(default_factory=lambda: _env("EXTRACTION_MODEL"))
    extraction_key: str | None = field(default_factory=lambda: _env("EXTRACTION_KEY"))
    # Extract entities and relations (with the rules) from every memory as it is added.
    extract_on_add: bool = field(
        default_factory=lambda: (_env("EXTRACT_ON_ADD", "") or "").lower() in ("1", "true", "yes")
    )
    # The ingestion stream's bounds, when the service creates it (docs/architecture.md,
    # Ingestion): past them a JetStream publish is refused and a plain publish is lost.
    ingest_max_msgs: int = field(default_factory=lambda: _env_int("INGEST_MAX_MSGS", 1_000_000))
    ingest_max_bytes: int = field(default_factory=lambda: _env_int("INGEST_MAX_BYTES", 1024**3))

    def master_keys(self, create: bool = False) -> MasterKeys:
        """The master keys; ``create``: make the file when missing (``serve`` only)."""
        try:
            return MasterKeys.load(self.data_dir / MASTER_KEY_FILE, self.master_key, create)
        except ValueError as exc:
            raise StartupError(f"AGENTMEM_MASTER_KEY or {MASTER_KEY_FILE}: {exc}") from None

    def extraction_endpoint(self) -> ModelEndpoint | None:
        """The extraction model, when both its URL and its model are set."""
        from agentmem.extraction_model import ModelEndpoint  # it needs the domain: not at start

        if not self.extraction_url or not self.extraction_model:
            return None
        return ModelEndpoint(self.extraction_url, self.extraction_model, self.extraction_key)

    @property
    def nats_servers(self) -> list[str]:
        """``nats_url`` split at commas: every node of a cluster, so that the client can
        reconnect to another node when the one it uses goes away."""
        return [url.strip() for url in (self.nats_url or "").split(",") if url.strip()]

    @property
    def store_url(self) -> str:
        return self.store or str(self.data_dir / "agentmem.db")

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return host_port(self.listen, "--listen")

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        return host_port(self.metrics, "--metrics (AGENTMEM_METRICS)") if self.metrics else None


def host_port(address: str, source: str) -> tuple[str, int]:
    """``host:port`` (or ``:port``, on 127.0.0.1) as a pair; a refusal names ``source``."""
    host, _, port = address.rpartition(":")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise StartupError(f"{source} must be host:port, not {address!r}")
    return host or "127.0.0.1", int(port)
