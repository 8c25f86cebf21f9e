"""The transfer actors: a message carries transfer ids, and one transaction settles a batch.

Dramatiq's own cost per message (fetch, middleware, ack: several Redis round trips) is of
the order of the SQL that settles a transfer, so messages carry up to `BATCH_MAX` ids and
`settle_transfers` settles them in one transaction. Nothing is declared at import:
`declare(settings)` builds the broker (`create_broker`: `shared.broker` with the worker's
middleware) and declares the actors on it; `install` also makes it dramatiq's global broker,
for dramatiq's CLI. `web` uses only `declare` of this module; it sends through the broker
`declare` returns (`shared.broker.sending`).

The middleware list is explicit. TimeLimit is left out on purpose: it injects an exception
into the actor's thread, and one landing during COMMIT would leave the outcome unknown;
Postgres timeouts (statement, lock, idle-in-transaction) bound the transfer work instead
(docs/decisions/no-timelimit.md). The middleware is the same on both brokers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import AgeLimit, Retries

from shared.broker import factory
from shared.broker.base import SettleBroker
from shared.broker.messages import (
    BATCH_MAX,
    DELIVER_ACTOR,
    SETTLE_ACTOR,
    SETTLE_ACTORS,
    SETTLE_BATCH_ACTOR,
    TRANSFER_QUEUE,
    WEBHOOK_QUEUE,
    chunks,
)
from shared.config import Settings
from shared.db.pool import TRANSIENT, connection
from shared.errors import first_line
from shared.ledger import operations as ledger
from shared.webhooks import attempts
from worker.metrics import SETTLE_LATENCY, TRANSFER_RETRIES, Telemetry, count_finished
from worker.middleware import (
    DeadLetterMarks,
    Heartbeat,
    RetriesExhausted,
    RetryBudget,
    current_budget,
    is_transient,
)
from worker.pool import LendConnections, current_pool

log = logging.getLogger(__name__)


#: The actors of the broker `install` made dramatiq's global.
settle_transfers: dramatiq.Actor[[list[int]], None]
settle_transfer: dramatiq.Actor[[int], None]
deliver_webhook: dramatiq.Actor[[int], None]


def create_broker(
    settings: Settings, *, role: str = "worker"
) -> tuple[SettleBroker, LendConnections]:
    """The broker `settings.message_broker_url` names (Redis, or RabbitMQ for `amqp://`)
    with retries for transient errors only, within the retry budget Postgres keeps per
    transfer, the middleware that owns each worker process's pool (sized by `role`'s share
    of the budget: "worker" settles, "webhooks" delivers), the heartbeat, and the dead-letter
    mark; and that pool's middleware. Connects lazily."""
    budget = RetryBudget(
        ledger.RetryPolicy(
            max_retries=settings.transfer_max_retries,
            min_backoff_ms=settings.transfer_min_backoff_ms,
            max_backoff_ms=settings.transfer_max_backoff_ms,
        )
    )
    database = LendConnections(settings, role=role)
    middleware = [
        # First: its after-hook runs last, once Retries has marked a message failed.
        Telemetry(database, SETTLE_ACTORS),
        AgeLimit(),
        # Before Retries: after-hooks run in reverse, and Retries decides "failed".
        DeadLetterMarks(database, SETTLE_ACTORS),
        Retries(
            max_retries=settings.transfer_max_retries,
            # The backoff of a retry Postgres could not schedule (the actor's own `Retry`
            # carries the delay Postgres wrote).
            min_backoff=settings.transfer_min_backoff_ms,
            max_backoff=settings.transfer_max_backoff_ms,
            retry_when=budget.retry_when,
        ),
        budget,
        database,
        Heartbeat(),
    ]
    broker = factory.create_broker(
        settings.message_broker_url, namespace=settings.broker_namespace, middleware=middleware
    )
    return broker, database


