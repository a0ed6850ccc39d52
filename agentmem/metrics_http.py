"""The metrics listener: ``agentmem serve --metrics HOST:PORT`` (off by default).

A small HTTP/1.0 server on the service's own event loop, for a Prometheus scraper and a
supervisor's probes; nothing else is served, and it reads nothing from a request but its
first line:

- ``GET /metrics``: the process's metrics as Prometheus text, with the log's and the
  projections' figures read just before (``Metrics.observe_status``).
- ``GET /livez``: 200 while the process can go on (its embedded nats-server has not died),
  else 503. A supervisor restarts a process that is not live.
- ``GET /readyz``: 200 when the log answers and every projection is within ``ready_lag``
  events of it, else 503 with the reasons. A load balancer sends no work to a process
  that is not ready; nothing restarts it.

Its answers carry no data of any organization (counts by subject and projection only), so it
has no authentication: bind it to an address only the scraper reaches (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agentmem.consumers.system import readiness
from agentmem.metrics import Metrics

log = structlog.get_logger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# A scraper's request line is short; anything longer, or slower, is not one.
MAX_REQUEST_LINE = 2048
READ_TIMEOUT_S = 5.0
# A probe must get an answer even when the log does not: then it is "not ready".
STATUS_TIMEOUT_S = 3.0

Report = Callable[[], Awaitable[dict[str, Any]]]


class MetricsListener:
    def __init__(
        self,
        metrics: Metrics,
        status: Report,
        live: Callable[[], bool],
        ready_lag: int,
    ) -> None:
        self.metrics = metrics
        self.status = status
        self.live = live
        self.ready_lag = ready_lag
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the address bound (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        log.info("metrics listening", address=f"{bound[0]}:{bound[1]}")
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            status, content_type, body = await self._answer(line)
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> tuple[str, str, bytes]:
        parts = line.decode("latin-1").split()
        if len(line) > MAX_REQUEST_LINE or len(parts) != 3 or parts[0] != "GET":
            return "400 Bad Request", "text/plain", b"GET /metrics, /livez or /readyz\n"
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            with contextlib.suppress(Exception):  # the rest is served even without the log
                self.metrics.observe_status(await asyncio.wait_for(self.status(), STATUS_TIMEOUT_S))
            return "200 OK", PROMETHEUS_TEXT, self.metrics.text()
        if path == "/livez":
            live = self.live()
            return _json("200 OK" if live else "503 Service Unavailable", {"live": live})
        if path == "/readyz":
            try:
                report = await asyncio.wait_for(self.status(), STATUS_TIMEOUT_S)
            except Exception as exc:
                reasons = [f"the log or the store does not answer: {type(exc).__name__}"]
            else:
                self.metrics.observe_status(report)
                reasons = readiness(report, self.ready_lag)
            status = "503 Service Unavailable" if reasons else "200 OK"
            return _json(status, {"ready": not reasons, "reasons": reasons})
        return "404 Not Found", "text/plain", b"GET /metrics, /livez or /readyz\n"


def _json(status: str, body: dict[str, Any]) -> tuple[str, str, bytes]:
    return status, "application/json", json.dumps(body).encode() + b"\n"
