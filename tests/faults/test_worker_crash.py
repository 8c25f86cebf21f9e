"""kill -9 of a dramatiq worker process, and of the whole dramatiq master, while thousands of
transfers are in flight: every accepted transfer still ends settled or failed, none twice.

No sweeper runs here, and every wait is shorter than dramatiq's default heartbeat timeout
(60 s): on Redis, the messages a killed worker held come back through the broker's heartbeat
and maintenance (worker.middleware); on RabbitMQ, when the killed process's connection
closes. Each test runs on both brokers."""

from __future__ import annotations

import os
import signal

import psycopg
import pytest

from shared.config import Settings
from tests.e2e.processes import wait_until
from tests.faults.conftest import Faults, FaultsFactory
from tests.faults.load import Load, accounts_with_money, random_plan
from tests.faults.processes import alive, dramatiq_tree, worker_waiting_for_a_lock
from tests.helpers import fund, make_account, submit
from tests.pgbouncer import PgBouncer, pooled_env
from tests.scratch import settle
from worker.actors import create_broker, settle_transfer

pytestmark = pytest.mark.faults

TRANSFERS = 2_000
#: Shorter than dramatiq's default heartbeat timeout, so only our recovery can meet it.
RECOVERY_DEADLINE = 45.0


@pytest.fixture
def faults(fault_database: str, broker_url: str, make_faults: FaultsFactory) -> Faults:
    """On each broker in turn (tests/conftest.py's `broker_url`)."""
    return make_faults(fault_database, broker_url)


def run_with_a_kill(faults: Faults, kill: str) -> tuple[Load, Load, list[int]]:
    """Accept 1,000 transfers with no worker running, start the worker, and once 300 are
    settled kill (`worker`: one worker process; `master`: the dramatiq master) while another
    1,000 arrive. Returns both loads and the pids of the worker processes before the kill."""
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 40, 50_000)
    plan = random_plan(accounts, TRANSFERS, seed=len(kill))
    faults.start_web()
    first = Load(faults.port, plan[:1000], api_key=faults.api_key).start()
    first.join(timeout=60)
    assert first.complete, first.statuses
    funded = faults.finished()

    worker = faults.start_worker()
    second = Load(faults.port, plan[1000:], api_key=faults.api_key, threads=8).start()
    wait_until(lambda: faults.finished() - funded >= 300, timeout=30, what="300 transfers settle")
    master, workers = dramatiq_tree(worker.pid)
    faults.strays += workers
    os.kill(workers[0] if kill == "worker" else master, signal.SIGKILL)

    worker.wait_for_log("dramatiq exited (", timeout=30)
    worker.wait_for_log("Worker process is ready for action.", count=4, timeout=60)
    second.join(timeout=90)
    assert second.complete, second.statuses
    return first, second, workers


def check_every_transfer_ended_once(faults: Faults, first: Load, second: Load) -> None:
    ids = first.ids() + second.ids()
    assert len(set(ids)) == TRANSFERS
    faults.wait_until_finished(ids, timeout=RECOVERY_DEADLINE)
    outcomes = faults.outcomes(ids)  # also: two entries per settled transfer, none otherwise
    assert sum(outcomes.values()) == TRANSFERS
    assert outcomes["settled"] > TRANSFERS // 2
    assert first.unexpected == second.unexpected == []
    faults.audit()


def test_killing_a_worker_process_mid_load_loses_no_transfer_and_settles_none_twice(
    faults: Faults,
) -> None:
    first, second, _ = run_with_a_kill(faults, "worker")

    check_every_transfer_ended_once(faults, first, second)
    assert [p.stop(group=False) for p in faults.processes] == [0, 0]


def test_killing_a_worker_process_behind_pgbouncer_loses_no_transfer_and_settles_none_twice(
    fault_database: str, settings: Settings, make_faults: FaultsFactory, pgbouncer: PgBouncer
) -> None:
    # The same kill, with every connection of the service going through PgBouncer in
    # transaction mode: the dead worker's clients drop mid-transaction, its lease expires.
    env = pooled_env(pgbouncer, fault_database)
    faults = make_faults(env.pop("DATABASE_URL"), settings.message_broker_url, **env)
    done = settle("migrate", env=faults.env)
    assert done.returncode == 0, done.stdout
    pgbouncer.reconnect(fault_database)

    first, second, _ = run_with_a_kill(faults, "worker")

    check_every_transfer_ended_once(faults, first, second)
    assert [p.stop(group=False) for p in faults.processes] == [0, 0]


def test_killing_the_dramatiq_master_mid_load_loses_no_transfer_and_leaves_no_orphan(
    faults: Faults,
) -> None:
    first, second, orphans = run_with_a_kill(faults, "master")

    # Its worker processes outlive it; each notices, finishes what it holds and exits.
    wait_until(
        lambda: not [pid for pid in orphans if alive(pid)],
        timeout=30,
        what=f"the orphaned worker processes {orphans} exit on their own",
    )
    check_every_transfer_ended_once(faults, first, second)
    assert [p.stop(group=False) for p in faults.processes] == [0, 0]


def test_transfers_in_flight_on_a_killed_worker_are_delivered_again_without_the_sweeper(
    fault_database: str,
    settings: Settings,
    broker_url: str,
    make_faults: FaultsFactory,
) -> None:
    # One worker thread, and no Postgres timeout that would end its wait for a lock: the
    # first message is being processed and the second one is prefetched when the kill comes.
    faults = make_faults(
        fault_database,
        broker_url,
        WORKER_PROCESSES="1",
        WORKER_THREADS="1",
        LOCK_TIMEOUT_MS="120000",
        STATEMENT_TIMEOUT_MS="120000",
    )
    sender, _ = create_broker(
        settings.with_(
            broker_url=broker_url,
            broker_namespace=faults.env["BROKER_NAMESPACE"],
            database_url=faults.database_url,
        )
    )
    sender.declare_actor(settle_transfer)
    worker = faults.start_worker()
    with faults.connect() as conn, psycopg.connect(faults.database_url) as holder:
        treasury = make_account(conn, treasury=True)
        payer, payee = make_account(conn), make_account(conn)
        fund(conn, treasury, payer, 1_000)
        transfers = [submit(conn, payer, payee, 100 + i) for i in range(2)]
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
        for transfer in transfers:
            sender.enqueue(settle_transfer.message(transfer))
        worker_pid, backend = wait_until(
            lambda: worker_waiting_for_a_lock(conn),
            timeout=30,
            what="the worker waits for the payer's lock",
        )
        _, workers = dramatiq_tree(worker.pid)
        assert workers == [worker_pid]

        os.kill(worker_pid, signal.SIGKILL)
        # The dead worker's backend would finish the statement on its own once the lock is
        # free; end it, so that both transfers are truly lost with the worker.
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        holder.rollback()

    sender.close()
    faults.wait_until_finished(transfers, timeout=RECOVERY_DEADLINE)
    assert faults.outcomes(transfers) == {"settled": 2}
    faults.audit()
