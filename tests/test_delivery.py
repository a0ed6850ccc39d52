"""jetstream.delivery: a pulled message's sequences read from its ack subject, as nats-py's
own ``Msg.metadata`` reads them (pure parsing; no server)."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from agentmem.jetstream import Delivery, delivery

ACK_SUBJECTS = [
    # <stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
    "$JS.ACK.AGENTMEM.proj-memories.1.123456.98765.1733500000000000000.512",
    # with <domain>.<account hash> first, and a random token last
    "$JS.ACK._.AHASH.AGENTMEM_IN.ingest-3.2.77.70.1733500000000000000.0.XyZ",
    "$JS.ACK.hub.AHASH.AGENTMEM.proj-users.1.5.4.1733500000000000000.9",
]


def message(reply: str) -> Msg:
    return Msg(_client=None, subject="agentmem.evt.x", reply=reply)  # type: ignore[arg-type]


@pytest.mark.parametrize("reply", ACK_SUBJECTS)
def test_as_nats_py_reads_it(reply: str) -> None:
    meta = message(reply).metadata
    assert delivery(message(reply)) == Delivery(
        meta.sequence.stream, meta.sequence.consumer, meta.num_pending
    )


def test_a_message_that_is_not_a_jetstream_delivery_is_refused_as_nats_py_does() -> None:
    with pytest.raises(NotJSMessageError):
        delivery(message("_INBOX.abc.def"))
    with pytest.raises(NotJSMessageError):
        delivery(message(""))
