"""A message delivered twice, or again after its transfer settled or failed, through the
real `settle worker` processes: no effect. (tests/integration/test_settle_actor.py shows the
same for one message on an in-process worker; here it is hundreds at once, racing.) On
each broker."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import psycopg
import pytest

from shared.config import Settings
from tests.faults.conftest import Faults, FaultsFactory
from tests.faults.load import accounts_with_money, random_plan
from tests.helpers import join_queue, submit
from worker.actors import create_broker, settle_transfer

pytestmark = pytest.mark.faults


@pytest.fixture
def faults(fault_database: str, broker_url: str, make_faults: FaultsFactory) -> Faults:
    """On each broker in turn (tests/conftest.py's `broker_url`)."""
    return make_faults(fault_database, broker_url)


@pytest.fixture
def sender(faults: Faults, settings: Settings) -> Iterator[dramatiq.Broker]:
    """A broker on the service's namespace or vhost, to send messages from the test."""
    built, _ = create_broker(
        settings.with_(
            broker_url=faults.env["BROKER_URL"],
            broker_namespace=faults.env["BROKER_NAMESPACE"],
            database_url=faults.database_url,
        )
    )
    built.declare_actor(settle_transfer)
    yield built
    built.close()


def ledger_state(conn: psycopg.Connection) -> tuple[list[tuple[object, ...]], ...]:
    """Every row that settling could change."""
    return (
        conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall(),
        conn.execute(
            "SELECT id, transfer_id, account_id, amount FROM entries ORDER BY id"
        ).fetchall(),
        conn.execute(
            "SELECT id, status, failure_code, attempts, settled_at FROM transfers ORDER BY id"
        ).fetchall(),
    )


def test_messages_sent_twice_and_again_after_the_outcome_change_nothing(
    faults: Faults, sender: dramatiq.Broker
) -> None:
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 20, 20_000)
        transfers = [submit(conn, *t) for t in random_plan(accounts, 400, seed=11)]
    faults.start_worker()

    for transfer in transfers * 2:  # every message twice, the copies racing each other
        sender.enqueue(settle_transfer.message(transfer))
    faults.wait_until_finished(transfers, timeout=60)
    join_queue(sender, timeout=60)
    with faults.connect() as conn:
        before = ledger_state(conn)

    for transfer in transfers * 2:  # and twice more once each has its outcome
        sender.enqueue(settle_transfer.message(transfer))
    join_queue(sender, timeout=60)

    with faults.connect() as conn:
        assert ledger_state(conn) == before
    outcomes = faults.outcomes(transfers)
    assert sum(outcomes.values()) == 400
    assert outcomes["settled"] > 200
    with faults.connect() as conn:
        attempts = conn.execute(
            "SELECT DISTINCT attempts FROM transfers WHERE id = ANY(%s)", (transfers,)
        ).fetchall()
    assert attempts == [(1,)]  # each settled or failed by exactly one delivery
    faults.audit()
    assert [p.stop(group=False) for p in faults.processes] == [0]
