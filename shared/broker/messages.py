"""What a settle message is, written once: the queue transfers travel on, the actors that
consume it, and the transfer-id codec (ids in, ids out) every sender, consumer and reader of
dead letters uses; and the webhooks' queue, its actor and its message (one delivery id).

A settle message names the actor `settle_transfers` and carries one argument: a list of up to
`BATCH_MAX` transfer ids. Messages sent before batches existed name `settle_transfer` and
carry a single id; both are still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy

#: The queue the settle actors consume and every sender sends to.
TRANSFER_QUEUE = "transfers"

#: The queue webhook deliveries travel on: consumed by worker processes of their own, so that a
#: slow or failing receiver never holds a thread that settles transfers.
WEBHOOK_QUEUE = "webhooks"
#: The actor that makes one attempt of one webhook delivery (`worker.actors` declares it).
DELIVER_ACTOR = "deliver_webhook"
#: Every queue Settle's workers consume.
QUEUES = (TRANSFER_QUEUE, WEBHOOK_QUEUE)

#: The settle actors' names (`worker.actors` declares them; the middleware needs them first):
#: one id per message (as sent before batches), and a batch of ids per message.
SETTLE_ACTOR = "settle_transfer"
SETTLE_BATCH_ACTOR = "settle_transfers"
SETTLE_ACTORS = frozenset({SETTLE_ACTOR, SETTLE_BATCH_ACTOR})

#: Most transfer ids in one message, and in one settling transaction. Larger batches cost
#: fewer commits and messages but lock more accounts at once, so concurrent batches wait on
#: one another more (docs/decisions/batches-of-100.md).
BATCH_MAX = 100


def chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    """`ids` in consecutive lists of at most `size`."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def settle_messages(transfer_ids: Iterable[int], *, size: int = BATCH_MAX) -> list[Message[Any]]:
    """The messages that queue `transfer_ids` for settlement: ascending, at most `size` ids
    each."""
    return [
        Message(
            queue_name=TRANSFER_QUEUE,
            actor_name=SETTLE_BATCH_ACTOR,
            args=(chunk,),
            kwargs={},
            options={},
        )
        for chunk in chunks(sorted(transfer_ids), size)
    ]


def delivery_messages(delivery_ids: Iterable[int]) -> list[Message[Any]]:
    """The messages that queue one attempt of each of `delivery_ids` (one id a message: each
    is an HTTP request of its own)."""
    return [
        Message(
            queue_name=WEBHOOK_QUEUE,
            actor_name=DELIVER_ACTOR,
            args=(int(delivery_id),),
            kwargs={},
            options={},
        )
        for delivery_id in delivery_ids
    ]


def transfer_ids(message: Message[Any] | MessageProxy) -> list[int]:
    """The transfer ids a settle message carries (one id, or a list of them). Raises
    `ValueError` for a message that carries none (not a settle message)."""
    if not message.args:
        raise ValueError(f"message {message.message_id} has no arguments")
    first = message.args[0]
    try:
        if isinstance(first, list):
            return [int(tid) for tid in first]
        return [int(first)]
    except TypeError as exc:
        raise ValueError(f"message {message.message_id} carries no transfer ids: {exc}") from None


def decode(body: bytes | str) -> Message[Any]:
    """The message a broker holds as `body`. Raises dramatiq's `DecodeError`."""
    return Message.decode(body if isinstance(body, bytes) else body.encode())
