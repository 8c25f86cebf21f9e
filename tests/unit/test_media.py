"""The JSON the API writes: compact, datetimes as ISO 8601 with their offset, any string."""

from __future__ import annotations

import datetime
import json
import zoneinfo

from web.app import dumps


def test_datetimes_are_written_as_isoformat_with_their_utc_offset() -> None:
    utc = zoneinfo.ZoneInfo("Etc/UTC")
    moments = [
        datetime.datetime(2026, 12, 1, 15, 21, 37, 62579, tzinfo=utc),
        datetime.datetime(2026, 1, 1, tzinfo=utc),  # no microseconds: none written
        datetime.datetime(2026, 6, 1, 12, 0, 0, 5, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    ]
    for moment in moments:
        assert dumps({"at": moment}) == b'{"at":"%s"}' % moment.isoformat().encode()


def test_answers_are_compact_and_keep_big_integers_exact() -> None:
    body = {"data": {"id": 2**63 - 1, "balance": -(10**15), "name": "Zoë", "x": None}}
    expected = (
        '{"data":{"id":9223372036854775807,"balance":-1000000000000000,"name":"Zoë","x":null}}'
    )
    assert dumps(body) == expected.encode()


def test_a_string_with_a_lone_surrogate_is_written_escaped() -> None:
    message = {"error": {"code": "invalid_request", "message": "unknown field '\ud800'"}}
    assert json.loads(dumps(message)) == message
