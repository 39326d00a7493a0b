"""A web page on one loopback port calls autotune on another, in headless Chromium (Debian's,
via Selenium): its preflight and its request pass, and it shows the model's answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_dashboard_browser import _settings, _wait, browser, needs_chromium

from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer, free_port

__all__ = ["browser"]  # the fixture, shared with the dashboard's tests

#: The page: one chat request from the browser (JSON and a custom header: a preflight first).
PAGE = """<!doctype html><html><body><pre id="answer">waiting</pre><script>
fetch("%(api)s/v1/chat/completions", {
  method: "POST",
  headers: {"Content-Type": "application/json", "X-Conversation-Id": "from-a-page"},
  body: JSON.stringify({model: "smollm2:135m", max_tokens: 3,
                        messages: [{role: "user", content: "Say hi."}]}),
}).then(r => r.json().then(body => {
  document.getElementById("answer").textContent =
    r.status + " " + r.headers.get("X-Conversation-Id") + " " + body.choices[0].message.role;
})).catch(e => { document.getElementById("answer").textContent = "blocked " + e; });
</script></body></html>"""


@pytest.fixture
def page_site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A plain static web server on another loopback port (a dev server's stand-in)."""
    folder = tmp_path / "site"
    folder.mkdir()
    port = free_port()
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    site = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, port
    finally:
        site.shutdown()
        site.server_close()


@pytest.mark.engine
@needs_chromium
def test_a_page_on_another_loopback_port_calls_the_api(
    tmp_path: Path, browser: WebDriver, page_site: tuple[Path, int]
) -> None:
    """Issue 22.2 — before: the preflight got a 405 and the browser blocked the page."""
    folder, port = page_site
    with BackgroundServer(create_app(_settings(tmp_path))) as server:
        (folder / "index.html").write_text(PAGE % {"api": server.url})
        browser.get(f"http://localhost:{port}/index.html")
        _wait(
            browser,
            "the page's answer",
            lambda d: d.find_element(By.ID, "answer").text != "waiting",
        )
        assert browser.find_element(By.ID, "answer").text == "200 from-a-page assistant"
