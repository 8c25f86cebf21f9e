"""Settings read from the environment, once, by each process's composition root.

`Settings.from_env` is the only reader of `os.environ` for configuration; everything else
receives a `Settings`. A malformed value raises `InvalidSetting` naming the variable.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from shared.broker.urls import broker_name
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


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidSetting(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise InvalidSetting(f"{name}={value} must be at least {minimum}")
    return value


def _optional_int(env: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    if not env.get(name, "").strip():
        return None
    return _int(env, name, minimum, minimum=minimum)


def _share(env: Mapping[str, str], name: str) -> float | None:
    if not env.get(name, "").strip():
        return None
    value = _float(env, name, 0.5)
    if not 0 < value < 1:
        raise InvalidSetting(f"{name}={value} must be between 0 and 1 (exclusive)")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise InvalidSetting(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InvalidSetting(f"{name}={raw!r} is not a boolean (true or false)")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if len(raw) < 32:
        raise InvalidSetting(f"{name} must be at least 32 characters long")
    return raw


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidSetting(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise InvalidSetting(f"{name}={value} must be positive")
    return value


def _cache_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidSetting(f"{name}={raw!r} is not a number") from None
    if not 0 <= value <= 1:
        raise InvalidSetting(f"{name}={value} must be between 0 and 1 (revocation within 1 s)")
    return value


def _event_waiters(env: Mapping[str, str]) -> int | None:
    """EVENT_WAITERS: at least 0 and fewer than WEB_THREADS (None when unset)."""
    waiters = _optional_int(env, "EVENT_WAITERS", minimum=0)
    threads = _int(env, "WEB_THREADS", Settings.web_threads, minimum=1)
    if waiters is not None and waiters >= threads:
        raise InvalidSetting(
            f"EVENT_WAITERS={waiters} must be below WEB_THREADS={threads}: each waiting"
            " long-poll holds a thread, and ordinary requests need some left"
        )
    return waiters


def _broker_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("BROKER_URL", "").strip()
    if not raw:
        return None
    broker_name(raw)  # vetted here, so that a bad scheme is one line naming the variable
    return raw


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; docs/configuration.md says what each means."""

    database_url: str = DEFAULT_DATABASE_URL
    database_direct_url: str | None = None  # None: DATABASE_URL is Postgres itself
    db_pooler: str = "none"
    db_pooler_client_limit: int | None = None  # None: PgBouncer's default max_client_conn
    db_pooler_pool_size: int | None = None  # None: PgBouncer's default default_pool_size
    db_pooler_admin_url: str | None = None  # PgBouncer's admin console, to read both above
    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str | None = None  # None: REDIS_URL
    broker_namespace: str = "settle"
    host: str = "127.0.0.1"
    port: int = 8000
    web_processes: int = 2
    web_threads: int = 8
    web_pool_size: int = 0  # 0: one connection per web thread
    web_queue_limit: int = 64
    web_shutdown_timeout: float = 30.0
    max_body_bytes: int = 16 * 1024
    worker_processes: int = 2
    worker_threads: int = 4
    web_instances: int = 1
    worker_instances: int = 1
    db_connection_budget: int | None = None  # None: derived from the server's settings
    db_reserved_connections: int = 5
    web_share: float | None = None
    lease_ttl_seconds: float = 10.0
    pool_timeout: float = 2.0
    api_key_cache_seconds: float = 0.5  # at most 1: revocation takes effect within a second
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 3000
    idle_in_transaction_timeout_ms: int = 10000
    transfer_max_retries: int = 10
    transfer_min_backoff_ms: int = 100
    transfer_max_backoff_ms: int = 30000
    sweeper_grace_seconds: float = 30.0
    sweeper_interval_seconds: float = 5.0
    sweeper_batch: int = 500
    restart_backoff_max_seconds: float = 30.0
    event_retention_days: int = 30
    event_waiters: int | None = None  # None: half of WEB_THREADS; see `waiters`
    event_poll_ms: int = 25
    hostname: str = field(default_factory=socket.gethostname)
    log_format: str = "auto"  # json | text | auto (json unless stderr is a terminal)
    metrics_dir: str = ""  # "": named after the service's database and broker, see below

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

    dashboard_idle_seconds: float = 1800.0
    dashboard_secure_cookie: bool = False
    dashboard_session_secret: str | None = None  # None: made once, kept in the database
    dashboard_pending_threshold_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: the process environment).

        Raises `InvalidSetting` with the variable's name when a value does not parse.
        """
        env = os.environ if env is None else env
        d = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or d.database_url,
            database_direct_url=env.get("DATABASE_DIRECT_URL") or None,
            db_pooler=_choice(env, "DB_POOLER", d.db_pooler, POOLERS),
            db_pooler_client_limit=_optional_int(env, "DB_POOLER_CLIENT_LIMIT", minimum=1),
            db_pooler_pool_size=_optional_int(env, "DB_POOLER_POOL_SIZE", minimum=1),
            db_pooler_admin_url=env.get("DB_POOLER_ADMIN_URL") or None,
            redis_url=env.get("REDIS_URL") or d.redis_url,
            broker_url=_broker_url(env),
            broker_namespace=env.get("BROKER_NAMESPACE") or d.broker_namespace,
            host=env.get("HOST") or d.host,
            port=_int(env, "PORT", d.port, minimum=0),
            web_processes=_int(env, "WEB_PROCESSES", d.web_processes, minimum=1),
            web_threads=_int(env, "WEB_THREADS", d.web_threads, minimum=1),
            web_pool_size=_int(env, "WEB_POOL_SIZE", d.web_pool_size),
            web_queue_limit=_int(env, "WEB_QUEUE_LIMIT", d.web_queue_limit, minimum=1),
            web_shutdown_timeout=_float(env, "WEB_SHUTDOWN_TIMEOUT", d.web_shutdown_timeout),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", d.max_body_bytes, minimum=256),
            worker_processes=_int(env, "WORKER_PROCESSES", d.worker_processes, minimum=1),
            worker_threads=_int(env, "WORKER_THREADS", d.worker_threads, minimum=1),
            web_instances=_int(env, "WEB_INSTANCES", d.web_instances, minimum=1),
            worker_instances=_int(env, "WORKER_INSTANCES", d.worker_instances, minimum=1),
            db_connection_budget=_optional_int(env, "DB_CONNECTION_BUDGET", minimum=1),
            db_reserved_connections=_int(env, "DB_RESERVED_CONNECTIONS", d.db_reserved_connections),
            web_share=_share(env, "WEB_SHARE"),
            lease_ttl_seconds=_float(env, "LEASE_TTL_SECONDS", d.lease_ttl_seconds),
            pool_timeout=_float(env, "POOL_TIMEOUT", d.pool_timeout),
            api_key_cache_seconds=_cache_seconds(
                env, "API_KEY_CACHE_SECONDS", d.api_key_cache_seconds
            ),
            statement_timeout_ms=_int(
                env, "STATEMENT_TIMEOUT_MS", d.statement_timeout_ms, minimum=1
            ),
            lock_timeout_ms=_int(env, "LOCK_TIMEOUT_MS", d.lock_timeout_ms, minimum=1),
            idle_in_transaction_timeout_ms=_int(
                env, "IDLE_IN_TRANSACTION_TIMEOUT_MS", d.idle_in_transaction_timeout_ms, minimum=1
            ),
            transfer_max_retries=_int(env, "TRANSFER_MAX_RETRIES", d.transfer_max_retries),
            transfer_min_backoff_ms=_int(
                env, "TRANSFER_MIN_BACKOFF_MS", d.transfer_min_backoff_ms, minimum=1
            ),
            transfer_max_backoff_ms=_int(
                env, "TRANSFER_MAX_BACKOFF_MS", d.transfer_max_backoff_ms, minimum=1
            ),
            sweeper_grace_seconds=_float(env, "SWEEPER_GRACE_SECONDS", d.sweeper_grace_seconds),
            sweeper_interval_seconds=_float(
                env, "SWEEPER_INTERVAL_SECONDS", d.sweeper_interval_seconds
            ),
            sweeper_batch=_int(env, "SWEEPER_BATCH", d.sweeper_batch, minimum=1),
            restart_backoff_max_seconds=_float(
                env, "RESTART_BACKOFF_MAX_SECONDS", d.restart_backoff_max_seconds
            ),
            event_retention_days=_int(
                env, "EVENT_RETENTION_DAYS", d.event_retention_days, minimum=1
            ),
            event_waiters=_event_waiters(env),
            event_poll_ms=_int(env, "EVENT_POLL_MS", d.event_poll_ms, minimum=1),
            hostname=env.get("SETTLE_HOSTNAME") or d.hostname,
            log_format=_choice(env, "LOG_FORMAT", d.log_format, ("auto", "json", "text")),
            metrics_dir=env.get("METRICS_DIR") or d.metrics_dir,
            dashboard_idle_seconds=_float(env, "DASHBOARD_IDLE_SECONDS", d.dashboard_idle_seconds),
            dashboard_secure_cookie=_bool(
                env, "DASHBOARD_SECURE_COOKIE", d.dashboard_secure_cookie
            ),
            dashboard_session_secret=_secret(env, "DASHBOARD_SESSION_SECRET"),
            dashboard_pending_threshold_seconds=_float(
                env, "DASHBOARD_PENDING_THRESHOLD_SECONDS", d.dashboard_pending_threshold_seconds
            ),
        )

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

    def with_(self, **changes: object) -> Settings:
        """A copy with `changes` applied (tests and launchers use it)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise InvalidSetting(f"unknown settings: {sorted(unknown)}")
        return replace(self, **changes)  # type: ignore[arg-type]
