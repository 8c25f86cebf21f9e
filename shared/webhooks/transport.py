"""One webhook request: resolve the host once, check the address, connect to that address
(sending the name in Host and, over https, in SNI and the certificate check), POST, read the
status, and give up at `TIMEOUT` whatever the receiver does (a watchdog closes the socket at
the deadline, so a receiver that answers a byte at a time is cut off too). Redirects are not
followed: a 3xx is an answer like any other non-2xx.

`post` never raises for what the receiver or the network does: every failure is an
`Outcome` with an error, for the delivery's record.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping

from shared.errors import InvalidWebhookUrl, WebhookAddressRefused, first_line
from shared.webhooks.addresses import Address, Target, parse_url, pinned_address
from shared.webhooks.deliveries import Outcome

#: Seconds a request may take, from resolving the host to the status line.
TIMEOUT = 5.0
USER_AGENT = "Settle-Webhooks/1"
#: The longest error text kept per attempt.
MAX_ERROR = 300


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to `address` for the host `host`: the Host header, SNI and the
    certificate check use the name; the socket goes to the address that was checked."""

    def __init__(
        self, host: str, port: int, *, address: Address, timeout: float, tls: bool
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._tls = ssl.create_default_context() if tls else None

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock

    def abort(self) -> None:
        """Cut the connection from another thread: a blocked read or write fails at once."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout: float = TIMEOUT,
) -> Outcome:
    """POST `body` (JSON) with `headers` to `url`, at the address its host resolves to now
    (refused unless public, or `allow_private`); the outcome, never an exception for what the
    receiver or the network did."""
    started = time.monotonic()

    def outcome(status: int | None, error: str | None) -> Outcome:
        elapsed = max(0, round((time.monotonic() - started) * 1000))
        return Outcome(status, None if error is None else error[:MAX_ERROR], elapsed)

    try:
        target = parse_url(url)
        address = pinned_address(target, allow_private=allow_private)
    except (InvalidWebhookUrl, WebhookAddressRefused) as exc:
        return outcome(None, f"not sent: {exc.message}")
    expired = threading.Event()
    try:
        status = _send(target, address, body, headers, timeout, expired)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return outcome(None, f"no answer within {timeout:g}s")
        return outcome(None, f"{type(exc).__name__}: {first_line(exc)}")
    if 200 <= status < 300:
        return outcome(status, None)
    if 300 <= status < 400:
        return outcome(status, f"answered {status} (redirects are not followed)")
    return outcome(status, f"answered {status}")


def _send(
    target: Target,
    address: Address,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    expired: threading.Event,
) -> int:
    conn = _PinnedConnection(
        target.host,
        target.port,
        address=address,
        timeout=timeout,
        tls=target.scheme == "https",
    )

    def expire() -> None:
        expired.set()
        conn.abort()

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **headers,
            },
        )
        response = conn.getresponse()
        return int(response.status)
    finally:
        watchdog.cancel()
        conn.close()
