"""How many messages wait in the broker, read from dramatiq's Redis layout (dramatiq 2.2's
`brokers/redis/dispatch.lua`; pinned by tests/integration/test_metrics.py, which counts real
messages through it).

For a queue `q` in namespace `ns`: `ns:q` is the list of message ids not yet fetched,
`ns:q.msgs` the hash of every message not yet acknowledged (fetched ones included),
`ns:q.DQ.msgs` the same for delayed messages (retries waiting for their backoff), and the
sorted set `ns:q.XQ` the dead letters. Four O(1) commands in one round trip; raises redis
errors.
"""

from __future__ import annotations

from typing import Any

#: The states counted, in the order `settle status` prints them.
STATES = ("ready", "in_flight", "delayed", "dead")


def queue_counts(client: Any, namespace: str, queue: str) -> dict[str, int]:
    """{state: messages} for `queue`: ready (waiting for a worker), in_flight (fetched by a
    worker, not yet acknowledged), delayed (waiting for their retry time) and dead."""
    key = f"{namespace}:{queue}"
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(key)
        pipe.hlen(f"{key}.msgs")
        pipe.hlen(f"{key}.DQ.msgs")
        pipe.zcard(f"{key}.XQ")
        ready, unacked, delayed, dead = (int(n) for n in pipe.execute())
    return {
        "ready": ready,
        "in_flight": max(0, unacked - ready),
        "delayed": delayed,
        "dead": dead,
    }
