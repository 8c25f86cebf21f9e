"""Webhooks: URLs subscribed to the transfer events, and the signed deliveries made to them.

- `signing`: each endpoint's signing secret, derived from SECRET_KEY and never stored, and
  the `Settle-Signature` header (one `v1=` per secret in use, two during a rotation);
- `addresses`: which URLs may be subscribed and which addresses may be connected to (no
  private, loopback, link-local, multicast or reserved ones unless WEBHOOK_ALLOW_PRIVATE);
- `endpoints`: the endpoints' use cases (create, list, read, delete, rotate the secret);
- `operator`: what operators see of deliveries (failing endpoints first, attempts) and
  retrying failed ones (the dashboard's webhooks pages, `settle webhooks`).

The tables are described in migration 0013; docs/api.md's webhooks section is the caller's guide.
"""
