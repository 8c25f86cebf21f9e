"""Sending transfer ids from a process whose threads each hand over one id (web): the ids
committed at about the same time go out in one message (`GroupingSender`), and each caller
still learns whether its own id was queued.

How long the first of a group waits for others to join: by default not at all
(`SEND_WINDOW`). Ids that arrive while a message is being sent join the next one anyway,
which groups them as the rate grows; a timed wait cost more than it grouped
(docs/decisions/no-send-window.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from shared.broker.base import SettleBroker
from shared.broker.messages import BATCH_MAX
from shared.errors import BrokerUnavailable

#: Seconds the first of a web process's concurrent sends waits for others to join its
#: message (see the module docstring).
SEND_WINDOW = 0.0


class _Group:
    __slots__ = ("ids", "full", "done", "error")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.full = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupingSender:
    """Queues transfer ids for settlement, grouping those that this process's threads hand
    over at about the same time into one message; each caller still waits for the send of
    its own id and gets its error (`BrokerUnavailable`), so a web request answers 202 only
    once its transfer is queued.

    No thread of its own: the first caller of a group leads it. It waits up to `window`
    seconds (less when the group reaches `max_ids`; by default not at all), then for any
    send still in flight, then sends the group; ids arriving meanwhile form the next group.
    So a quiet process sends each id at once and a busy one sends fewer, larger messages.
    """

    def __init__(
        self,
        send: Callable[[list[int]], object],
        *,
        window: float = SEND_WINDOW,
        max_ids: int = BATCH_MAX,
    ) -> None:
        self._send = send
        self._window = window
        self._max_ids = max_ids
        self._lock = threading.Lock()  # guards `_open`
        self._sending = threading.Lock()  # one send at a time: the next group fills meanwhile
        self._open: _Group | None = None

    def __call__(self, transfer_id: int) -> None:
        with self._lock:
            group = self._open
            leader = group is None
            if group is None:
                group = self._open = _Group()
            group.ids.append(transfer_id)
            if len(group.ids) >= self._max_ids:
                self._open = None
                group.full.set()
        if leader:
            self._lead(group)
        else:
            group.done.wait()
        if group.error is not None:
            if isinstance(group.error, BrokerUnavailable) or leader:
                raise group.error
            raise BrokerUnavailable(f"the message could not be sent: {group.error}")

    def _lead(self, group: _Group) -> None:
        if self._window > 0:
            group.full.wait(self._window)
        with self._sending:
            with self._lock:
                if self._open is group:
                    self._open = None
            try:
                self._send(group.ids)
            except BaseException as exc:
                group.error = exc
            finally:
                group.done.set()


def sender(broker: SettleBroker) -> Callable[[int], None]:
    """A function that queues a transfer id on `broker` for settlement, grouped with the ids
    other threads send at the same time (see `GroupingSender`). It raises
    `BrokerUnavailable` when the broker cannot take the message (Redis or RabbitMQ
    down, too slow, or refusing it)."""
    return GroupingSender(broker.send_batches)
