"""The lines `settle run` prints for a newcomer: the amount they send reads in its currency,
the lists and the waits they can try are there, and passwords are not."""

from __future__ import annotations

from shared.commands.run import Banner
from shared.config import Settings
from shared.ledger.seed import Demo, DemoKeys


def banner(**env: str) -> str:
    settings = Settings.from_env(env)
    keys = DemoKeys("settle_op", "settle_alice")
    return "\n".join(
        Banner("http://127.0.0.1:5000", settings, Demo(1, 2, 3, 4, 5), keys, {}, {}).lines()
    )


def test_the_banner_says_what_its_amount_is_in_the_demo_currency_and_offers_the_lists() -> None:
    text = banner()
    assert "1250 is 12.50 EUR" in text
    assert '"amount": 1250' in text and '"metadata": {"order_id": "demo-1"}' in text
    for path in (
        "/users/me",
        "/accounts",
        "/transfers?limit=10&metadata[order_id]=demo-1",
        "/events?limit=10",
    ):
        assert f"http://127.0.0.1:5000{path}" in text
    assert "-H 'Prefer: wait=30' http://127.0.0.1:5000/transfers/" in text


def test_the_banner_names_the_database_and_the_broker_with_their_passwords_hidden() -> None:
    text = banner(
        DATABASE_URL="postgresql://settle:s3cret@db:5432/settle",
        BROKER_URL="amqp://settle:hunter22@mq:5672/settle",
    )
    assert "  database:  postgresql://settle:***@db:5432/settle  (DATABASE_URL)" in text
    assert "  broker:    RabbitMQ at amqp://settle:***@mq:5672/settle  (BROKER_URL)" in text
    assert "s3cret" not in text and "hunter22" not in text
