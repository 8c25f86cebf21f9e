"""The operator dashboard at /dashboard: server-rendered pages (see `pages`, drawn from the
Jinja2 templates in `templates/`) and their JSON twin under /dashboard/api (see `api`,
documented in `openapi`), served by the web front."""

from __future__ import annotations

from collections.abc import Callable

import falcon
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.config import Settings
from web.dashboard import api, pages
from web.dashboard.access import Access
from web.dashboard.actions import BrokerCalls, Enqueue
from web.dashboard.data import OverviewSource, broker_functions
from web.dashboard.headers import ProtectiveHeaders
from web.dashboard.resource import Dashboard


def add_dashboard(
    app: falcon.App,
    settings: Settings,
    *,
    pool: ConnectionPool,
    enqueue: Enqueue,
    ping_broker: Callable[[], object],
    queues: SettleBroker | None,
) -> None:
    """Route the dashboard's pages and their JSON twin on `app`; `enqueue` sends a retried
    transfer, `ping_broker` checks the broker before an action, and `queues` (the broker,
    or None) is how it counts the queue and drops dead letters. Every answer under
    /dashboard gets the headers of `web.dashboard.headers`."""
    queue_depths, clear_dead = broker_functions(queues, pool)
    d = Dashboard(
        access=Access(settings, pool),
        pool=pool,
        settings=settings,
        broker=BrokerCalls(ping=ping_broker, enqueue=enqueue, clear_dead=clear_dead),
        overview=OverviewSource(pool, settings, queue_depths),
    )
    routes: dict[str, object] = {
        "/dashboard": pages.Overview(d),
        "/dashboard/login": pages.Login(d),
        "/dashboard/logout": pages.Logout(d),
        "/dashboard/static/dashboard.css": pages.Stylesheet(),
        "/dashboard/transfers": pages.TransferList(d),
        "/dashboard/transfers/retry": pages.BulkRetry(d),
        "/dashboard/transfers/{transfer_id}": pages.Transfer(d),
        "/dashboard/transfers/{transfer_id}/retry": pages.RetryOne(d),
        "/dashboard/transfers/{transfer_id}/cancel": pages.Cancel(d),
        "/dashboard/actions": pages.Actions(d),
        "/dashboard/webhooks": pages.Webhooks(d),
        "/dashboard/webhooks/{endpoint_id}": pages.WebhookEndpoint(d),
        "/dashboard/webhooks/{endpoint_id}/retry": pages.WebhookRetryFailed(d),
        "/dashboard/webhooks/{endpoint_id}/deliveries/{delivery_id}": pages.WebhookDelivery(d),
        "/dashboard/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry": (
            pages.WebhookRetryOne(d)
        ),
        "/dashboard/api/overview": api.Overview(d),
        "/dashboard/api/transfers": api.Transfers(d),
        "/dashboard/api/transfers/count": api.TransferCount(d),
        "/dashboard/api/transfers/retry": api.BulkRetry(d),
        "/dashboard/api/transfers/{transfer_id}": api.Transfer(d),
        "/dashboard/api/transfers/{transfer_id}/retry": api.RetryOne(d),
        "/dashboard/api/transfers/{transfer_id}/cancel": api.Cancel(d),
        "/dashboard/api/actions": api.Actions(d),
        "/dashboard/api/webhooks": api.Webhooks(d),
        "/dashboard/api/webhooks/{endpoint_id}": api.WebhookEndpoint(d),
        "/dashboard/api/webhooks/{endpoint_id}/retry": api.WebhookRetryFailed(d),
        "/dashboard/api/webhooks/{endpoint_id}/deliveries": api.WebhookDeliveries(d),
        "/dashboard/api/webhooks/{endpoint_id}/deliveries/{delivery_id}": api.WebhookDelivery(d),
        "/dashboard/api/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry": (
            api.WebhookRetryOne(d)
        ),
    }
    for template, resource in routes.items():
        app.add_route(template, resource)
    app.add_middleware(ProtectiveHeaders())
