"""A pull consumer's messages, handed over as soon as the server has them.

nats-py's ``fetch(n, timeout)``, once it has had to wait, keeps collecting until it has
``n`` messages or the timeout passes, so under a steady trickle of events every batch waited
the whole timeout (0.5 s of write-to-visible lag). Here a batch is whatever the server has
right now (a ``no_wait`` pull of up to ``batch``); only when it has nothing do we wait, for
the first message to arrive (a lingering pull of one).

Every pull is read to its end before the next is sent, so messages never interleave. With
``AckPolicy.ALL`` acking a message acks all before it, so a lost delivery would be lost for
good: a gap in the consumer sequence raises, and the worker restarts from its checkpoint.
"""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

NO_MESSAGES = "404"
REQUEST_TIMEOUT = "408"
HEARTBEAT = "100"


class FeedBroken(Exception):
    """The delivery stream is not what we asked for; start over from the checkpoint."""


class PullFeed:
    def __init__(
        self, nc: NATS, stream: str, consumer: str, batch: int, idle_wait: float = 1.0
    ) -> None:
        self.nc = nc
        self.batch = batch
        self.idle_wait = idle_wait
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._last_consumer_seq = 0

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._subscription = await self.nc.subscribe(self._inbox)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def next_batch(self) -> list[Msg]:
        """What is available now; else the first message within ``idle_wait``; else []."""
        messages = await self._pull({"batch": self.batch, "no_wait": True})
        if messages:
            return messages
        expires_ns = int(self.idle_wait * 1_000_000_000)
        return await self._pull({"batch": 1, "expires": expires_ns})

    async def _pull(self, request: dict[str, object]) -> list[Msg]:
        if self._subscription is None:
            raise RuntimeError("feed not started")
        await self.nc.publish(self._next_subject, msgspec.json.encode(request), reply=self._inbox)
        wanted = int(request["batch"])  # type: ignore[call-overload]
        messages: list[Msg] = []
        # The server ends a pull by delivering `wanted` messages or a status; the client
        # deadline only guards against a server that went away mid-pull (a cluster node
        # killed under us), so it is short: a worker starting over costs little.
        deadline = self.idle_wait + 3.0
        while len(messages) < wanted:
            try:
                message = await self._subscription.next_msg(timeout=deadline)
            except TimeoutError as exc:
                raise FeedBroken("the pull was not answered in time") from exc
            status = (message.headers or {}).get("Status") if not message.data else None
            if status in (NO_MESSAGES, REQUEST_TIMEOUT):
                break
            if status == HEARTBEAT:
                continue
            if status is not None:
                description = (message.headers or {}).get("Description", "")
                raise FeedBroken(f"pull ended with status {status} {description}")
            self._check_order(message)
            messages.append(message)
        return messages

    def _check_order(self, message: Msg) -> None:
        consumer_seq = message.metadata.sequence.consumer
        if self._last_consumer_seq and consumer_seq != self._last_consumer_seq + 1:
            raise FeedBroken(
                f"delivery {consumer_seq} after {self._last_consumer_seq}: a message went missing"
            )
        self._last_consumer_seq = consumer_seq
