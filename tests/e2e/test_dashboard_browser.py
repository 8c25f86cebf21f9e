"""The dashboard in a real browser (headless Chromium driven by Selenium) against the real
web and worker processes: log in, find a dead-lettered transfer by its business fields,
filter, bulk-retry it with confirmation, see it settle, cancel another after confirming, log
out; a read-only key sees the same pages and cannot act; the webhooks pages, from the
navigation to retrying an endpoint's failed deliveries. All of it under the pages'
Content-Security-Policy, which the browser reports no violation of. A screenshot of the
overview is kept under the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.ledger import auth
from tests.dashboard import dead_lettered, webhook_delivery, webhook_endpoint
from tests.e2e.conftest import Service
from tests.helpers import transfer_row, wait_until

pytestmark = pytest.mark.e2e

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


def _ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver when absent (as CI's machine can)."""
    if Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail("chromium and chromium-driver are missing and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update"], check=True, env=env, timeout=600)
    subprocess.run(
        [apt, "install", "-y", "chromium", "chromium-driver"], check=True, env=env, timeout=900
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    _ensure_chromium()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for CSP
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _on(driver, path: str, *, showing: str) -> None:
    """Wait until the browser has loaded `path` (the URL's path, any query) showing `showing`
    (a click submits asynchronously)."""

    def there() -> bool:
        url = driver.current_url.split("?", 1)[0]
        return url.endswith(path) and showing in driver.page_source

    wait_until(there, timeout=10, what=f"the browser shows {path} with {showing!r}")


def _csp_violations(driver) -> list[str]:
    """Console messages since the last call that report a Content-Security-Policy violation
    (Chromium logs each one: "Refused to ... because it violates the following Content
    Security Policy directive")."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def _log_in(driver, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/dashboard")
    _on(driver, "/dashboard/login", showing="Operator API key")  # no session: the login form
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "login").click()
    _on(driver, "/dashboard", showing="<h1>Overview</h1>")


def test_an_operator_finds_filters_and_bulk_retries_a_dead_letter_and_a_viewer_cannot(
    service: Service, browser, db: psycopg.Connection, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    service.env.update(WEB_PROCESSES="1", WORKER_PROCESSES="1", WORKER_THREADS="2")
    service.start_web()
    service.start_worker()
    base = f"http://127.0.0.1:{service.port}"
    marker = f"could not serialize access {uuid.uuid4().hex[:8]}"
    parked = dead_lettered(db, amount=123_456, error=marker)
    untouched = dead_lettered(db, amount=777, error=f"other {uuid.uuid4().hex[:8]}")
    doomed = dead_lettered(db, amount=4_242, error=f"doomed {uuid.uuid4().hex[:8]}")
    row = transfer_row(db, parked)
    operator = auth.create_key(db, user_id=None, label="browser operator").key
    viewer = auth.create_key(db, user_id=None, read_only=True, label="browser viewer").key

    _log_in(driver, base, operator)
    assert "Transfers" in driver.page_source and "Connection budget" in driver.page_source
    driver.save_screenshot(str(tmp_path / "overview.png"))
    assert (tmp_path / "overview.png").stat().st_size > 0
    # On a phone-sized screen the page fits its width (wide tables scroll inside their box).
    driver.set_window_size(390, 844)
    driver.refresh()
    _on(driver, "/dashboard", showing="<h1>Overview</h1>")
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    driver.save_screenshot(str(tmp_path / "overview-phone.png"))
    driver.set_window_size(1280, 1600)

    # The list, filtered by the error text, shows the transfer with its business fields.
    driver.find_element(By.LINK_TEXT, "Transfers").click()
    _on(driver, "/dashboard/transfers", showing="Transfers needing attention")
    driver.find_element(By.NAME, "error").send_keys(marker)
    driver.find_element(By.XPATH, "//button[text()='Filter']").click()
    _on(driver, "/dashboard/transfers", showing="1 transfer(s) match")
    table = driver.find_element(By.TAG_NAME, "table").text
    listed = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "tbody td:first-child a")]
    assert listed == [str(parked)]
    for shown in (
        "1,234.56 EUR",
        marker,
        f"account {row['from_account_id']}",
        f"account {row['to_account_id']}",
        "dead-lettered",
    ):
        assert shown in table, shown

    # Bulk retry: the confirmation shows the count, then the batch runs.
    driver.find_element(By.PARTIAL_LINK_TEXT, "Retry all 1 dead-lettered").click()
    _on(driver, "/dashboard/transfers/retry", showing="retry-count")
    assert driver.find_element(By.ID, "retry-count").text == "1"
    driver.find_element(By.XPATH, "//button[text()='Yes, retry 1']").click()
    _on(driver, "/dashboard/transfers/retry", showing="retry-result")
    assert "Sent 1 transfer(s) again" in driver.find_element(By.ID, "retry-result").text

    # The real worker settles it.
    wait_until(
        lambda: transfer_row(db, parked)["status"] == "settled",
        timeout=30,
        what=f"transfer {parked} settles",
    )
    driver.get(f"{base}/dashboard/transfers/{parked}")
    _on(driver, f"/dashboard/transfers/{parked}", showing="bulk retry of 1 transfer(s)")
    assert "settled" in driver.page_source
    assert transfer_row(db, untouched)["dead_lettered_at"] is not None

    # Cancel: the transfer's button asks first, and the confirmation's button does it.
    driver.get(f"{base}/dashboard/transfers/{doomed}")
    _on(driver, f"/dashboard/transfers/{doomed}", showing="dead-lettered")
    driver.find_element(By.XPATH, "//button[starts-with(text(), 'Cancel...')]").click()
    _on(driver, f"/dashboard/transfers/{doomed}/cancel", showing="cannot be undone")
    assert "42.42 EUR" in driver.find_element(By.ID, "cancel-warning").text
    assert transfer_row(db, doomed)["dead_lettered_at"] is not None
    driver.find_element(By.XPATH, f"//button[text()='Yes, cancel transfer {doomed}']").click()
    _on(driver, f"/dashboard/transfers/{doomed}", showing="cancelled_by_operator")
    assert transfer_row(db, doomed)["status"] == "failed"

    # Log out: the session is over.
    driver.find_element(By.XPATH, "//button[text()='Log out']").click()
    _on(driver, "/dashboard/login", showing="Operator API key")
    driver.get(f"{base}/dashboard")
    _on(driver, "/dashboard/login", showing="Operator API key")

    # A read-only key sees the dead letter, its buttons are disabled, and forcing one is 403.
    _log_in(driver, base, viewer)
    assert "read-only operator key" in driver.page_source
    driver.get(f"{base}/dashboard/transfers/{untouched}")
    _on(driver, f"/dashboard/transfers/{untouched}", showing="(read-only key)")
    retry = driver.find_element(By.XPATH, "//button[text()='Retry']")
    assert retry.get_attribute("disabled") is not None
    driver.execute_script("document.querySelectorAll('button').forEach(b => b.disabled = false)")
    driver.find_element(By.XPATH, "//button[text()='Retry']").click()
    wait_until(lambda: "read_only_key" in driver.page_source, timeout=10, what="the refusal page")
    assert transfer_row(db, untouched)["dead_lettered_at"] is not None

    # Every page above rendered and worked under its CSP: the browser reported no violation.
    # (An inline style added now is refused and reported: the check does see violations.)
    assert _csp_violations(driver) == []
    driver.execute_script(
        "const s = document.createElement('style'); s.textContent = 'body { color: red }';"
        " document.head.appendChild(s);"
    )
    wait_until(lambda: bool(_csp_violations(driver)), timeout=10, what="the refused inline style")
    db.execute(
        "UPDATE transfers SET dead_lettered_at = NULL, status = 'failed',"
        " failure_code = 'cancelled_by_operator', finished_at = now() WHERE id = %s",
        (untouched,),
    )


def test_an_operator_finds_a_failing_webhook_endpoint_and_retries_its_deliveries(
    service: Service, browser, db: psycopg.Connection
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    service.env.update(WEB_PROCESSES="1")
    service.start_web()
    base = f"http://127.0.0.1:{service.port}"
    tag = uuid.uuid4().hex[:8]
    endpoint = webhook_endpoint(db, f"http://127.0.0.1:9/browser-{tag}")
    error = f"HTTP 500 from receiver {tag}"
    failed = [webhook_delivery(db, endpoint, "failed", [(500, error)] * 2) for _ in range(2)]
    operator = auth.create_key(db, user_id=None, label="browser operator").key
    viewer = auth.create_key(db, user_id=None, read_only=True, label="browser viewer").key
    try:
        # A viewer finds the endpoint from the navigation; its retry button is disabled.
        _log_in(driver, base, viewer)
        driver.find_element(By.LINK_TEXT, "Webhooks").click()
        _on(driver, "/dashboard/webhooks", showing=f"browser-{tag}")
        assert error in driver.page_source
        driver.find_element(By.LINK_TEXT, str(endpoint)).click()
        _on(driver, f"/dashboard/webhooks/{endpoint}", showing="Retry all 2 failed deliveries")
        button = driver.find_element(By.XPATH, "//button[text()='Retry all 2 failed deliveries']")
        assert button.get_attribute("disabled") is not None
        driver.find_element(By.XPATH, "//button[text()='Log out']").click()
        _on(driver, "/dashboard/login", showing="Operator API key")

        # An operator opens a delivery's attempts, then retries every failed delivery.
        _log_in(driver, base, operator)
        driver.get(f"{base}/dashboard/webhooks/{endpoint}")
        _on(driver, f"/dashboard/webhooks/{endpoint}", showing="Retry all 2 failed deliveries")
        driver.find_element(By.LINK_TEXT, str(failed[0])).click()
        path = f"/dashboard/webhooks/{endpoint}/deliveries/{failed[0]}"
        _on(driver, path, showing="Retry this delivery")
        assert driver.page_source.count(error) >= 2  # both attempts
        driver.get(f"{base}/dashboard/webhooks/{endpoint}")
        _on(driver, f"/dashboard/webhooks/{endpoint}", showing="Retry all 2 failed deliveries")
        driver.find_element(By.XPATH, "//button[text()='Retry all 2 failed deliveries']").click()
        _on(driver, f"/dashboard/webhooks/{endpoint}/retry", showing="retry-result")
        assert "Set 2 failed delivery(ies) pending again" in driver.page_source
        statuses = db.execute(
            "SELECT array_agg(DISTINCT status) FROM webhook_deliveries WHERE endpoint_id = %s",
            (endpoint,),
        ).fetchone()
        assert statuses == (["pending"],)
        driver.find_element(By.LINK_TEXT, "Actions").click()
        _on(driver, "/dashboard/actions", showing="retry_webhook")
        assert _csp_violations(driver) == []
    finally:
        # Nothing is to be delivered to this endpoint by another test's workers.
        db.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = %s", (endpoint,))
        db.execute(
            "UPDATE webhook_deliveries SET status = 'cancelled', finished_at = now()"
            " WHERE endpoint_id = %s",
            (endpoint,),
        )