def declare(settings: Settings, *, role: str = "worker") -> SettleBroker:
    """Build the broker for `settings` (`create_broker`) and declare the actors on it: the
    settle actors and the webhook delivery; return it, for the process to pass to whoever
    sends or reads queues. Nothing global is set. Call it after any fork (the broker's
    client belongs to one process). `role` names the worker process's share of the
    connection budget: "webhooks" for the processes that consume the webhooks queue.
    Connects lazily."""
    broker, _ = create_broker(settings, role=role)
    for name, fn in ((SETTLE_BATCH_ACTOR, _settle_transfers), (SETTLE_ACTOR, _settle_transfer)):
        # A message whose transfers were dead-lettered fails at once, without a traceback.
        dramatiq.actor(
            queue_name=TRANSFER_QUEUE, actor_name=name, broker=broker, throws=(RetriesExhausted,)
        )(fn)
    policy = attempts.DeliveryPolicy.of(settings)

    def _deliver_webhook(delivery_id: int) -> None:
        """Make one attempt of a webhook delivery if it is due (see `attempts.deliver`).
        Retried by Postgres, never by dramatiq: a database error leaves the delivery to fall
        due again (its lease ends, and the dispatcher sends it once more)."""
        try:
            attempts.deliver(current_pool(), int(delivery_id), policy)
        except TRANSIENT as exc:
            log.warning(
                "webhook delivery %s: database unavailable (%s); it is sent again once due",
                delivery_id,
                first_line(exc),
            )

    dramatiq.actor(
        queue_name=WEBHOOK_QUEUE,
        actor_name=DELIVER_ACTOR,
        broker=broker,
        retry_when=_never,
    )(_deliver_webhook)
    return broker


def install(settings: Settings, *, role: str = "worker") -> SettleBroker:
    """`declare` the broker, and make it dramatiq's global broker, with its actors as this
    module's `settle_transfers`, `settle_transfer` and `deliver_webhook`; return it. The one
    place that sets dramatiq's global, because dramatiq's CLI needs it: it consumes from
    `dramatiq.get_broker()` once its entry (`worker.dramatiq_entry`) has run. The test
    suite's conftest calls it too, to send through the module's actors. Every other process
    (web, the sweeper, `settle dead-letters`) calls `declare` and passes its broker on."""
    global settle_transfers, settle_transfer, deliver_webhook
    broker = declare(settings, role=role)
    dramatiq.set_broker(broker)
    settle_transfers = broker.get_actor(SETTLE_BATCH_ACTOR)
    settle_transfer = broker.get_actor(SETTLE_ACTOR)
    deliver_webhook = broker.get_actor(DELIVER_ACTOR)
    return broker


def _never(retries: int, exc: BaseException) -> bool:
    return False


