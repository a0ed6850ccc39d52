"""A pull consumer's messages, handed over as soon as the server has them.

nats-py's ``fetch(n, timeout)``, once it has had to wait, keeps collecting until it has
``n`` messages or the timeout passes, so under a steady trickle of events every batch waited
the whole timeout (0.5 s of write-to-visible lag). Here one pull of up to ``batch`` messages
stays open for up to ``idle_wait``, and each batch is what that pull has delivered so far:
a live event is handed over the moment it arrives, with no new pull per event (one
delivery and one ack per event, not five messages), and a backlog still comes in full
batches, since the worker keeps collecting while the server says more is pending.

With ``pace``, batches under a steady trickle are handed over at most once per ``pace``
seconds: a message that arrives sooner after the last batch waits for the others that come
until then, so that a projection applies one batch (a delivery's worth of Python, one
transaction) for many commits instead of one each, and the requests that produced them are
not each followed by that work on the same event loop (docs/performance.md, "Projections
paced"). A message after a quiet spell is handed over at once, and ``hurry`` (a reader
waiting for this projection's next commits) ends the wait.

One pull is open at a time, so messages never interleave. With ``AckPolicy.ALL`` acking a
message acks all before it, so a lost delivery would be lost for good: a gap in the
consumer sequence raises, and the worker restarts from its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentmem.jetstream import delivery

NO_MESSAGES = "404"
REQUEST_TIMEOUT = "408"
HEARTBEAT = "100"
# A pull with a byte bound ends with a 409 status: "Message Size Exceeds MaxBytes" when the
# next message would pass the bound (the pull ends early), "Batch Completed" after its last
# message (the pull already counted as ended).
PULL_ENDED = "409"
# One pull delivers at most this many bytes. A batch of 1,000 commits of a few hundred KB
# each is far beyond nats-py's 64 MiB pending limit of a subscription: past it the client
# drops messages and reports a slow consumer. The bound stays well above the largest message
# (the server's max_payload, 1 MB), so a pull always delivers at least one.
MAX_PULL_BYTES = 16 * 1024 * 1024


class FeedBroken(Exception):
    """The delivery stream is not what we asked for; start over from the checkpoint."""


class PullFeed:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        batch: int,
        idle_wait: float = 1.0,
        pace: float = 0.0,
        first_consumer_seq: int | None = None,
    ) -> None:
        self.nc = nc
        self.batch = batch
        self.idle_wait = idle_wait
        self.pace = pace
        self._handed_over = -pace  # the loop time of the last batch handed over
        self._hurried = False
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._subscription: Subscription | None = None
        # The consumer sequence of the first delivery, when known (a consumer just made:
        # 1); None: any (a durable consumer that delivered before).
        self._first = first_consumer_seq
        self._last_consumer_seq = 0
        self._arrived: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._open = 0  # messages the open pull may still deliver; 0: no pull is open
        self._interrupted = False

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._subscription = await self.nc.subscribe(self._inbox, cb=self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def interrupt(self) -> None:
        """A stop: the batch being collected ends now, with what has arrived, instead of
        when the open pull expires (up to ``idle_wait``)."""
        self._interrupted = True
        self._wake.set()

    def hurry(self) -> None:
        """Someone waits for what is arriving: the batch being collected is handed over
        now, not when ``pace`` is up."""
        self._hurried = True
        self._wake.set()

    async def _on_message(self, message: Msg) -> None:
        self._arrived.append(message)
        self._wake.set()

    async def next_batch(self) -> list[Msg]:
        """What the open pull has delivered, at most ``batch``: waiting for the first
        message (up to ``idle_wait``), then for more only while the server says more is
        pending. [] when the pull ended with nothing."""
        if self._subscription is None:
            raise RuntimeError("feed not started")
        messages: list[Msg] = []
        loop = asyncio.get_running_loop()
        while len(messages) < self.batch:
            if self._open == 0:
                if messages:
                    break
                await self._pull()
            if not self._arrived:
                more_pending = messages and delivery(messages[-1]).num_pending > 0
                if messages and not more_pending:
                    if not await self._paced(loop.time()):
                        break
                    continue
                await self._wait()
                if not self._arrived:  # interrupted
                    return messages
            message = self._arrived.popleft()
            status = (message.headers or {}).get("Status") if not message.data else None
            if status in (NO_MESSAGES, REQUEST_TIMEOUT):
                self._open = 0  # the pull expired
                if not messages:
                    return []
                continue
            if status == HEARTBEAT:
                continue
            description = (message.headers or {}).get("Description", "")
            if status == PULL_ENDED and "MaxBytes" in description:
                self._open = 0  # full by bytes: the next pull goes on from here
                continue
            if status == PULL_ENDED and "Batch Completed" in description:
                continue
            if status is not None:
                raise FeedBroken(f"pull ended with status {status} {description}")
            self._check_order(message)
            self._open -= 1
            messages.append(message)
        if messages:
            self._handed_over = loop.time()
        return messages

    async def _paced(self, now: float) -> bool:
        """Wait for more messages while the pace holds the batch back: True when one came."""
        remaining = self._handed_over + self.pace - now
        if remaining <= 0 or self._hurried or self._interrupted:
            self._hurried = False
            return False
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=remaining)
        return bool(self._arrived) and not self._hurried

    async def _pull(self) -> None:
        expires_ns = int(self.idle_wait * 1_000_000_000)
        request = msgspec.json.encode(
            {"batch": self.batch, "expires": expires_ns, "max_bytes": MAX_PULL_BYTES}
        )
        await self.nc.publish(self._next_subject, request, reply=self._inbox)
        self._open = self.batch

    async def _wait(self) -> None:
        # The server ends a pull by delivering `batch` messages or a status when it
        # expires; this deadline only guards against a server that went away mid-pull (a
        # cluster node killed under us), so it is short: a worker starting over costs little.
        self._wake.clear()
        if self._arrived or self._interrupted:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=self.idle_wait + 3.0)
        except TimeoutError as exc:
            raise FeedBroken("the pull was not answered in time") from exc

    def _check_order(self, message: Msg) -> None:
        consumer_seq = delivery(message).consumer_seq
        if not self._last_consumer_seq and self._first is not None and consumer_seq != self._first:
            raise FeedBroken(
                f"first delivery {consumer_seq}, not {self._first}: the consumer is not new"
            )
        if self._last_consumer_seq and consumer_seq != self._last_consumer_seq + 1:
            raise FeedBroken(
                f"delivery {consumer_seq} after {self._last_consumer_seq}: a message went missing"
            )
        self._last_consumer_seq = consumer_seq
