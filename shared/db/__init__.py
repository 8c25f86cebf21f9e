"""Database infrastructure: pools, the connection budget and its leases, migrations."""
