"""The dashboard in headless Chromium (Debian's, via Selenium) against a real server and engine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HAVE_CHROMIUM = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
#: On a developer machine without Debian's chromium the browser tests wait; under CI
#: (.ci/run installs it) a missing browser is a failure, never a skip.
needs_chromium = pytest.mark.skipif(
    not HAVE_CHROMIUM and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (apt-get install them)",
)
#: Flags for a closed network: no background fetches, no QUIC, no first-run, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1400",
)
WAIT_S = 30  # generous: the page polls every second, the machine is shared
KEY = "s3cret-dashboard-key"


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path / "serve-home",
        "backend": "embedded",
        "memory_budget": 4 * 1024**3,
        **overrides,
    }
    return Settings(**values)


# ---------------------------------------------------------------- no browser


def test_dashboard_page_and_assets_are_served_with_their_content_types(tmp_path: Path) -> None:
    client = TestClient(create_app(_settings(tmp_path)))  # no lifespan: no engine needed
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="dashboard/static/app.js"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    script = client.get("/dashboard/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "api/requests" in script.text and "Authorization" in script.text
    style = client.get("/dashboard/static/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for missing in ("index.html", "nope.js", "..%2Fdashboard.py", "%2E%2E%2F__init__.py"):
        assert client.get(f"/dashboard/static/{missing}").status_code == 404


def test_with_a_key_the_shell_is_public_and_the_data_is_not(tmp_path: Path) -> None:
    client = TestClient(create_app(_settings(tmp_path, api_key=KEY)))
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/static/app.js").status_code == 200
    for guarded in ("/health", "/api/requests", "/api/events", "/api/running_models"):
        assert client.get(guarded).status_code == 401, guarded
    assert client.post("/dashboard").status_code == 401
    assert client.get("/dashboard/static/nope.js").status_code == 401


# ---------------------------------------------------------------- browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not HAVE_CHROMIUM:  # only reached under CI (see needs_chromium)
        pytest.fail("Debian's chromium and chromium-driver are missing (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _wait(driver: WebDriver, what: str, condition: object) -> object:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message=what)


def _screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    """Saved in the test's tmp folder; DASHBOARD_SCREENSHOT_DIR keeps a copy for a person to see."""
    driver.save_screenshot(str(tmp_path / name))
    if folder := os.environ.get("DASHBOARD_SCREENSHOT_DIR"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(folder) / name)


def _run_ids(url: str, headers: dict[str, str] | None = None) -> list[str]:
    reply = httpx.get(url + "/api/requests?limit=200", headers=headers, timeout=30)
    reply.raise_for_status()
    return [r["id"] for r in reply.json()["requests"]]


@pytest.mark.engine
@needs_chromium
def test_a_chat_request_shows_up_in_the_live_dashboard(tmp_path: Path, browser: WebDriver) -> None:
    with BackgroundServer(create_app(_settings(tmp_path))) as server:
        browser.get(server.url + "/dashboard")
        _wait(browser, "status ok", lambda d: d.find_element(By.ID, "status-pill").text == "OK")
        assert browser.find_element(By.ID, "primary-backend").text == "embedded"
        assert browser.find_element(By.ID, "ram-used").text.endswith("%")
        assert browser.find_element(By.ID, "pressure").text.lower() in {
            "normal",
            "elevated",
            "high",
            "critical",
        }
        assert not browser.find_elements(By.CSS_SELECTOR, "#chart-ttft .point")

        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": "smollm2:135m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hi."}],
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        (run_id,) = _run_ids(server.url)

        point = f'#chart-ttft .point[data-request-id="{run_id}"]'
        _wait(
            browser,
            "the request's point in the chart",
            lambda d: d.find_elements(By.CSS_SELECTOR, point),
        )
        assert browser.find_elements(
            By.CSS_SELECTOR, f'#chart-tps .point[data-request-id="{run_id}"]'
        )
        # The first request loaded the model: it is marked as a reload.
        assert "reload" in browser.find_element(By.CSS_SELECTOR, point).get_attribute("class")
        row = browser.find_element(
            By.CSS_SELECTOR, f'#requests-table tr[data-request-id="{run_id}"]'
        )
        assert "smollm2:135m" in row.text and "ok" in row.text
        _wait(
            browser,
            "the model in the running-models table",
            lambda d: d.find_elements(
                By.CSS_SELECTOR, '#models-table tr[data-model="smollm2:135m"]'
            ),
        )
        assert browser.find_element(By.ID, "models-count").text == "1"
        _screenshot(browser, tmp_path, "dashboard.png")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not [e for e in errors if "/api/events" not in e["message"]], errors


