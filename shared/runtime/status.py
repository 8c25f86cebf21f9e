"""`settle status`: the operator's overview in a terminal, and whether it needs attention.

`gather` reads the broker's queues, transfers by status, the oldest pending transfer, the
live leases (which processes are alive, and the connections granted them) and the
connections each role holds in pg_stat_activity, against the plan the settings give.
Something needs attention when a transfer is dead-lettered, a transfer is being
retried (a failed attempt: whatever failed it may fail the next ones too), a transfer has been
pending longer than the threshold, or a role holds more connections than its plan. It raises
driver errors and `BrokerUnavailable`; the command turns them into one line and exit 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shared.broker.base import STATES, QueueCounts
from shared.broker.messages import TRANSFER_QUEUE, WEBHOOK_QUEUE
from shared.config import Settings
from shared.db.activity import ROLES, connections_by_role
from shared.db.budget import BudgetExceeded, Capacity, Plan, capacity_on, make_plan
from shared.ledger import dead_letters, vitals
from shared.text_table import text_table

QUEUES = (TRANSFER_QUEUE, WEBHOOK_QUEUE)


@dataclass
class Status:
    """What `settle status` shows; `attention` holds one line per problem."""

    queues: dict[str, dict[str, int]]
    transfers: vitals.TransferCounts
    oldest_pending: float
    retrying: vitals.Retrying
    leases: vitals.LeaseSummary
    connections: dict[str, int]  # role -> connections in pg_stat_activity
    capacity: Capacity
    plan: Plan | None
    pending_threshold: float
    attention: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for queue, counts in self.queues.items():
            # A state the broker cannot tell (RabbitMQ: in flight) is left out.
            told = ", ".join(
                f"{counts[state]} {state.replace('_', ' ')}" for state in STATES if state in counts
            )
            out.append(f"queue {queue} (messages): {told}")
        t = self.transfers.by_status
        estimate = "" if self.transfers.exact else " (settled and failed estimated)"
        out.append(
            f"transfers: {t.get('pending', 0)} pending ({self.transfers.dead_lettered}"
            f" dead-lettered), {t.get('settled', 0)} settled, {t.get('failed', 0)} failed"
            + estimate
        )
        out.append(
            f"oldest pending: {self.oldest_pending:.0f}s (threshold {self.pending_threshold:g}s)"
        )
        # The transfers' dead letters: a delivery that fails is retried by Postgres instead.
        dead = [c["dead"] for q, c in self.queues.items() if q == TRANSFER_QUEUE and "dead" in c]
        out.append(dead_letters.count_line(self.transfers.dead_lettered, sum(dead)))
        out.append(f"being retried: {self.retrying_text()}")
        # An event watch is a connection of a web process, not a process of its own.
        alive = ", ".join(
            f"{self.leases.processes.get(role, 0)} {role}" for role in ROLES if role != "events"
        )
        out.append(f"processes alive (live leases): {alive}")
        header = ("connections", "plan", "leased", "in use")
        rows = [header]
        for role in ROLES:
            planned = getattr(self.plan, role).total if self.plan else None
            rows.append(
                (
                    role,
                    "-" if planned is None else str(planned),
                    str(self.leases.granted.get(role, 0)),
                    str(self.connections.get(role, 0)),
                )
            )
        rows.append(
            (
                "total",
                str(self.plan.total) if self.plan else "-",
                str(self.leases.leased),
                str(sum(self.connections.get(role, 0) for role in ROLES)),
            )
        )
        out += text_table(rows, right=range(1, len(header)))
        out.append(f"budget: {self.capacity.available} ({self.capacity.source})")
        out += [f"ATTENTION: {line}" for line in self.attention]
        return out

    def retrying_text(self) -> str:
        r = self.retrying
        if not r.count:
            return "none"
        return f"{r.count} transfer(s), the oldest accepted {r.oldest_seconds:.0f}s ago"


def gather(
    settings: Settings,
    conn: psycopg.Connection,
    queue_counts: QueueCounts,
    *,
    pending_threshold: float | None = None,
) -> Status:
    """Read everything `settle status` shows and decide what needs attention; a transfer
    pending longer than `pending_threshold` does (None: the dashboard's threshold,
    DASHBOARD_PENDING_THRESHOLD_SECONDS)."""
    if pending_threshold is None:
        pending_threshold = settings.dashboard_pending_threshold_seconds
    queues = {q: queue_counts(q) for q in QUEUES}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        counts = vitals.transfer_counts(conn)
        oldest = vitals.oldest_pending_age(conn)
        retrying = vitals.retrying(conn)
        leases = vitals.leases(conn, settings.lease_ttl_seconds)
        database = str(conninfo_to_dict(settings.database_url).get("dbname") or "")
        if not database:
            row = conn.execute("SELECT current_database()").fetchone()
            database = str(row[0]) if row else ""
        connections = dict(connections_by_role(conn, database))
        cap = capacity_on(conn, settings)
    status = Status(
        queues=queues,
        transfers=counts,
        oldest_pending=oldest,
        retrying=retrying,
        leases=leases,
        connections=connections,
        capacity=cap,
        plan=None,
        pending_threshold=pending_threshold,
    )
    try:
        status.plan = make_plan(settings, cap)
    except BudgetExceeded as exc:
        status.attention.append(f"the configured plan does not fit: {exc.message}")
    # Dead-lettered transfers need an operator; a dead-letter message whose transfers do not
    # any more is dropped by the next retry, cancel or sweep.
    if counts.dead_lettered:
        status.attention.append(
            f"{counts.dead_lettered} dead-lettered transfer(s): `settle dead-letters list`,"
            " then `retry` or `cancel`"
        )
    if retrying.count:
        status.attention.append(
            f"{retrying.count} transfer(s) being retried, the oldest accepted"
            f" {retrying.oldest_seconds:.0f}s ago (the worker log says why their attempts"
            " fail; those whose retries run out are dead-lettered)"
        )
    if oldest > pending_threshold:
        status.attention.append(
            f"a transfer has been pending for {oldest:.0f}s (more than {pending_threshold:g}s)"
        )
    if status.plan is not None:
        for role in ROLES:
            planned = getattr(status.plan, role).total
            held = max(connections.get(role, 0), leases.granted.get(role, 0))
            if held > planned:
                status.attention.append(
                    f"{role} holds {held} connection(s), more than its plan of {planned}"
                )
    return status
