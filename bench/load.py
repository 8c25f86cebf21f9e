"""Load generators of the bench suite: wrk for reads, pgbench for the database baselines, and
an open-loop HTTP client that offers POST /transfers at a fixed rate. Each one targets
127.0.0.1, runs for a fixed time and stops by itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "reads.lua"
WRK_TRANSFERS = Path(__file__).resolve().parent / "wrk" / "transfers.lua"


def require(tool: str, package: str) -> str:
    """The path of `tool`, or exit naming the Debian package that provides it."""
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench: {tool} is missing; `make bench` installs it (apt-get {package})")
    return path


@dataclass
class Wrk:
    """One wrk run: requests per second, latency percentiles (ms), failures."""

    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    statuses: dict[int, int] = field(default_factory=dict)  # answers by status (POST script)


def wrk(
    port: int, prefix: str, ids: tuple[int, int] | None, key: str | None, seconds: float
) -> Wrk:
    """GET `prefix`<random id in ids> on 127.0.0.1:`port` for `seconds` with wrk -t2 -c32
    (a `prefix` holding `{id}` gets the id there instead, e.g. `/transfers?account_id={id}`;
    with `ids` None, `prefix` is the whole path)."""
    out = subprocess.run(
        [
            require("wrk", "wrk"),
            "-t2",
            "-c32",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(WRK_SCRIPT),
            f"http://127.0.0.1:{port}",
            "--",
            prefix,
            "" if ids is None else str(ids[0]),
            "" if ids is None else str(ids[1]),
            key or "",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    return _figures(out)


def _figures(out: str) -> Wrk:
    """The figures of the WRK_JSON line our wrk scripts print at the end."""
    match = re.search(r"^WRK_JSON (.*)$", out, re.MULTILINE)
    if match is None:
        raise SystemExit(f"bench: wrk printed no figures:\n{out}")
    raw = json.loads(match.group(1))
    return Wrk(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        requests=raw["requests"],
        non_2xx=raw["non_2xx"],
        socket_errors=raw["socket_errors"],
        statuses={int(k): v for k, v in raw.get("statuses", {}).items()},
    )


def wrk_transfers(
    port: int, accounts: tuple[int, int], key: str, tag: str, seconds: float, connections: int
) -> Wrk:
    """POST /transfers on 127.0.0.1:`port` in a closed loop for `seconds`: wrk -t2 with
    `connections` connections, each sending its next transfer (between two random accounts
    in `accounts`, Idempotency-Key `<tag>-<thread>-<n>`) as soon as the last is answered."""
    out = subprocess.run(
        [
            require("wrk", "wrk"),
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_TRANSFERS),
            f"http://127.0.0.1:{port}",
            "--",
            str(accounts[0]),
            str(accounts[1]),
            key,
            tag,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    return _figures(out)


def libpq_env(url: str) -> dict[str, str]:
    """libpq's PG* variables for the conninfo `url` (pgbench and node-postgres read them)."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    params = conninfo_to_dict(url)
    env = {names[k]: str(v) for k, v in params.items() if k in names and v is not None}
    env["PGDATABASE"] = str(params.get("dbname", "postgres"))
    return env


def pgbench(url: str, args: list[str], *, timeout: float) -> float:
    """Run pgbench with `args` against `url`'s database; the tps it reports (0 for -i)."""
    out = subprocess.run(
        [require("pgbench", "postgresql-client"), *args],
        env={**os.environ, **libpq_env(url)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: pgbench {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    if "-i" in args:
        return 0.0
    match = re.search(r"^tps = ([0-9.]+)", out.stdout, re.MULTILINE)
    if match is None:
        raise SystemExit(f"bench: pgbench printed no tps:\n{out.stdout}")
    return float(match.group(1))


@dataclass
class Offered:
    """What an open-loop run offered and what came back."""

    offered_rate: float
    seconds: float
    sent: int = 0
    accepted: list[int] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)  # status -> count (0: no answer)
    latencies: list[float] = field(default_factory=list)  # seconds, accepted requests only
    late: int = 0  # requests sent more than 10 ms after their slot
    sending: float = 0.0  # seconds from the first slot to the last request sent

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.sending if self.sending else 0.0

    @property
    def accepted_rate(self) -> float:
        return len(self.accepted) / self.sending if self.sending else 0.0


def offer_transfers(
    port: int,
    headers: dict[str, str],
    next_pair: Callable[[int], tuple[int, int, int]],
    *,
    rate: float,
    seconds: float,
    connections: int = 256,
) -> Offered:
    """POST /transfers at `rate` per second for `seconds`, each with a fresh Idempotency-Key.
    Open loop: request i is due at start + i/rate whatever became of the earlier ones. It goes
    out on an idle keep-alive connection, or on a new one while fewer than `connections` are
    open; only when all of them are busy does it go late (`late` counts those), so the rate
    achieved says whether the offer was real. One asyncio loop, so the client's own cost
    stays small beside the server's."""
    return asyncio.run(_offer(port, headers, next_pair, rate, seconds, connections))


class _Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, bool]:
        """(status, body, whether the server keeps the connection open)."""
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body
        )
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split()[1])
        length, keep = 0, True
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        return status, await self.reader.readexactly(length), keep

    def close(self) -> None:
        self.writer.close()


async def _offer(
    port: int,
    headers: dict[str, str],
    next_pair: Callable[[int], tuple[int, int, int]],
    rate: float,
    seconds: float,
    connections: int,
) -> Offered:
    result = Offered(offered_rate=rate, seconds=seconds)
    # Idle connections; None is the room to open one in place of a connection that failed.
    idle: asyncio.Queue[_Connection | None] = asyncio.Queue()
    opened = 0
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(conn: _Connection | None, i: int, due: float) -> None:
        payer, payee, amount = next_pair(i)
        body = json.dumps(
            {"from_account_id": payer, "to_account_id": payee, "amount": amount}
        ).encode()
        sent = loop.time()
        result.sent += 1
        result.sending = max(result.sending, sent - start)
        if sent - due > 0.010:
            result.late += 1
        status, raw, keep = 0, b"", False
        try:
            if conn is None:
                conn = _Connection(*await asyncio.open_connection("127.0.0.1", port))
            status, raw, keep = await asyncio.wait_for(
                conn.post(
                    "/transfers",
                    {
                        "Content-Type": "application/json",
                        "Idempotency-Key": uuid.uuid4().hex,
                        **headers,
                    },
                    body,
                ),
                timeout=10,
            )
        except (TimeoutError, OSError, ValueError, IndexError, EOFError):
            status = 0  # no answer
        if not keep and conn is not None:
            conn.close()
            conn = None
        took = loop.time() - sent
        if status == 202:
            result.accepted.append(int(json.loads(raw)["data"]["id"]))
            result.latencies.append(took)
        else:
            result.refused[status] = result.refused.get(status, 0) + 1
        idle.put_nowait(conn)

    start = loop.time() + 0.1
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        conn: _Connection | None
        if not idle.empty():
            conn = idle.get_nowait()
        elif opened < connections:
            opened += 1
            conn = None  # opened by the request itself
        else:
            conn = await idle.get()  # every connection busy: this request goes late
        task = asyncio.create_task(one(conn, i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    while not idle.empty():
        left = idle.get_nowait()
        if left is not None:
            left.close()
    return result
