"""Transfer events: one ordered sequence of every change of a transfer's state, and the ways
to read it.

Postgres writes the events itself, in the transaction of each change (triggers on
`transfers`, migration 0012), so that no change goes without its event and no event without
its change; `settle audit` checks both (`shared.ledger.audit`). Events carry increasing ids,
and a reader is shown only the events up to the *horizon* (`feed.horizon`), below every id
a transaction still in flight may hold, so that a reader that goes on from the last id it
saw never skips one that commits later.

- `feed`: the page of events after an id, for a key (`GET /events`), and the horizon;
- `waiting`: long-polls, woken when the horizon moves (`GET /events?wait=`,
  `Prefer: wait` on `GET /transfers/{id}`), by one watch per web process;
- `retention`: the sweeper's deletion of events older than EVENT_RETENTION_DAYS.
"""
