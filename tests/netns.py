"""Separate hosts on this machine: Linux network namespaces made by a test, joined by a bridge
in a private /24 that exists only while the test runs, with Postgres and Redis (which listen
on 127.0.0.1 only) reachable from every namespace through socat forwarders on the bridge's
address. Needs root. `hosts(...)` removes everything it made, even when the test fails."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.runtime.embedded import free_port


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route on this machine overlaps."""
    routes = subprocess.run(["ip", "-4", "route"], check=True, capture_output=True, text=True)
    used = []
    for line in routes.stdout.splitlines():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(line.split()[0], strict=False))
    rng = random.Random()
    while True:
        net = ipaddress.ip_network(f"10.{rng.randint(64, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net


@dataclass
class Hosts:
    """The namespaces (name -> netns), their addresses, and the forwarded ports on the
    bridge's address (`gateway`)."""

    gateway: str
    netns: dict[str, str] = field(default_factory=dict)
    address: dict[str, str] = field(default_factory=dict)
    forwarded: dict[str, int] = field(default_factory=dict)

    def command(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.netns[host], *argv]

    def pids(self, host: str) -> list[int]:
        done = subprocess.run(
            ["ip", "netns", "pids", self.netns[host]], capture_output=True, text=True
        )
        return [int(pid) for pid in done.stdout.split()]

    def lose(self, host: str) -> list[int]:
        """Kill every process in `host`'s namespace at once (SIGKILL): the host is gone."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


def _wait_for_listener(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {address}:{port}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def hosts(names: list[str], forward: dict[str, int]) -> Iterator[Hosts]:
    """Make one namespace per name, a bridge joining them to this namespace, and a socat
    forwarder per entry of `forward` (name -> port on 127.0.0.1) listening on the bridge's
    address; yield them; remove it all on exit."""
    tag = uuid.uuid4().hex[:6]
    net = _free_subnet()
    addresses = list(net.hosts())
    bridge = f"sb{tag}"
    made = Hosts(gateway=str(addresses[0]))
    forwarders: list[subprocess.Popen[bytes]] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{addresses[0]}/{net.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names):
            netns, outside, inside = f"settle-{tag}-{name}", f"s{tag}{i}a", f"s{tag}{i}b"
            subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
            made.netns[name] = netns
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("link", "set", inside, "netns", netns)
            address = str(addresses[i + 1])
            _ip("addr", "add", f"{address}/{net.prefixlen}", "dev", inside, netns=netns)
            _ip("link", "set", inside, "up", netns=netns)
            _ip("link", "set", "lo", "up", netns=netns)
            made.address[name] = address
        for what, port in forward.items():
            listen = free_port()
            forwarders.append(
                subprocess.Popen(
                    [
                        "socat",
                        f"TCP-LISTEN:{listen},bind={made.gateway},fork,reuseaddr",
                        f"TCP:127.0.0.1:{port}",
                    ],  # fmt: skip
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            made.forwarded[what] = listen
        for listen in made.forwarded.values():
            _wait_for_listener(made.gateway, listen)
        yield made
    finally:
        for name in made.netns:
            made.lose(name)
        for forwarder in forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(forwarder.pid, signal.SIGKILL)
            forwarder.wait(timeout=10)
        for netns in made.netns.values():
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
