"""The lines `settle run` prints for a newcomer: the amount they send reads in its currency,
and the lists they can try are there."""

from __future__ import annotations

from shared.cli import _curl_lines
from shared.ledger.seed import Demo, DemoKeys


def test_the_banner_says_what_its_amount_is_in_the_demo_currency_and_offers_the_lists() -> None:
    text = _curl_lines(5000, Demo(1, 2, 3, 4, 5), DemoKeys("settle_op", "settle_alice"))
    assert "1250 is 12.50 EUR" in text
    assert '"amount": 1250' in text and '"metadata": {"order_id": "demo-1"}' in text
    for path in ("/users/me", "/accounts", "/transfers?limit=10&metadata[order_id]=demo-1"):
        assert f"http://127.0.0.1:5000{path}" in text
