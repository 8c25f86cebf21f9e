"""Settings are data: each is declared once, and its parsing, its error message and its row
in docs/configuration.md all come from that declaration."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings
from shared.config.spec import declared, markdown_table, replace_table
from shared.errors import InvalidSetting

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SETTLE = Path(sys.executable).with_name("settle")


def test_the_docs_table_is_the_one_the_declarations_generate() -> None:
    page = CONFIGURATION.read_text(encoding="utf-8")
    assert replace_table(page, markdown_table(Settings)) == page, (
        "docs/configuration.md's settings table and shared/config/settings.py disagree:"
        " run `make docs-settings`"
    )


def test_a_setting_missing_from_the_docs_table_is_noticed() -> None:
    page = CONFIGURATION.read_text(encoding="utf-8")
    without = "".join(
        line for line in page.splitlines(keepends=True) if not line.startswith("| `PORT`")
    )
    assert replace_table(without, markdown_table(Settings)) != without


def test_every_field_of_settings_is_a_declared_setting_with_its_own_variable() -> None:
    names = [spec.env for _, spec, _ in declared(Settings)]
    assert len(declared(Settings)) == len(dataclasses.fields(Settings))
    assert len(set(names)) == len(names)
    assert all(spec.doc for _, spec, _ in declared(Settings))


def test_unset_and_empty_variables_give_the_declared_defaults() -> None:
    read = Settings.from_env({"PORT": "", "WEB_THREADS": "  "})
    assert read == Settings(hostname=read.hostname)
    assert (read.port, read.web_threads, read.web_share, read.db_pooler) == (8000, 8, None, "none")


def test_each_type_is_parsed_from_its_declaration() -> None:
    read = Settings.from_env(
        {
            "PORT": "9001",
            "WEB_SHARE": "0.25",
            "DB_CONNECTION_BUDGET": "40",
            "DASHBOARD_SECURE_COOKIE": "yes",
            "LOG_FORMAT": "JSON",
            "SETTLE_HOSTNAME": "host-a",
            "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/",
        }
    )
    assert read.port == 9001
    assert read.web_share == 0.25
    assert read.db_connection_budget == 40
    assert read.dashboard_secure_cookie is True
    assert read.log_format == "json"
    assert read.hostname == "host-a"
    assert read.broker == "rabbitmq"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT='eighty' is not an integer"),
        ({"WEB_THREADS": "0"}, "WEB_THREADS=0 must be at least 1"),
        ({"MAX_BODY_BYTES": "255"}, "MAX_BODY_BYTES=255 must be at least 256"),
        ({"POOL_TIMEOUT": "soon"}, "POOL_TIMEOUT='soon' is not a number"),
        ({"POOL_TIMEOUT": "0"}, "POOL_TIMEOUT=0.0 must be positive"),
        ({"WEB_SHARE": "1"}, "WEB_SHARE=1.0 must be between 0 and 1 (exclusive)"),
        ({"API_KEY_CACHE_SECONDS": "1.5"}, "API_KEY_CACHE_SECONDS=1.5 must be between 0 and 1"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml' must be one of auto, json, text"),
        ({"DASHBOARD_SECURE_COOKIE": "maybe"}, "DASHBOARD_SECURE_COOKIE='maybe' is not a boolean"),
        ({"DASHBOARD_SESSION_SECRET": "short"}, "DASHBOARD_SESSION_SECRET must be at least 32"),
        ({"BROKER_URL": "kafka://k:9092"}, "BROKER_URL must start with one of"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSetting) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_a_secret_that_is_too_short_is_not_repeated_in_the_error() -> None:
    with pytest.raises(InvalidSetting) as refused:
        Settings.from_env({"DASHBOARD_SESSION_SECRET": "hunter2-and-more"})
    assert "hunter2" not in str(refused.value)


def test_one_setting_is_read_alone_as_from_env_reads_it() -> None:
    assert Settings.one("log_format", {"LOG_FORMAT": "Text"}) == "text"
    assert Settings.one("log_format", {}) == "auto"
    assert Settings.one("hostname", {}) == Settings().hostname
    with pytest.raises(InvalidSetting, match="LOG_FORMAT='xml'"):
        Settings.one("log_format", {"LOG_FORMAT": "xml"})


@pytest.mark.parametrize("role", ["web", "worker", "sweeper"])
def test_a_bad_log_format_stops_every_process_before_it_starts(role: str) -> None:
    done = subprocess.run(
        [str(SETTLE), role],
        env={**os.environ, "LOG_FORMAT": "xml", "DATABASE_URL": "postgresql://nowhere:1/x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"settle {role}: LOG_FORMAT='xml' must be one of auto, json, text"
