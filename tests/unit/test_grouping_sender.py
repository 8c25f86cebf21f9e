"""A web process's sender groups the ids its threads hand over together into one message, and
every caller still learns whether its own id was queued."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.broker.sending import GroupingSender
from shared.errors import BrokerUnavailable
from tests.helpers import wait_until

#: Only an upper bound: a group is sent as soon as it is full.
LONG = 60.0


class FakeBroker:
    """Records each send; fails every send when `down`."""

    def __init__(self, *, down: bool = False) -> None:
        self.sent: list[list[int]] = []
        self.down = down
        self._lock = threading.Lock()

    def send(self, ids: list[int]) -> None:
        if self.down:
            raise BrokerUnavailable("the message broker is unavailable: refused")
        with self._lock:
            self.sent.append(sorted(ids))


def test_ids_handed_over_together_go_out_in_one_message() -> None:
    broker = FakeBroker()
    send = GroupingSender(broker.send, window=LONG, max_ids=5)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(send, [11, 12, 13, 14, 15]))

    assert results == [None] * 5  # every caller returned: its id is queued
    assert broker.sent == [[11, 12, 13, 14, 15]]


def test_a_full_group_goes_out_and_the_next_ids_start_another() -> None:
    broker = FakeBroker()
    send = GroupingSender(broker.send, window=LONG, max_ids=3)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(send, range(1, 7)))

    assert sorted(len(ids) for ids in broker.sent) == [3, 3]
    assert sorted(tid for ids in broker.sent for tid in ids) == [1, 2, 3, 4, 5, 6]


def test_a_lone_id_is_sent_without_waiting_for_company() -> None:
    broker = FakeBroker()
    GroupingSender(broker.send, window=0, max_ids=100)(42)
    assert broker.sent == [[42]]


def test_every_caller_of_a_group_the_broker_refused_gets_broker_unavailable() -> None:
    broker = FakeBroker(down=True)
    send = GroupingSender(broker.send, window=LONG, max_ids=4)

    def outcome(transfer_id: int) -> str:
        try:
            send(transfer_id)
        except BrokerUnavailable as exc:
            return exc.code
        return "queued"

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(outcome, [1, 2, 3, 4])) == ["broker_unavailable"] * 4


def test_after_a_refused_send_the_next_group_is_sent_afresh() -> None:
    broker = FakeBroker(down=True)
    send = GroupingSender(broker.send, window=0, max_ids=4)
    with pytest.raises(BrokerUnavailable):
        send(1)
    broker.down = False
    send(1)
    assert broker.sent == [[1]]


def test_without_a_window_ids_handed_over_during_a_send_go_out_together_next() -> None:
    """The default: no wait for company; ids that arrive while a send is in flight form the
    next message, so a busy process still sends fewer, larger messages."""
    release = threading.Event()
    first_sending = threading.Event()
    broker = FakeBroker()

    def slow_send(ids: list[int]) -> None:
        if not first_sending.is_set():
            first_sending.set()
            assert release.wait(10)
        broker.send(ids)

    send = GroupingSender(slow_send, window=0, max_ids=100)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(send, 1)
        assert first_sending.wait(10)
        rest = [pool.submit(send, tid) for tid in (2, 3, 4)]
        wait_until(  # all three wait in the next group
            lambda: send._open is not None and len(send._open.ids) == 3,
            timeout=10,
            what="the three later ids wait in the next group",
            interval=0.001,
        )
        release.set()
        assert [f.result(10) for f in (first, *rest)] == [None] * 4
    assert broker.sent == [[1], [2, 3, 4]]
