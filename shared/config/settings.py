"""Settle's settings: one declaration per environment variable, read once by each process's
composition root.

`Settings` is the only reader of `os.environ` for configuration (`from_env`, and `one` for
the log format a process sets up before the rest); everything else receives a `Settings`, or
the few values of it that it uses. A malformed value raises
`InvalidSetting` naming the variable. docs/configuration.md's table is generated from the
declarations below (`make docs-settings`), and a test holds the two together.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from shared.config.brokers import broker_name
from shared.config.spec import read, read_one, setting
from shared.errors import InvalidSetting

DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Values of DB_POOLER: no pooler (Settle talks to Postgres itself), or PgBouncer in
#: transaction mode. An undeclared transaction pooler is noticed at boot and refused
#: (`shared.db.pooler`); a declared one is trusted, its limits taken as configured.
POOLERS = ("none", "pgbouncer")
#: PgBouncer's own defaults for `max_client_conn` and `default_pool_size`, assumed when
#: DB_POOLER=pgbouncer and DB_POOLER_CLIENT_LIMIT / DB_POOLER_POOL_SIZE are unset.
PGBOUNCER_CLIENT_LIMIT = 100
PGBOUNCER_POOL_SIZE = 20

#: The bounds of a rate limit, requests per second and burst: the settings' and every key's
#: own (`shared.ratelimit.limits`).
MIN_RATE = 0.001
MAX_RATE = 1_000_000
MAX_BURST = 1_000_000

#: Where the three Postgres timeouts apply.
_TIMEOUT = (
    "on every pooled connection (behind PgBouncer: the role's default, set by `settle migrate`)"
)


@dataclass(frozen=True)
class Settings:
    """Every knob of the service, in the order of docs/configuration.md's table."""

    database_url: str = setting(
        "DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "Postgres to use, or PgBouncer in front of it (with `DB_POOLER=pgbouncer`)",
        shown=f"`{DEFAULT_DATABASE_URL}` (`make run`: embedded)",
        form="URL",
    )
    database_direct_url: str | None = setting(
        "DATABASE_DIRECT_URL",
        None,
        "Postgres itself, for work that needs a session: migrations, reading `max_connections`",
        shown="unset (= `DATABASE_URL`)",
        form="URL",
    )
    db_pooler: str = setting(
        "DB_POOLER",
        "none",
        "`pgbouncer`: `DATABASE_URL` is PgBouncer in transaction mode (an undeclared"
        " transaction pooler is refused at boot)",
        choices=POOLERS,
    )
    db_pooler_client_limit: int | None = setting(
        "DB_POOLER_CLIENT_LIMIT",
        None,
        "client connections PgBouncer accepts from Settle: the budget of Settle's pools behind it",
        at_least=1,
        shown=f"unset (PgBouncer's default `max_client_conn`, {PGBOUNCER_CLIENT_LIMIT})",
    )
    db_pooler_pool_size: int | None = setting(
        "DB_POOLER_POOL_SIZE",
        None,
        "server connections PgBouncer may open to Postgres for Settle (`default_pool_size` +"
        " `reserve_pool_size`)",
        at_least=1,
        shown=f"unset (PgBouncer's default `default_pool_size`, {PGBOUNCER_POOL_SIZE})",
    )
    db_pooler_admin_url: str | None = setting(
        "DB_POOLER_ADMIN_URL",
        None,
        "PgBouncer's admin console (`postgresql://<admin user>@<pgbouncer>/pgbouncer`): when"
        " set, the two above, unless set, are read from it",
        form="URL",
    )
    redis_url: str = setting(
        "REDIS_URL",
        DEFAULT_REDIS_URL,
        "Redis for the message broker (when `BROKER_URL` is unset)",
        shown=f"`{DEFAULT_REDIS_URL}` (`make run`: embedded)",
        form="URL",
    )
    broker_url: str | None = setting(
        "BROKER_URL",
        None,
        "the message broker: `redis://...`, or `amqp://user:password@host:5672/vhost` for"
        " RabbitMQ; any other scheme exits 2",
        # Vetted here, so that a bad scheme is one line naming the variable.
        check=broker_name,
        shown="unset (= `REDIS_URL`)",
        form="URL",
    )
    broker_namespace: str = setting(
        "BROKER_NAMESPACE",
        "settle",
        "prefix of the broker's Redis keys (RabbitMQ: unused, give Settle a vhost of its own"
        " instead)",
    )
    host: str = setting("HOST", "127.0.0.1", "address web listens on", form="address")
    port: int = setting("PORT", 8000, "port web listens on", at_least=0)
    web_processes: int = setting(
        "WEB_PROCESSES",
        2,
        "web processes, each listening on `PORT` with a socket of its own (the kernel spreads"
        " connections over them)",
        at_least=1,
    )
    web_threads: int = setting(
        "WEB_THREADS",
        8,
        "waitress threads per web process (more than the cores: a thread waiting on Postgres"
        " holds no core)",
        at_least=1,
    )
    web_pool_size: int = setting(
        "WEB_POOL_SIZE",
        0,
        "connections a web process wants, at most `WEB_THREADS` (the budget may give fewer)",
        at_least=0,
        shown="`0` (= `WEB_THREADS`)",
    )
    web_queue_limit: int = setting(
        "WEB_QUEUE_LIMIT",
        64,
        "requests waiting for a thread beyond which web answers 503 + Retry-After at once",
        at_least=1,
    )
    transfer_backlog_max_ms: int = setting(
        "TRANSFER_BACKLOG_MAX_MS",
        1000,
        "POST /transfers answers 503 `overloaded` + Retry-After, recording nothing, while the"
        " transfer waiting longest to settle was accepted longer ago than this; 0: never",
        at_least=0,
    )
    web_shutdown_timeout: float = setting(
        "WEB_SHUTDOWN_TIMEOUT",
        30.0,
        "seconds web waits for in-flight requests on SIGTERM",
        above=0,
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", 16 * 1024, "larger request bodies get 413", at_least=256
    )
    max_batch_body_bytes: int = setting(
        "MAX_BATCH_BODY_BYTES",
        1024 * 1024,
        "the same for `POST /transfers/batch` (1,000 transfers of about 1 KB each)",
        at_least=256,
    )
    worker_processes: int = setting("WORKER_PROCESSES", 2, "dramatiq worker processes", at_least=1)
    worker_threads: int = setting(
        "WORKER_THREADS",
        4,
        "dramatiq threads per worker process (= the pool it wants; `WEB_SHARE` may cut both,"
        " and a smaller lease its pool)",
        at_least=1,
    )
    web_instances: int = setting(
        "WEB_INSTANCES", 1, "hosts running web, for the budget", at_least=1
    )
    worker_instances: int = setting(
        "WORKER_INSTANCES", 1, "hosts running worker, for the budget", at_least=1
    )
    db_connection_budget: int | None = setting(
        "DB_CONNECTION_BUDGET",
        None,
        "connections the whole service may hold",
        at_least=1,
        shown="unset (read from Postgres)",
    )
    db_reserved_connections: int = setting(
        "DB_RESERVED_CONNECTIONS",
        5,
        "kept out of the budget read from Postgres",
        at_least=0,
    )
    web_share: float | None = setting(
        "WEB_SHARE",
        None,
        "share of the budget for web when not every thread can have a connection",
        above=0,
        below=1,
    )
    lease_ttl_seconds: float = setting(
        "LEASE_TTL_SECONDS", 10.0, "a lease not heartbeated this long is expired", above=0
    )
    pool_timeout: float = setting(
        "POOL_TIMEOUT",
        2.0,
        "seconds web and sweeper wait for a pooled connection (web then answers 503"
        " `database_busy`); a worker thread waits up to 30 s, then its message is retried",
        above=0,
    )
    api_key_cache_seconds: float = setting(
        "API_KEY_CACHE_SECONDS",
        0.5,
        "how long a web process trusts an API key it has looked up (a revoked key is refused"
        " everywhere within this time: at most 1 s)",
        at_least=0,
        at_most=1,
    )
    rate_limit_per_second: float = setting(
        "RATE_LIMIT_PER_SECOND",
        100.0,
        "requests per second each API key's token bucket earns back (0.001 to 1000000), unless"
        " the key has a rate of its own (`settle keys create/update --rate`); `0` leaves keys"
        " without one unlimited. On Redis the bucket is shared by every web process and host;"
        " on RabbitMQ each web process enforces this divided by `WEB_PROCESSES` x"
        " `WEB_INSTANCES` (see [rate limits](api.md#rate-limits))",
        at_least=0,
        at_most=MAX_RATE,
    )
    rate_limit_burst: int = setting(
        "RATE_LIMIT_BURST",
        200,
        "requests a full bucket allows at once, unless the key has a burst of its own"
        " (`--burst`); on RabbitMQ divided like the rate",
        at_least=1,
        at_most=MAX_BURST,
    )
    statement_timeout_ms: int = setting(
        "STATEMENT_TIMEOUT_MS", 5000, f"Postgres `statement_timeout` {_TIMEOUT}", at_least=1
    )
    lock_timeout_ms: int = setting(
        "LOCK_TIMEOUT_MS", 3000, f"Postgres `lock_timeout` {_TIMEOUT}", at_least=1
    )
    idle_in_transaction_timeout_ms: int = setting(
        "IDLE_IN_TRANSACTION_TIMEOUT_MS",
        10000,
        f"Postgres `idle_in_transaction_session_timeout` {_TIMEOUT}",
        at_least=1,
    )
    transfer_max_retries: int = setting(
        "TRANSFER_MAX_RETRIES",
        10,
        "retries of a transiently failing transfer before it is dead-lettered: at most this"
        " + 1 attempts, counted in Postgres across every message that carries it",
        at_least=0,
    )
    transfer_min_backoff_ms: int = setting(
        "TRANSFER_MIN_BACKOFF_MS", 100, "shortest wait before a retry", at_least=1
    )
    transfer_max_backoff_ms: int = setting(
        "TRANSFER_MAX_BACKOFF_MS", 30000, "longest wait before a retry", at_least=1
    )
    sweeper_grace_seconds: float = setting(
        "SWEEPER_GRACE_SECONDS",
        30.0,
        "a transfer pending this long since it was last sent (and since its next retry was"
        " due) is sent again",
        above=0,
    )
    sweeper_interval_seconds: float = setting(
        "SWEEPER_INTERVAL_SECONDS", 5.0, "pause between sweeps", above=0
    )
    sweeper_batch: int = setting(
        "SWEEPER_BATCH", 500, "transfers claimed per sweep query", at_least=1
    )
    restart_backoff_max_seconds: float = setting(
        "RESTART_BACKOFF_MAX_SECONDS",
        30.0,
        "longest wait between two restarts of a supervised process, and between two boot"
        " checks of a supervisor waiting for Postgres or the broker (see"
        " [Supervision](architecture.md#supervision))",
        above=0,
    )
    event_retention_days: int = setting(
        "EVENT_RETENTION_DAYS",
        30,
        "transfer events older than this are deleted by the sweeper; `GET /events` after an"
        " older id answers 410 `cursor_expired`",
        at_least=1,
    )
    event_waiters: int | None = setting(
        "EVENT_WAITERS",
        None,
        "long-polls (`GET /events?wait=`, `Prefer: wait` on `GET /transfers/{id}`) one web"
        " process lets wait at once, below `WEB_THREADS` (each holds a thread); beyond, they"
        " are answered at once. `0` turns waiting off, and with it each web process's event"
        " watch and its connection",
        at_least=0,
        shown="half of `WEB_THREADS`",
    )
    event_poll_ms: int = setting(
        "EVENT_POLL_MS",
        25,
        "how often a web process's event watch reads the horizon while a long-poll waits"
        " (the longest a waiter may learn late of its event)",
        at_least=1,
    )
    hostname: str = setting(
        "SETTLE_HOSTNAME",
        "",
        "host part of `application_name`",
        factory=socket.gethostname,
        shown="the host name",
        form="host name",
    )
    log_format: str = setting(
        "LOG_FORMAT",
        "auto",
        "`json` (one object per line), `text`, or `auto`: text on a terminal, JSON otherwise",
        choices=("auto", "json", "text"),
    )
    metrics_dir: str = setting(
        "METRICS_DIR",
        "",
        "where processes keep their metric files, one folder per role, emptied at start;"
        " web, worker and sweeper of one host must share it (see"
        " [metrics](operations.md#metrics-get-metrics))",
        shown="`settle-metrics-<digest of DATABASE_URL, the broker URL and BROKER_NAMESPACE>`"
        " in the temporary directory (`make run`: a folder per run)",
        form="directory",
    )
    dashboard_idle_seconds: float = setting(
        "DASHBOARD_IDLE_SECONDS",
        1800.0,
        "a dashboard session unused this long is over (the overview's own reloads do not"
        " count as use)",
        above=0,
    )
    dashboard_secure_cookie: bool = setting(
        "DASHBOARD_SECURE_COOKIE",
        False,
        "mark the session cookie `Secure` even over plain http (behind a TLS proxy); it is"
        " always `Secure` when the request is https",
    )
    dashboard_session_secret: str | None = setting(
        "DASHBOARD_SESSION_SECRET",
        None,
        "the key signing dashboard cookies; unset, the service makes 32 random bytes on"
        " first use and keeps them in `service_secrets`, so every web process on every host"
        " agrees",
        min_length=32,
        shown="unset (made once, kept in Postgres)",
    )
    dashboard_pending_threshold_seconds: float = setting(
        "DASHBOARD_PENDING_THRESHOLD_SECONDS",
        300.0,
        "a pending transfer older than this needs attention (dashboard, and `settle status`"
        " unless given `--pending-threshold`)",
        above=0,
    )
    secret_key: str | None = setting(
        "SECRET_KEY",
        None,
        "webhook signing secrets are derived from it and never stored, so a copy of the"
        " database cannot sign. Unset, webhooks are off: creating an endpoint or rotating its"
        " secret answers 503 `webhooks_unconfigured`, and deliveries wait. Changing it"
        " invalidates every endpoint's secret (rotate each to make a new one); keep it as you"
        " keep a database password",
        min_length=32,
        shown="unset (`make run`: made once, kept in `.settle/secret_key`)",
    )
    webhook_allow_private: bool = setting(
        "WEBHOOK_ALLOW_PRIVATE",
        False,
        "let webhook endpoints lead to private, loopback, link-local, multicast and reserved"
        " addresses (a receiver on your own machine); off, such URLs are refused when created"
        " and when delivered to",
        shown="`false` (`make run` and the tests: `true`)",
    )
    webhook_processes: int = setting(
        "WEBHOOK_PROCESSES",
        1,
        "dramatiq processes per worker instance that deliver webhooks (the `webhooks` queue),"
        " beside those that settle transfers; `0` delivers none (deliveries wait)",
        at_least=0,
    )
    webhook_threads: int = setting(
        "WEBHOOK_THREADS",
        4,
        "delivery threads per webhook process, each making one request at a time (up to 5 s"
        " each); they hold no connection during a request, so they share a pool of at most"
        " `WEBHOOK_POOL_SIZE`",
        at_least=1,
    )
    webhook_pool_size: int = setting(
        "WEBHOOK_POOL_SIZE",
        2,
        "connections per webhook process (at most `WEBHOOK_THREADS`): each attempt takes one"
        " twice, briefly, to claim the delivery and to record the outcome",
        at_least=1,
    )
    webhook_min_backoff_seconds: float = setting(
        "WEBHOOK_MIN_BACKOFF_SECONDS",
        30.0,
        "the wait after a delivery's first failed attempt; it doubles per attempt up to"
        " `WEBHOOK_MAX_BACKOFF_SECONDS`, each wait drawn between its half and itself",
        above=0,
    )
    webhook_max_backoff_seconds: float = setting(
        "WEBHOOK_MAX_BACKOFF_SECONDS",
        21600.0,
        "the longest wait between two attempts of a delivery",
        above=0,
    )
    webhook_retry_hours: float = setting(
        "WEBHOOK_RETRY_HOURS",
        72.0,
        "a delivery without a 2xx this long after it was made is `failed`",
        above=0,
    )
    bench_routes: bool = setting(
        "BENCH_ROUTES",
        False,
        "`true` adds `GET /bench/key` and `GET /bench/select-1`, the middle rungs of `make"
        " bench`'s read ladder (an API key checked and nothing else; the key and a pooled"
        " `SELECT 1`); for the bench only, never in production (see bench/README.md)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: the process environment).

        Raises `InvalidSetting` with the variable's name when a value does not parse, or
        when two settings do not fit together.
        """
        settings = read(cls, os.environ if env is None else env)
        _check_waiters(settings)
        _check_rate_limit(settings)
        return settings

    @classmethod
    def one(cls, name: str, env: Mapping[str, str] | None = None) -> object:
        """The setting whose field is `name` alone, from `env` (default: the process
        environment), for what a process needs before it reads the rest: its log format,
        so that even a bad setting is refused in it. Raises `InvalidSetting` as `from_env`
        does, and `KeyError` for an undeclared name."""
        return read_one(cls, name, os.environ if env is None else env)

    @property
    def waiters(self) -> int:
        """Long-polls (`GET /events?wait=`, `Prefer: wait`) one web process lets wait at once:
        EVENT_WAITERS, else half of WEB_THREADS. Each waiting request holds a waitress thread
        (and no database connection), so they stay fewer than the threads and ordinary
        requests are still served; beyond them a long-poll is answered at once. 0 turns
        waiting off, and with it each web process's event watch and its connection."""
        if self.event_waiters is not None:
            return self.event_waiters
        return self.web_threads // 2

    @property
    def pooled(self) -> bool:
        """Whether DATABASE_URL is a transaction-mode pooler (PgBouncer): no prepared
        statements, no startup options and no session state over it."""
        return self.db_pooler == "pgbouncer"

    @property
    def session_url(self) -> str:
        """Postgres itself, for what needs a session of its own (migrations under their
        advisory lock, LISTEN, reading max_connections): DATABASE_DIRECT_URL when set."""
        return self.database_direct_url or self.database_url

    @property
    def message_broker_url(self) -> str:
        """The broker the service sends transfers through: BROKER_URL, else REDIS_URL."""
        return self.broker_url or self.redis_url

    @property
    def broker(self) -> str:
        """The broker in use: "redis" or "rabbitmq" (from `message_broker_url`'s scheme)."""
        return broker_name(self.message_broker_url)

    @property
    def metrics_path(self) -> str:
        """Where this service's processes keep their metric files (one folder per role):
        METRICS_DIR, else `settle-metrics-<digest>` in the temporary directory, the digest
        of what makes processes one service, the database and the broker (URL and
        namespace) they share. Never PORT: a process manager such as honcho gives each
        process its own, and web must read the folder the workers write."""
        if self.metrics_dir:
            return self.metrics_dir
        service = "\n".join((self.database_url, self.message_broker_url, self.broker_namespace))
        digest = hashlib.sha256(service.encode()).hexdigest()[:12]
        return os.path.join(tempfile.gettempdir(), f"settle-metrics-{digest}")

    def with_(self, **changes: object) -> Settings:
        """A copy with `changes` applied (tests and launchers use it)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise InvalidSetting(f"unknown settings: {sorted(unknown)}")
        return replace(self, **changes)  # type: ignore[arg-type]


def _check_waiters(settings: Settings) -> None:
    """EVENT_WAITERS, when set, stays below WEB_THREADS."""
    waiters, threads = settings.event_waiters, settings.web_threads
    if waiters is not None and waiters >= threads:
        raise InvalidSetting(
            f"EVENT_WAITERS={waiters} must be below WEB_THREADS={threads}: each waiting"
            " long-poll holds a thread, and ordinary requests need some left"
        )


def _check_rate_limit(settings: Settings) -> None:
    """RATE_LIMIT_PER_SECOND is 0 (off) or a rate a key may have (at least `MIN_RATE`)."""
    rate = settings.rate_limit_per_second
    if 0 < rate < MIN_RATE:
        raise InvalidSetting(
            f"RATE_LIMIT_PER_SECOND={rate:g} must be 0 (no default limit) or at least {MIN_RATE:g}"
        )
