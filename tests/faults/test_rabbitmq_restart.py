"""RabbitMQ failing mid-load, on a vhost of the test's own (the machine's RabbitMQ is shared,
so the node itself is never restarted): first every connection to the vhost is closed, as
a broker restart does to its clients (durable queues keep their messages, unacknowledged
ones are delivered again); then the vhost is deleted, with every message it held, and
created again a little later, as a broker that lost its data and came back. Web answers
503 `broker_unavailable` while the vhost is gone, and the sweeper re-drives what was lost;
every transfer still ends settled or failed exactly once."""

from __future__ import annotations

import pytest

from shared.testing.scratch import add_vhost, rabbitmqctl, vhost_of
from tests.e2e.processes import wait_until
from tests.faults.conftest import FaultsFactory
from tests.faults.load import Load, accounts_with_money, random_plan

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
def test_rabbitmq_connections_cut_then_its_data_lost_mid_load_loses_nothing_and_doubles_nothing(
    broker_url: str, fault_database: str, make_faults: FaultsFactory
) -> None:
    vhost, user = vhost_of(broker_url)
    faults = make_faults(fault_database, broker_url, SWEEPER_GRACE_SECONDS="2")
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 30, 50_000)
    web = faults.start_web()
    worker = faults.start_worker()
    sweeper = faults.start_sweeper()
    plan = random_plan(accounts, 1_500, seed=9)
    # One load per phase, each started once its fault is in place: rabbitmqctl takes seconds
    # on a busy machine, and a load started before could be over by then.
    before = Load(faults.port, plan[:500], api_key=faults.api_key, threads=8).start()
    wait_until(lambda: before.done >= 300, timeout=60, what="300 transfers are accepted")

    # A restart, as the clients see it: every connection cut, the queues kept.
    rabbitmqctl("close_all_connections", "--vhost", vhost, "settle fault test: restart")
    finished = faults.finished()
    cut = Load(faults.port, plan[500:1_000], api_key=faults.api_key, threads=8).start()
    wait_until(
        lambda: cut.done >= 200 and faults.finished() >= finished + 200,
        timeout=60,
        what="web and workers carry on after their connections were cut",
    )

    # Its data lost: the vhost and every message in it gone, connections refused.
    rabbitmqctl("delete_vhost", vhost)
    try:
        lost = Load(faults.port, plan[1_000:], api_key=faults.api_key, threads=8).start()
        wait_until(
            lambda: lost.statuses[503] >= 20,
            timeout=30,
            what="POST /transfers answers 503 while the vhost is gone",
        )
    finally:
        add_vhost(vhost, user)

    loads = (before, cut, lost)
    for load in loads:
        load.join(timeout=120)
        assert load.complete, load.statuses
        assert load.unexpected == []
    ids = [tid for load in loads for tid in load.ids()]
    faults.wait_until_finished(ids, timeout=90)
    outcomes = faults.outcomes(ids)  # also: two entries per settled transfer, none otherwise
    assert sum(outcomes.values()) == len(ids) == 1_500
    faults.audit()
    # The workers lost their connections and came back; some transfers were recorded with no
    # message sent, and queued ones were lost with the vhost: the sweeper delivered those.
    assert worker.log_count("Consumer encountered a connection error") > 0
    assert web.log_count("not queued: the message broker is unavailable") > 0
    assert sweeper.log_count("stale pending transfer(s)") > 0
    assert [p.stop(group=False) for p in faults.processes] == [0, 0, 0]
