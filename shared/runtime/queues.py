"""How many messages wait in the broker, and its dead letters, on either broker: the one
implementation behind `/metrics`, `settle status`, the dashboard and
`worker.queues.BrokerOperations` (which every process with a dramatiq broker uses; see
`BrokerQueues` for what web is handed).

RabbitMQ, from a passive declare of `q`, `q.DQ` and `q.XQ` on a short connection: each
answers the messages ready in it. AMQP does not tell how many a consumer holds
unacknowledged, so `in_flight` is not reported there, and `delayed` counts only the delayed
messages no worker has fetched yet (a worker holds a retry until its time comes). Raises
pika errors and `OSError`.

Redis, read from dramatiq's layout (dramatiq 2.2's `brokers/redis/dispatch.lua`; pinned by
tests/integration/test_metrics.py, which counts real messages through it). For a queue `q`
in namespace `ns`: `ns:q` is the list of message ids not yet fetched,
`ns:q.msgs` the hash of every message not yet acknowledged (fetched ones included),
`ns:q.DQ.msgs` the same for delayed messages (retries waiting for their backoff), and the
sorted set `ns:q.XQ` the dead letters (their bodies in the hash `ns:q.XQ.msgs`). Counting
is four O(1) commands in one round trip. The Redis functions raise redis errors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.errors import DecodeError

from shared.runtime.brokers import rabbitmq_parameters
from shared.runtime.settings import Settings

log = logging.getLogger(__name__)

#: The states counted, in the order `settle status` prints them.
STATES = ("ready", "in_flight", "delayed", "dead")

#: A queue's name -> {state: messages} (a state the broker cannot tell is left out).
QueueCounts = Callable[[str], dict[str, int]]


class BrokerQueues(Protocol):
    """What web asks of the broker's queues (`worker.queues.BrokerOperations` is one): their
    depths, and dropping the dead letters of transfers sent again or ended."""

    def depths(self, queue: str) -> dict[str, int]: ...

    def drop_dead_letters_of(self, transfer_ids: Iterable[int], queue: str) -> None: ...


def queue_counts(client: Any, namespace: str, queue: str) -> dict[str, int]:
    """{state: messages} for `queue`: ready (waiting for a worker), in_flight (fetched by a
    worker, not yet acknowledged), delayed (waiting for their retry time) and dead."""
    key = f"{namespace}:{queue}"
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(key)
        pipe.hlen(f"{key}.msgs")
        pipe.hlen(f"{key}.DQ.msgs")
        pipe.zcard(f"{key}.XQ")
        ready, unacked, delayed, dead = (int(n) for n in pipe.execute())
    return {
        "ready": ready,
        "in_flight": max(0, unacked - ready),
        "delayed": delayed,
        "dead": dead,
    }


#: Dead letters read per HSCAN round trip when looking for a few transfers' messages.
SCAN_BATCH = 500


def dead_letters(client: Any, namespace: str, queue: str) -> dict[int, list[str]]:
    """Transfer id -> the broker ids of its messages in `queue`'s dead-letter queue (the hash
    `ns:q.XQ.msgs` holds their bodies; a settle message's first argument is a transfer id or a
    list of them).
    Reads the whole hash: one command, as long as the dead-letter queue."""
    found: dict[int, list[str]] = {}
    for redis_id, data in client.hgetall(f"{namespace}:{queue}.XQ.msgs").items():
        message = Message.decode(data if isinstance(data, bytes) else data.encode())
        rid = redis_id.decode() if isinstance(redis_id, bytes) else str(redis_id)
        for transfer_id in message_transfer_ids(message.args):
            found.setdefault(transfer_id, []).append(rid)
    return found


def _scan_dead(client: Any, namespace: str, queue: str) -> Iterator[tuple[str, list[int]]]:
    """(broker id, transfer ids) of each dead letter of `queue`, read by HSCAN in batches of
    about SCAN_BATCH (never the whole hash in one command). A body that is not a settle
    message (undecodable, or arguments that carry no transfer id) is skipped: it is not one
    of ours to drop."""
    for redis_id, data in client.hscan_iter(f"{namespace}:{queue}.XQ.msgs", count=SCAN_BATCH):
        rid = redis_id.decode() if isinstance(redis_id, bytes) else str(redis_id)
        try:
            message = Message.decode(data if isinstance(data, bytes) else data.encode())
            ids = message_transfer_ids(message.args)
        except (DecodeError, IndexError, TypeError, ValueError):
            log.warning("dead letter %s in %s is not a settle message; left as it is", rid, queue)
            continue
        yield rid, ids


def message_transfer_ids(args: Any) -> list[int]:
    """The transfer ids a settle message's arguments carry: one id, or a list of them."""
    first = args[0]
    if isinstance(first, list):
        return [int(tid) for tid in first]
    return [int(first)]


def discard_dead_letters(client: Any, namespace: str, queue: str, redis_ids: Iterable[str]) -> None:
    """Drop messages from `queue`'s dead-letter queue: its sorted set of ids and its hash of
    bodies, in one transaction."""
    ids = list(redis_ids)
    if not ids:
        return
    key = f"{namespace}:{queue}.XQ"
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(key, *ids)
        pipe.hdel(f"{key}.msgs", *ids)
        pipe.execute()


def drop_dead_letters_of(
    client: Any, namespace: str, queue: str, transfer_ids: Iterable[int]
) -> None:
    """Drop the dead-letter messages of the given transfers (sent again, or ended). A message
    carrying several transfers is kept while it carries any transfer not given; one that is
    not a settle message is kept. Scans the hash in batches (HSCAN), not in one command."""
    wanted = set(transfer_ids)
    if not wanted:
        return
    dropped = [
        rid for rid, tids in _scan_dead(client, namespace, queue) if tids and set(tids) <= wanted
    ]
    discard_dead_letters(client, namespace, queue, dropped)


def rabbitmq_queue_counts(parameters: Any, queue: str) -> dict[str, int]:
    """{state: messages} for `queue` on RabbitMQ (`parameters`: pika's connection parameters):
    ready, delayed (not yet fetched) and dead. A queue never declared counts zero."""
    counts: dict[str, int] = {}
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        for state, name in (("ready", queue), ("delayed", f"{queue}.DQ"), ("dead", f"{queue}.XQ")):
            if not channel.is_open:  # a 404 closes the channel
                channel = connection.channel()
            try:
                declared = channel.queue_declare(queue=name, passive=True)
                counts[state] = int(declared.method.message_count)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                counts[state] = 0
    finally:
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
    return counts


def broker_queue_counts(settings: Settings) -> tuple[QueueCounts, Callable[[], None]]:
    """(counts, close): `QueueCounts` on the broker `settings` names, for a process that has
    no dramatiq broker of its own (`settle status`); `close` releases its client."""
    if settings.broker == "rabbitmq":
        parameters = rabbitmq_parameters(settings.message_broker_url)
        return (lambda queue: rabbitmq_queue_counts(parameters, queue)), (lambda: None)
    import redis

    client = redis.Redis.from_url(
        settings.message_broker_url, socket_connect_timeout=5, socket_timeout=5
    )
    return (lambda queue: queue_counts(client, settings.broker_namespace, queue)), client.close
