"""What every resource under /dashboard is built with, pages and JSON twin alike."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from shared.config import Settings
from web.dashboard.access import Access
from web.dashboard.actions import BrokerCalls
from web.dashboard.data import OverviewSource


@dataclass(frozen=True)
class Dashboard:
    """The dashboard's collaborators, made once by `add_dashboard`: who is asking
    (`access`), the pool, the settings, what its actions ask of the broker, and where the
    overview comes from."""

    access: Access
    pool: ConnectionPool
    settings: Settings
    broker: BrokerCalls
    overview: OverviewSource


class Resource:
    """A resource under /dashboard. It checks who is asking itself (a session, or the JSON
    twin's key), so the API's key middleware lets it by; one instance serves every thread."""

    public = True

    def __init__(self, dashboard: Dashboard) -> None:
        self._access = dashboard.access
        self._pool = dashboard.pool
        self._settings = dashboard.settings
        self._broker = dashboard.broker
        self._overview = dashboard.overview

    @property
    def _threshold(self) -> float:
        """How long a pending transfer waits before it counts as stuck."""
        return self._settings.dashboard_pending_threshold_seconds
