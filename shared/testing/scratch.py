"""Scratch databases: a fresh, migrated database of its own for a test suite, a test that must
see a whole ledger (an audit, a fault test) or a benchmark, created on a server and dropped
afterwards. Likewise scratch RabbitMQ vhosts (`scratch_vhost`), made and deleted with
`rabbitmqctl`. The one implementation: tests/ and bench/ both use it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shared.db.migrate import migrate


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "settle_scratch") -> Iterator[str]:
    """Create and migrate a database on the server of `server_url`; yield its URL; drop it
    (closing any connection left to it) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def rabbitmqctl(*args: str) -> None:
    """Run `rabbitmqctl` on this machine's RabbitMQ node (it needs root, or the node's
    Erlang cookie). Raises `RuntimeError` with its output when it fails."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "--quiet", *args], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise RuntimeError(
            "rabbitmqctl is not installed: the RabbitMQ tests make a vhost of their own with it,"
            " so run them on the RabbitMQ host (as root)"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")


def add_vhost(name: str, user: str) -> None:
    """Create vhost `name` on this machine's RabbitMQ node and give `user` every permission
    on it, in one rabbitmqctl run (each boots an Erlang VM: seconds on a busy machine)."""
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    definitions = {
        "vhosts": [{"name": name}],
        "permissions": [{"user": user, "vhost": name, **everything}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(definitions, file)
        file.flush()
        os.chmod(file.name, 0o644)  # read by the RabbitMQ node, which runs as its own user
        rabbitmqctl("import_definitions", file.name)


def vhost_of(url: str) -> tuple[str, str]:
    """(vhost, user) named by an `amqp://` URL."""
    parts = urlsplit(url)
    return unquote(parts.path.lstrip("/")) or "/", unquote(parts.username or "guest")


@contextlib.contextmanager
def scratch_vhost(server_url: str, prefix: str = "settle-scratch") -> Iterator[str]:
    """Create a RabbitMQ vhost on the node of `server_url` (`amqp://user:password@host:port/`,
    a node of this machine) and give the URL's user every permission on it; yield the URL of
    that vhost; delete it (its queues, messages and connections with it) on exit."""
    parts = urlsplit(server_url)
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    add_vhost(name, vhost_of(server_url)[1])
    try:
        yield urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    finally:
        rabbitmqctl("delete_vhost", name)
