"""Falcon resources: parse the request, call one use case in `shared/`, shape the answer.

Resources hold only collaborators (the pool, the enqueue function); one instance serves every
waitress thread. Each use case gets the principal `web.auth.RequireApiKey` found; resources
marked `public` need no key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from shared.db import Row
from shared.db.pool import connection
from shared.errors import (
    AccountNotFound,
    BatchRefused,
    BodyTooLarge,
    BrokerUnavailable,
    NotAttempted,
    NotFound,
    NotReady,
    SettleError,
    SettlementBehind,
    TransferNotFound,
    UnsupportedMediaType,
    UserNotFound,
)
from shared.events import feed, waiting
from shared.events.waiting import EventWatch
from shared.ledger import auth, batches, commands, listing, money
from shared.ledger import operations as ledger
from shared.ledger.backlog import BacklogGate, Verdict
from web import errors
from web.auth import principal

log = logging.getLogger(__name__)

Enqueue = Callable[[int], None]
#: Queues many transfer ids at once (in messages of many ids).
EnqueueMany = Callable[[Sequence[int]], object]


def read_json(req: falcon.Request, max_bytes: int) -> object:
    """The request's JSON body, refusing a wrong content type (415) and a body over
    `max_bytes` (413) without reading more than one byte past the limit, whether or not the
    client sent a Content-Length."""
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != falcon.MEDIA_JSON:
        raise UnsupportedMediaType("send the body as application/json")
    if req.content_length is not None and req.content_length > max_bytes:
        raise BodyTooLarge(f"the body is larger than {max_bytes} bytes")
    # Without a Content-Length, bounded_stream reads nothing at all, so a chunked body would
    # look empty; a server that marks its input EOF-terminated (PEP 3333's
    # wsgi.input_terminated) lets us read it, still no further than one byte past the limit.
    terminated = req.content_length is None and req.env.get("wsgi.input_terminated")
    raw = _read_at_most(req.stream if terminated else req.bounded_stream, max_bytes + 1)
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"the body is larger than {max_bytes} bytes")
    return commands.parse_json(raw)


def query_params(req: falcon.Request) -> dict[str, str | list[str]]:
    """The query string's parameters as sent: blank values kept (`status=` is a bad status,
    not no status), a list of values where a name repeats, no splitting at commas."""
    return falcon.uri.parse_query_string(req.query_string, keep_blank=True, csv=False)


def _read_at_most(stream: Any, size: int) -> bytes:
    # A WSGI input may return fewer bytes than asked before its end.
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _Resource:
    def __init__(self, pool: ConnectionPool, *, max_body_bytes: int) -> None:
        self._pool = pool
        self._max_body_bytes = max_body_bytes


class Users(_Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        by = principal(req)
        auth.require_operator(by)  # before the body: a user's key gets 403 whatever it sends
        auth.require_writer(by)
        new = commands.user_request(read_json(req, self._max_body_bytes))
        with connection(self._pool) as conn:
            user = ledger.create_user(conn, new, by=by)
        resp.status = falcon.HTTP_201
        resp.location = f"/users/{user['id']}"
        resp.media = {"data": user}


def path_id(raw: str, missing: type[NotFound], noun: str) -> int:
    """The id a URL segment names; `missing` (a 404 saying "<noun> <raw> does not exist")
    when it cannot name any row, the same answer as for an id with no row."""
    parsed = money.parse_id(raw)
    if parsed is None:
        raise missing(f"{noun} {raw} does not exist")
    return parsed


class User(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        uid = path_id(user_id, UserNotFound, "user")
        with connection(self._pool) as conn:
            resp.media = {"data": ledger.get_user(conn, uid, by=principal(req))}


class Me(_Resource):
    """The user a user's key acts for. An operator key acts for no user: 404, saying so."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        by = principal(req)
        if by.user_id is None:
            raise UserNotFound("an operator key acts for no user; /users/me is for a user's key")
        with connection(self._pool) as conn:
            resp.media = {"data": ledger.get_user(conn, by.user_id, by=by)}