NOTES = " ".join(f"Note {i}: the pump in bay {i % 5} read {i * 3} bar." for i in range(25))


@pytest.mark.engine
@needs_chromium
def test_a_restored_conversation_is_marked_and_its_file_listed(
    tmp_path: Path, browser: WebDriver
) -> None:
    """No host-RAM prompt cache: a prompt that lost its slot comes back from its file (saved
    after its turn: it is long enough to pay), and the dashboard marks that request and lists
    the files with their restores."""
    with BackgroundServer(create_app(_settings(tmp_path, prompt_cache_mib=0))) as server:
        browser.get(server.url + "/dashboard")
        _wait(browser, "status ok", lambda d: d.find_element(By.ID, "status-pill").text == "OK")
        for conversation in ("a", "b", "a"):
            reply = httpx.post(
                server.url + "/v1/chat/completions",
                json={
                    "model": "gemma3:270m",
                    "max_tokens": 2,
                    "messages": [{"role": "user", "content": f"Chat {conversation}. {NOTES}"}],
                },
                timeout=120,
            )
            assert reply.status_code == 200, reply.text
        restored = httpx.get(server.url + "/api/requests?limit=1", timeout=30).json()
        (last,) = restored["requests"]
        assert last["kv"] == "restored"
        point = f'#chart-ttft .point[data-request-id="{last["id"]}"]'
        _wait(
            browser,
            "the restored request's point",
            lambda d: d.find_elements(By.CSS_SELECTOR, point),
        )
        assert "restored" in browser.find_element(By.CSS_SELECTOR, point).get_attribute("class")
        row = f'#requests-table tr[data-request-id="{last["id"]}"]'
        assert "restored" in browser.find_element(By.CSS_SELECTOR, row).text
        _wait(
            browser,
            "the saved KV files",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#kv-table tbody tr")) == 2,
        )
        assert "files" in browser.find_element(By.ID, "kv-note").text


@pytest.mark.engine
@needs_chromium
def test_a_keyed_server_s_dashboard_takes_the_key_from_the_url_or_the_form(
    tmp_path: Path, browser: WebDriver
) -> None:
    with BackgroundServer(create_app(_settings(tmp_path, api_key=KEY))) as server:
        browser.get(server.url + "/dashboard")
        _wait(browser, "the key form", lambda d: d.find_element(By.ID, "auth").is_displayed())
        browser.find_element(By.ID, "auth-key").send_keys("wrong-key\n")
        _wait(
            browser, "the key refused", lambda d: d.find_element(By.ID, "auth-error").is_displayed()
        )
        _screenshot(browser, tmp_path, "dashboard-key-refused.png")
        browser.find_element(By.ID, "auth-key").send_keys(KEY + "\n")
        _wait(browser, "status ok", lambda d: d.find_element(By.ID, "status-pill").text == "OK")
        assert not browser.find_element(By.ID, "auth").is_displayed()
        browser.execute_script("sessionStorage.clear()")

        browser.get(server.url + f"/dashboard?key={KEY}")
        _wait(browser, "status ok", lambda d: d.find_element(By.ID, "status-pill").text == "OK")
        assert not browser.find_element(By.ID, "auth").is_displayed()
        assert "key=" not in browser.current_url  # moved into sessionStorage, out of history
        stored = browser.execute_script("return sessionStorage.getItem('autotune.apiKey')")
        assert stored == KEY
        assert browser.find_element(By.ID, "forget-key").is_displayed()