def __getattr__(name: str) -> Any:
    if name in ("settle_transfers", "settle_transfer", "deliver_webhook"):
        raise AttributeError(
            f"worker.actors.{name} is set by worker.actors.install(settings), which dramatiq's"
            " CLI entry and the test suite call first"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _settle_transfers(transfer_ids: list[int]) -> None:
    """Settle a batch of transfers, `BATCH_MAX` at a time per transaction, each with its own
    outcome. Idempotent: transfers no longer pending (or named twice) are left alone.

    Retries are counted per transfer in Postgres, within TRANSFER_MAX_RETRIES + 1 attempts
    however many messages carry it (`shared.ledger.operations.RetryPolicy`). A transfer that
    waits for another message's retry, or that another worker is settling, is skipped. When
    an attempt fails transiently, Postgres counts it on the transfers it failed for and
    writes when each is due again; the message is retried after that backoff, and the
    transfers whose budget it spent are dead-lettered in the same statement, their message
    going to the dead-letter queue (`RetriesExhausted`)."""
    _settle(sorted({int(tid) for tid in transfer_ids}))


def _settle_transfer(transfer_id: int) -> None:
    """Settle one transfer: the message of a single id, as sent before batches existed (kept
    so that those messages are still consumed). Same guarantees as `settle_transfers`."""
    _settle([int(transfer_id)])


def _settle(ids: list[int]) -> None:
    policy, message_id = current_budget()
    outcomes: dict[int, ledger.Outcome] = {}
    try:
        # Autocommit: each call of the SQL function is its own transaction.
        with connection(current_pool()) as conn:
            for chunk in chunks(ids, BATCH_MAX):
                # Topped up to a full batch with the longest-waiting pending transfers:
                # under load, web's messages carry an id or two each, and a transaction
                # per message let the queue grow (docs/architecture.md, "Settlement in
                # batches").
                outcomes.update(
                    ledger.settle_transfers(
                        conn, chunk, retry=policy, message_id=message_id, fill=BATCH_MAX
                    )
                )
    except Exception as exc:
        if not is_transient(exc):
            raise
        # The first line: Postgres appends the statement's context, which for the batch
        # function is longer than the error that a transfer keeps.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {reason}".strip()
        recorded = _record_attempt([tid for tid in ids if tid not in outcomes], error)
        if recorded is None:
            # Postgres counted nothing: dramatiq's own count and backoff stand in for it.
            raise dramatiq.Retry(error) from exc
        outcomes.update(recorded)
    _report(outcomes, policy)


def _report(outcomes: dict[int, ledger.Outcome], policy: ledger.RetryPolicy) -> None:
    """Log and count what settling did; raise for a retry (`dramatiq.Retry`, with the
    backoff Postgres wrote) or for transfers it dead-lettered (`RetriesExhausted`)."""
    retrying: list[int] = []
    spent: list[int] = []
    for transfer_id, outcome in sorted(outcomes.items()):
        if outcome.latency is not None:  # decided by this call, not a redelivery
            count_finished(outcome.status, outcome.failure_code)
            if outcome.status == "settled":
                SETTLE_LATENCY.observe(outcome.latency)
        if outcome.status == "missing":
            log.warning("transfer %s: no such transfer; dropped", transfer_id)
        elif outcome.status == "retry":
            retrying.append(transfer_id)
        elif outcome.status == "dead-lettered":
            spent.append(transfer_id)
            log.error(
                "transfer %s: dead-lettered after %s attempt(s): %s",
                transfer_id,
                policy.max_attempts,
                outcome.detail or "its retry budget was spent before",
            )
        elif outcome.failure_code:
            log.info("transfer %s: %s (%s)", transfer_id, outcome.status, outcome.failure_code)
    log.debug("settled batch of %d: %s", len(outcomes), _summary(outcomes))
    if retrying:
        first = outcomes[retrying[0]]
        delay = max(outcomes[tid].retry_ms or 0 for tid in retrying)
        TRANSFER_RETRIES.inc(len(retrying))
        # Expected, and retried: dramatiq logs a Retry at no level, so an outage costs one
        # warning line per attempt rather than a traceback at ERROR.
        log.warning(
            "transfers %s: transient failure, will retry in %d ms: %s",
            _ids_text(retrying),
            delay,
            first.detail,
        )
        raise dramatiq.Retry(first.detail or "transient failure", delay=delay or None)
    if spent:
        raise RetriesExhausted(
            f"transfers {_ids_text(spent)}: dead-lettered: {outcomes[spent[0]].detail}"
        )


def _summary(outcomes: dict[int, ledger.Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _record_attempt(transfer_ids: list[int], error: str) -> dict[int, ledger.Outcome] | None:
    """Count a failed attempt in Postgres on those of `transfer_ids` this message may
    attempt (see `ledger.record_failed_attempt`); None when Postgres cannot be reached."""
    policy, message_id = current_budget()
    try:
        with connection(current_pool()) as conn:
            return ledger.record_failed_attempt(
                conn, transfer_ids, error, retry=policy, message_id=message_id
            )
    except Exception as again:  # the database may still be down; the retry is what matters
        log.warning(
            "transfers %s: transient failure (%s), and could not count it: %s",
            _ids_text(transfer_ids),
            error,
            again,
        )
        return None


def _ids_text(ids: Sequence[int]) -> str:
    """A log-sized rendering of a batch's ids."""
    if len(ids) <= 10:
        return ",".join(map(str, ids))
    return f"{ids[0]}..{ids[-1]} ({len(ids)} ids)"