class Accounts(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = listing.account_query(query_params(req))
        with connection(self._pool) as conn:
            page = listing.list_accounts(conn, query, by=principal(req))
        resp.media = {"data": page.items, "next_cursor": page.next_cursor}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        by = principal(req)
        auth.require_operator(by)  # before the body: a user's key gets 403 whatever it sends
        auth.require_writer(by)
        new = commands.account_request(read_json(req, self._max_body_bytes))
        with connection(self._pool) as conn:
            account = ledger.create_account(conn, new, by=by)
        resp.status = falcon.HTTP_201
        resp.location = f"/accounts/{account['id']}"
        resp.media = {"data": account}


class Account(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        aid = path_id(account_id, AccountNotFound, "account")
        with connection(self._pool) as conn:
            resp.media = {"data": ledger.get_account(conn, aid, by=principal(req))}


class AccountEntries(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        aid = path_id(account_id, AccountNotFound, "account")
        limit = commands.limit(req.get_param("limit"))
        cursor = req.get_param("cursor")
        with connection(self._pool) as conn:
            page = ledger.list_entries(conn, aid, limit=limit, cursor=cursor, by=principal(req))
        resp.media = {"data": page.items, "next_cursor": page.next_cursor}


def settlement_behind(
    backlog: BacklogGate, verdict: Verdict, send: EnqueueMany
) -> SettlementBehind:
    """The refusal of new transfers while settlement is behind (`verdict`), after sending
    again what the gate claimed for it (see `BacklogGate`). Should that send fail, the
    sweeper sends them once its grace period has passed, as after any failed send."""
    if verdict.resend:
        try:
            send(verdict.resend)
        except BrokerUnavailable as exc:
            log.warning("transfers %s: not sent again: %s", verdict.resend, exc.message)
    return SettlementBehind(
        f"settlement is behind: the transfer waiting longest was accepted"
        f" {verdict.waited:.1f} s ago (the bound is {backlog.max_seconds:g} s); nothing was"
        " recorded, retry after Retry-After"
    )


class Transfers(_Resource):
    """`POST /transfers` records a transfer and queues it, unless settlement is behind
    (`backlog`: 503 `overloaded`, nothing recorded; docs/operations.md, "Admission
    control")."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        max_body_bytes: int,
        enqueue: Enqueue,
        backlog: BacklogGate | None = None,
    ) -> None:
        super().__init__(pool, max_body_bytes=max_body_bytes)
        self._enqueue = enqueue
        self._backlog = backlog or BacklogGate(0)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = listing.transfer_query(query_params(req))
        with connection(self._pool) as conn:
            page = listing.list_transfers(conn, query, by=principal(req))
        resp.media = {"data": page.items, "next_cursor": page.next_cursor}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_writer(principal(req))  # before the body, as for the operator-only routes
        body = read_json(req, self._max_body_bytes)
        new = commands.transfer_request(body, req.get_header("Idempotency-Key"))
        with connection(self._pool) as conn:
            verdict = self._backlog.check(conn)
            if verdict.admit:
                transfer = ledger.submit_transfer(conn, new, by=principal(req))
        if not verdict.admit:
            raise settlement_behind(self._backlog, verdict, self._enqueue_each)
        if transfer["status"] == "pending":
            self._send(transfer["id"])
        resp.status = falcon.HTTP_202
        resp.location = f"/transfers/{transfer['id']}"
        resp.media = {"data": transfer}

    def _enqueue_each(self, transfer_ids: Sequence[int]) -> None:
        for transfer_id in transfer_ids:
            self._enqueue(transfer_id)

    def _send(self, transfer_id: int) -> None:
        # The transfer is committed and stays pending: the sweeper sends it once the broker
        # is back. The caller still learns that it was not queued (503), and a retry with
        # the same Idempotency-Key is safe: it answers this transfer and queues it again.
        try:
            self._enqueue(transfer_id)
        except BrokerUnavailable as exc:
            log.warning("transfer %s: not queued: %s", transfer_id, exc.message)
            raise BrokerUnavailable(
                f"transfer {transfer_id} is recorded but could not be queued; retry with the"
                " same Idempotency-Key (it will also be settled once the broker is back)"
            ) from exc


class TransferBatch(_Resource):
    """`POST /transfers/batch`: up to `MAX_BATCH_ITEMS` transfers, each answered on its own in
    request order (`batches.submit_transfers`); the accepted ones are queued in messages of
    many ids (`enqueue_many`). A batch counts as one request, whatever it holds."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        max_body_bytes: int,
        enqueue_many: EnqueueMany,
        backlog: BacklogGate | None = None,
    ) -> None:
        super().__init__(pool, max_body_bytes=max_body_bytes)
        self._enqueue_many = enqueue_many
        self._backlog = backlog or BacklogGate(0)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        by = principal(req)
        auth.require_writer(by)  # before the body, as for POST /transfers
        batch = commands.batch_request(read_json(req, self._max_body_bytes))
        with connection(self._pool) as conn:
            verdict = self._backlog.check(conn)
            if verdict.admit:
                outcome = batches.submit_transfers(conn, batch.items, by=by, atomic=batch.atomic)
        if not verdict.admit:
            raise settlement_behind(self._backlog, verdict, self._enqueue_many)
        answer = [item_result(result) for result in outcome.results]
        if not outcome.recorded:
            refused = sum(r["status"] != NOT_ATTEMPTED_STATUS for r in answer)
            error = BatchRefused(
                f"{refused} of the batch's {len(answer)} transfers were refused, so none was"
                " recorded (the batch is atomic); each item says why"
            )
            resp.status = errors.status_of(error)
            resp.media = {**errors.body_of(error), "data": answer}
            return
        pending = sorted(
            {
                r["id"]
                for r in outcome.results
                if not isinstance(r, SettleError) and r["status"] == "pending"
            }
        )
        if pending:
            # A chain is settled whole from any one of its legs.
            self._send(pending[:1] if batch.atomic else pending)
        resp.media = {"data": answer}

    def _send(self, transfer_ids: list[int]) -> None:
        # As for one transfer: recorded and pending, so the sweeper sends them once the
        # broker is back; a retry of the same batch answers the same transfers and queues
        # them again.
        try:
            self._enqueue_many(transfer_ids)
        except BrokerUnavailable as exc:
            log.warning("batch of %d transfers: not queued: %s", len(transfer_ids), exc.message)
            raise BrokerUnavailable(
                f"the batch's {len(transfer_ids)} transfers are recorded but could not be"
                " queued; retry the same batch (they will also be settled once the broker"
                " is back)"
            ) from exc


#: The status of an item of an atomic batch that was refused for another item's sake.
NOT_ATTEMPTED_STATUS = 424


def item_result(result: Row | SettleError) -> dict[str, object]:
    """One item of a batch's answer: `{"status": 202, "data": transfer}` or
    `{"status": 4xx, "error": {"code", "message"}}`, the status the error would have as the
    answer to a single request (an item of a refused atomic batch that was not attempted:
    424, Failed Dependency, which no single request answers)."""
    if isinstance(result, NotAttempted):
        return {"status": NOT_ATTEMPTED_STATUS, **errors.body_of(result)}
    if isinstance(result, SettleError):
        return {
            "status": falcon.http_status_to_code(errors.status_of(result)),
            **errors.body_of(result),
        }
    return {"status": 202, "data": result}


def preferred_wait(req: falcon.Request) -> int | None:
    """The seconds of a `Prefer: wait=N` header (RFC 7240), at most MAX_WAIT_SECONDS; None
    without one. As the RFC asks, a preference that does not parse is ignored, and only the
    first `wait` counts."""
    for header in req.get_header("Prefer", default="").split(","):
        name, _, value = header.split(";", 1)[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not (value.isascii() and value.isdigit()) or len(value) > 9:
            return None
        return min(int(value), feed.MAX_WAIT_SECONDS)
    return None


class Transfer(_Resource):
    """A transfer; with `Prefer: wait=N`, answered once it is decided (settled, failed or
    dead-lettered) or after N seconds, whichever is first (`waiting.read_transfer`)."""

    def __init__(
        self, pool: ConnectionPool, *, max_body_bytes: int, watch: EventWatch | None
    ) -> None:
        super().__init__(pool, max_body_bytes=max_body_bytes)
        self._watch = watch

    def on_get(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        tid = path_id(transfer_id, TransferNotFound, "transfer")
        wait = preferred_wait(req)
        transfer, honoured = waiting.read_transfer(
            self._pool, tid, by=principal(req), wait=wait or 0, watch=self._watch
        )
        resp.vary = ("Prefer",)
        if wait is not None and honoured:
            resp.set_header("Preference-Applied", f"wait={wait}")
        resp.media = {"data": transfer}


class Events(_Resource):
    """The caller's transfer events after an id, in order; with `wait=N`, a long-poll."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        max_body_bytes: int,
        watch: EventWatch | None,
        retention_days: int,
    ) -> None:
        super().__init__(pool, max_body_bytes=max_body_bytes)
        self._watch = watch
        self._retention_days = retention_days

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = feed.event_query(query_params(req))
        page, waited = waiting.read_events(
            self._pool,
            query,
            by=principal(req),
            retention_days=self._retention_days,
            watch=self._watch,
        )
        if not waited:
            # No room to wait (or stopping): answered at once; a client that asks again
            # straight away would only spin.
            resp.set_header("Retry-After", "1")
        resp.media = {"data": page.items, "next_after": page.next_after, "has_more": page.has_more}


class Health:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"data": {"status": "ok"}}


class Ready:
    """Readiness: Postgres answers through this process's pool and the broker (`broker`:
    "redis" or "rabbitmq", the key its state is reported under) answers.
    It waits at most `READY_TIMEOUT` for a pooled connection, so that a probe with a short
    timeout of its own gets a 503 rather than no answer while Postgres is down."""

    READY_TIMEOUT = 0.5

    public = True

    def __init__(
        self, pool: ConnectionPool, ping_broker: Callable[[], Any], *, broker: str = "redis"
    ) -> None:
        self._pool = pool
        self._ping_broker = ping_broker
        self._broker = broker

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}
        try:
            with connection(self._pool, timeout=self.READY_TIMEOUT) as conn:
                conn.execute("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            checks["postgres"] = f"unavailable: {type(exc).__name__}"
        try:
            self._ping_broker()
            checks[self._broker] = "ok"
        except Exception as exc:
            checks[self._broker] = f"unavailable: {type(exc).__name__}"
        if any(state != "ok" for state in checks.values()):
            raise NotReady("; ".join(f"{name} {state}" for name, state in checks.items()))
        resp.media = {"data": {"status": "ready", **checks}}


class OpenAPIDocument:
    """The OpenAPI 3.1 document of this API, serialized once."""

    public = True

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = json.dumps(document, separators=(",", ":")).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
