"""Database infrastructure: pools, the connection budget and its leases, migrations."""

from psycopg.rows import DictRow

#: A row as the queries read it, by column name (psycopg's `dict_row`), and a JSON-ready
#: dict made of one.
Row = DictRow
