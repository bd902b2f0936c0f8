"""The console in a real browser: Debian's Chromium driven by Selenium through
chromium-driver (no downloaded browser), against a real ``codex-ingest serve``
on 127.0.0.1 and real PostgreSQL.

It signs in, filters, searches by key, and opens an event whose body is
hostile markup. The markup must show as literal text: no alert fires, no
element of it exists in the page, and the browser's console shows no CSP
violation. The token never appears in a URL or a page. It saves screenshots
(in the test's temporary directory, and in $CONSOLE_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import live as live_service
from tests.delivery.test_engine import SECRET as WHSEC
from tests.helpers import READ_TOKEN, headers

pytestmark = pytest.mark.needs_program("chromium", "chromedriver")

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def post(base_url: str, tenant: str, key: str, document: dict) -> int:
    body = json.dumps(document).encode()
    request = urllib.request.Request(f"{base_url}/pos/orders/ingest", data=body,
                                     headers=headers(body, tenant=tenant, **{"Idempotency-Key": key}))
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 201
        return json.loads(resp.read())["event_id"]


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def navigates(driver, act) -> None:
    """Do ``act`` (a click, a form's submit) and wait until the page it leads to has replaced
    the old one. Selenium's click and submit return before a form's navigation ends: reading
    the page straight after them reads the old page, or a stale element of it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    act()
    # chromedriver then waits for the new document to load before the next command.
    WebDriverWait(driver, 30, poll_frequency=0.05).until(expected_conditions.staleness_of(old))


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    wanted = os.environ.get("CONSOLE_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(wanted) / path.name)
    return path


def test_sign_in_filter_search_and_a_hostile_event_stays_text(live, db, browser, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver = browser
    for n in range(5):
        post(live.url, f"shop-{n % 2}", f"order-{n}", {"type": "order.created", "n": n})
    hostile_id = post(live.url, "shop-1", "hostile-1", {"note": HOSTILE})

    driver.get(f"{live.url}/console/events")
    assert driver.current_url.endswith("/console/signin")
    driver.find_element(By.NAME, "token").send_keys(READ_TOKEN)
    navigates(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/console/signin'] button").click)
    assert driver.current_url.endswith("/console/events")
    rows = driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    assert len(rows) == 6
    screenshot(driver, tmp_path, "events")

    tenant = driver.find_element(By.NAME, "tenant")
    tenant.send_keys("shop-0")
    navigates(driver, tenant.submit)
    tenants = {r.find_elements(By.TAG_NAME, "td")[1].text for r in driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")}
    assert tenants == {"shop-0"} and "tenant=shop-0" in driver.current_url

    driver.get(f"{live.url}/console/events")
    search = driver.find_element(By.NAME, "q")
    search.send_keys("hostile-1")
    navigates(driver, search.submit)
    links = driver.find_elements(By.CSS_SELECTOR, "#events tbody a")
    assert [a.text for a in links] == [str(hostile_id)]
    navigates(driver, links[0].click)

    assert driver.current_url.endswith(f"/console/events/{hostile_id}")
    raw = driver.find_element(By.ID, "body-raw").text
    assert HOSTILE in raw  # shown literally (json.dumps kept < and > as they are)
    assert HOSTILE in driver.find_element(By.ID, "body-pretty").text
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert  # reading it is the check: it raises when none is open
    assert driver.find_elements(By.TAG_NAME, "script") == []
    assert driver.find_elements(By.CSS_SELECTOR, "img[onerror]") == []
    screenshot(driver, tmp_path, "event")

    log = driver.get_log("browser")
    violations = [entry for entry in log if "Content Security Policy" in entry.get("message", "")]
    assert violations == [], violations
    assert READ_TOKEN not in driver.current_url and READ_TOKEN not in driver.page_source
    assert all(READ_TOKEN not in c["value"] for c in driver.get_cookies())


def sign_in_as_operator(driver, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/console/signin")
    driver.find_element(By.NAME, "token").send_keys(READ_TOKEN)
    navigates(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/console/signin'] button").click)


def delivery_state(driver, destination: str) -> str | None:
    from selenium.webdriver.common.by import By

    for row in driver.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        if cells and cells[0].text == destination:
            return cells[1].text
    return None


def test_a_parked_delivery_is_retried_from_its_event_page(database_url, db, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    with live_service.receiver(WHSEC, "fails-then-ok", "--times", "2", "--per", "webhook-id") as url:
        sources = tmp_path / "sources.toml"
        sources.write_text(f'[destinations.backend]\nurl = "{url}"\nsecrets = ["{WHSEC}"]\n'
                           "allow_private_network = true\nretry_schedule = [0.05]\n")
        with live_service.serve(database_url, CODEX_API_TOKENS=f"{READ_TOKEN}=*", CODEX_SOURCES=str(sources)) as service:
            event_id = post(service.url, "shop-1", "order-1", {"type": "order.created"})
            sign_in_as_operator(driver, service.url)
            page = f"{service.url}/console/events/{event_id}"

            def shows(state: str):
                def check(_driver) -> bool:
                    driver.get(page)
                    return delivery_state(driver, "backend") == state
                return check

            # Two failures: the first attempt and its one retry, then parked.
            WebDriverWait(driver, 30, poll_frequency=0.2).until(shows("parked"))
            navigates(driver, driver.find_element(By.CSS_SELECTOR, "#deliveries button.retry").click)
            assert driver.current_url == page
            WebDriverWait(driver, 30, poll_frequency=0.2).until(shows("delivered"))
            statuses = [row.find_elements(By.TAG_NAME, "td")[2].text
                        for row in driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")]
            assert statuses == ["500", "500", "200"]
            screenshot(driver, tmp_path, "event-retried")
            assert [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")] == []
