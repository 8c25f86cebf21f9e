"""Every field of the dashboard's templates that can carry text shows as text: a key's label,
a last error, metadata keys and values, an Idempotency-Key, an action's detail, a process's
lease holder and role, a filter echoed into a form. Each holds markup of its own, and the
page as a browser parses it has no element and no attribute that markup would have made,
while the text reads exactly as stored. The templates themselves never switch escaping off.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger import auth, dead_letters, operations, operator_actions
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewTransfer
from tests.dashboard import Browser
from tests.helpers import make_account
from tests.integration.test_dashboard import dash, keys, sent_ids  # noqa: F401 (fixtures)

TEMPLATES = Path(__file__).resolve().parents[2] / "web" / "dashboard" / "templates"


def hostile(field: str) -> str:
    """Markup that would add an element and an event handler if printed raw, naming `field`."""
    return f"\"'><img src=x onerror=alert(1) id={field}><script>{field}</script>&amp;"


class _Page(HTMLParser):
    """What a browser makes of a page: its elements, their attributes, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend((name, value or "") for name, value in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_shown_as_text(page: str, *values: str, in_attribute: bool = False) -> None:
    """No element or attribute any of `values` would have made, and each reads whole, in
    the page's text (or, `in_attribute`, as an attribute's value: a form field's)."""
    parsed = _Page(page)
    assert "img" not in parsed.tags and "script" not in parsed.tags, parsed.tags
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    shown = [v for _, v in parsed.attributes] if in_attribute else parsed.text
    for value in values:
        assert any(value in piece for piece in shown), f"{value!r} is not shown as it is"


@pytest.fixture
def error() -> str:
    """The last error of `transfer`: markup, and this test's own."""
    return hostile(f"last-error-{uuid.uuid4().hex}")


@pytest.fixture
def transfer(db: psycopg.Connection, error: str) -> Iterator[int]:
    """A dead-lettered transfer whose Idempotency-Key, metadata and last error are markup,
    with an operator action recorded by a key whose label is markup."""
    source, target = make_account(db, treasury=True), make_account(db)
    new = NewTransfer(
        from_account_id=source,
        to_account_id=target,
        amount=100,
        currency=None,
        # An Idempotency-Key is printable ASCII without spaces.
        idempotency_key=f"\"'><script>idem-{uuid.uuid4().hex}</script>",
        metadata={"<b>key</b>\"'": hostile("metadata-value")},
    )
    tid = int(operations.submit_transfer(db, new, by=SYSTEM)["id"])
    assert dead_letters.mark(db, tid, error)
    labelled = auth.create_key(db, user_id=None, label=hostile("label")).key
    by = operator_actions.require_acting(auth.authenticate(db, labelled))
    operator_actions.record(db, by, "retry", [tid], hostile("detail"))
    yield tid


def test_a_transfers_page_shows_every_text_field_as_text(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    db: psycopg.Connection,
    transfer: int,
    error: str,
) -> None:
    browser = Browser(dash, keys["operator"])
    page = browser.get(f"/dashboard/transfers/{transfer}")
    assert page.status_code == 200
    row = db.execute("SELECT idempotency_key FROM transfers WHERE id = %s", (transfer,)).fetchone()
    assert row is not None
    assert_shown_as_text(
        page.text,
        row[0],
        "<b>key</b>\"'",
        hostile("metadata-value"),
        error,
        hostile("label"),
        hostile("detail"),
    )
    cancel = browser.get(f"/dashboard/transfers/{transfer}/cancel")
    assert cancel.status_code == 200 and "cannot be undone" in cancel.text
    assert_shown_as_text(cancel.text)


def test_the_list_and_the_actions_page_show_every_text_field_as_text(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    transfer: int,
    error: str,
) -> None:
    browser = Browser(dash, keys["read-only"])
    listed = browser.get("/dashboard/transfers", params={"error": error})
    assert f">{transfer}</a>" in listed.text
    assert_shown_as_text(listed.text, error)
    assert_shown_as_text(listed.text, error, in_attribute=True)  # the filter
    confirm = browser.get("/dashboard/transfers/retry", params={"error": error})
    assert '<b id="retry-count">1</b>' in confirm.text
    assert_shown_as_text(confirm.text, error)
    assert_shown_as_text(confirm.text, error, in_attribute=True)  # the form
    actions = browser.get("/dashboard/actions")
    assert_shown_as_text(actions.text, hostile("label"), hostile("detail"))


def test_the_overview_shows_a_process_lease_as_text(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    db: psycopg.Connection,
) -> None:
    holder, role = hostile(f"holder-{uuid.uuid4().hex}"), hostile("role")
    db.execute(
        "INSERT INTO connection_leases (holder, role, wanted, granted) VALUES (%s, %s, 1, 1)",
        (holder, role),
    )
    try:
        page = Browser(dash, keys["operator"]).get("/dashboard")
        assert page.status_code == 200
        assert_shown_as_text(page.text, holder, role)
    finally:
        db.execute("DELETE FROM connection_leases WHERE holder = %s", (holder,))


def test_no_template_switches_escaping_off() -> None:
    """Autoescape is on for every template (`web.dashboard.render`), and no template opts a
    value out of it: data is never marked safe."""
    from web.dashboard.render import _ENVIRONMENT

    names = sorted(p.name for p in TEMPLATES.glob("*.html"))
    assert names and _ENVIRONMENT.list_templates() == names
    for name in names:
        assert _ENVIRONMENT.get_template(name).environment.autoescape is True
        source = (TEMPLATES / name).read_text()
        for opt_out in ("|safe", "| safe", "autoescape false", "Markup("):
            assert opt_out not in source, f"{name} holds {opt_out!r}"
