"""The API Keys page in a real headless Chromium (Debian's chromium + chromidriver via
Selenium), against a real sidecar process with the example upstream (its demo login)
and a real redis-server. Skipped only where chromium is not installed; .ci/run
installs it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console_browser import (
    DEMO_EMAIL,
    DEMO_PASSWORD,
    Browser,
    chromium_missing,
    console_config,
)
from tests.harness import SidecarProcess, free_port, remember_secret, wait_until

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

LIMITED = "/api/v1/limited/"  # a rate-limit rule of 2 requests an hour: the 429s in the chart
XSS = '<img src=x onerror="window.__pwned = 1">'


@pytest.fixture(scope="module")
def console(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    base = config_for(
        upstream={"url": f"http://127.0.0.1:{free_port()}"},
        rate_limits={
            "enabled": True,
            "default": {"requests": 100_000, "per_seconds": 60},
            "rules": [{"path": LIMITED, "requests": 2, "per_seconds": 3600}],
        },
    )
    base["auth"]["scopes"] = {
        "analysis:read": [{"methods": ["GET", "HEAD"], "paths": ["/api/v1/analysis/"]}],
        "analysis:write": [{"methods": ["POST"], "paths": ["/api/v1/analysis/"]}],
    }
    config = console_config(base, user_id=f"console-{time.monotonic_ns()}")
    process = SidecarProcess(config, tmp_path_factory.mktemp("console"), ("--example-upstream",))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    browser = Browser()
    yield browser
    browser.close()


@pytest.fixture
def browser(chromium: Browser, console: SidecarProcess) -> Browser:
    """The page freshly loaded (so signed out) and signed in as the demo user."""
    chromium.open(console.url + "/console/")
    chromium.sign_in()
    return chromium


@pytest.fixture(scope="module")
def token(console: SidecarProcess) -> str:
    """The demo user's JWT, from the same login the page uses."""
    answer = httpx.post(
        console.url + "/api/v1/auth/login", json={"email": DEMO_EMAIL, "password": DEMO_PASSWORD}
    )
    remember_secret(answer.json()["refresh_token"])
    return remember_secret(answer.json()["access_token"])


def _console_errors(browser: Browser) -> list[str]:
    """The browser console's errors since the last call (a blocked script or style, a
    failed module load, an uncaught exception), minus the expected refusals of the
    API's answers (4xx) that the page reports to the user itself."""
    return [
        entry["message"]
        for entry in browser.driver.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]


def _status_with_key(console: SidecarProcess, key: str, path: str = "/api/v1/analysis/") -> int:
    return httpx.get(console.url + path, headers={"X-API-Key": key}).status_code


def _occurrences(browser: Browser, secret: str) -> int:
    """How often ``secret`` is in the document: markup, text and every field's value."""
    return int(
        browser.script(
            "const s = arguments[0];"
            "const values = [...document.querySelectorAll('input, textarea')].map(e => e.value);"
            "const all = [document.documentElement.outerHTML, ...values];"
            "return all.reduce((n, text) => n + text.split(s).length - 1, 0);",
            secret,
        )
    )


def test_a_new_key_is_shown_exactly_once_and_works(
    browser: Browser, console: SidecarProcess
) -> None:
    key = remember_secret(browser.create_key("deploy bot"))
    assert key.startswith("sk_live_") and len(key) == 56
    assert _occurrences(browser, key) == 1
    warning = browser.driver.find_element("css selector", "#reveal-view .warning").text
    assert "Copy your key immediately (it won't be shown again)" in warning
    assert _status_with_key(console, key) == 200
    browser.leave_reveal()
    assert _occurrences(browser, key) == 0
    row = browser.driver.find_element("xpath", "//tr[td[normalize-space()='deploy bot']]")
    assert key[:14] in row.text and key not in row.text
    assert browser.storage() == '[[],[],""]'
    browser.driver.refresh()
    browser.wait_visible("sign-in-view")
    assert _occurrences(browser, key) == 0
    assert browser.storage() == '[[],[],""]'
    assert browser.by_id("list-view").is_displayed() is False  # the tokens went with the page


def test_rotate_then_revoke_leaves_the_old_key_refused(
    browser: Browser, console: SidecarProcess, token: str
) -> None:
    old = remember_secret(browser.create_key("rotate me"))
    browser.leave_reveal()
    old_id = _key_id(console, token, old)
    browser.manage(old_id)
    browser.by_id("rotate-key").click()
    browser.confirm()
    browser.wait_visible("reveal-view")
    new = remember_secret(str(browser.by_id("revealed-key").get_attribute("value")))
    assert new != old and new.startswith("sk_live_")
    assert _status_with_key(console, new) == 200
    assert _status_with_key(console, old) == 200  # the default grace period: a day
    browser.leave_reveal()
    browser.manage(old_id)
    assert browser.by_id("rotate-panel").is_displayed() is False  # already rotated
    browser.by_id("revoke-key").click()
    browser.wait_visible("confirm-dialog")
    browser.by_id("confirm-cancel").click()  # changing one's mind changes nothing
    assert _status_with_key(console, old) == 200
    browser.by_id("revoke-key").click()
    browser.confirm()
    browser.wait_visible("list-view")
    assert _status_with_key(console, old) == 401
    assert _status_with_key(console, new) == 200


def _key_id(console: SidecarProcess, token: str, key: str) -> str:
    listed = httpx.get(
        console.url + "/api/v1/api-keys/?include_expired=true",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["api_keys"]
    return str(next(item["id"] for item in listed if item["key_prefix"] == key[:14]))


def test_the_usage_chart_draws_what_the_usage_api_says(
    browser: Browser, console: SidecarProcess, token: str
) -> None:
    key = remember_secret(browser.create_key("traffic"))
    browser.leave_reveal()
    key_id = _key_id(console, token, key)
    statuses = [_status_with_key(console, key) for _ in range(5)]
    statuses += [_status_with_key(console, key, LIMITED) for _ in range(4)]
    assert sorted(statuses) == [200] * 7 + [429] * 2
    usage_url = f"{console.url}/api/v1/api-keys/{key_id}/usage"
    headers = {"Authorization": f"Bearer {token}"}

    def usage() -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(usage_url, headers=headers).json()
        return answer

    wait_until(lambda: usage()["total_requests"] == 9, timeout=10)
    expected = {day["date"]: (day["requests"], day["rate_limited"]) for day in usage()["days"]}
    browser.manage(key_id)
    bars = browser.chart_bars()
    assert bars == expected
    assert bars[max(bars)] == (9, 2)  # today
    assert _console_errors(browser) == []  # nothing the page's own CSP blocked
    limited = browser.driver.find_elements("css selector", "#usage-chart g.day rect.limited")
    tallest = max(float(rect.get_attribute("height") or 0) for rect in limited)
    assert tallest > 0


def test_a_description_with_markup_is_shown_as_text(
    browser: Browser, console: SidecarProcess
) -> None:
    key = remember_secret(browser.create_key(XSS))
    assert XSS in browser.by_id("reveal-meta").text
    browser.leave_reveal()
    cells = browser.driver.find_elements("css selector", "#keys-body td.description")
    assert XSS in [cell.text for cell in cells]
    assert browser.driver.find_elements("css selector", "main img") == []
    assert browser.script("return window.__pwned === undefined") is True
    assert _console_errors(browser) == []
    assert _status_with_key(console, key) == 200


def test_the_create_flow_works_with_the_keyboard_alone(
    chromium: Browser, console: SidecarProcess
) -> None:
    from selenium.webdriver.common.keys import Keys

    chromium.open(console.url + "/console/")

    def press(*keys: str) -> None:
        chromium.driver.switch_to.active_element.send_keys(*keys)

    def tab_to(element_id: str) -> None:
        for _ in range(30):
            if chromium.active_id() == element_id:
                return
            press(Keys.TAB)
        raise AssertionError(f"Tab never reached #{element_id}")

    assert chromium.active_id() == "email"  # where the page puts the focus
    press(DEMO_EMAIL, Keys.TAB, DEMO_PASSWORD, Keys.ENTER)
    chromium.wait_visible("list-view")
    tab_to("new-key")
    press(Keys.ENTER)
    chromium.wait_visible("create-view")
    tab_to("create-description")
    press("typed with keys")
    tab_to("create-environment")
    press(Keys.ARROW_DOWN)  # test
    tab_to("create-description")
    press(Keys.ENTER)
    chromium.wait_visible("reveal-view")
    key = remember_secret(str(chromium.by_id("revealed-key").get_attribute("value")))
    assert key.startswith("sk_test_")
    tab_to("copy-key")
    press(Keys.ENTER)
    chromium.wait(lambda: "cop" in chromium.by_id("status").text.lower())
    tab_to("reveal-done")
    press(Keys.ENTER)
    chromium.wait_visible("list-view")
    assert chromium.driver.find_elements("xpath", "//td[normalize-space()='typed with keys']")
    assert _status_with_key(console, key) == 200


def _unnamed_controls(browser: Browser, within: str = "body") -> list[str]:
    """Every visible form control without an accessible name (Chromium's own computation);
    with a modal dialog open, the rest of the page is inert and only the dialog counts."""
    unnamed = []
    controls = f"{within} input, {within} select, {within} textarea, {within} button"
    for element in browser.driver.find_elements("css selector", controls):
        if element.is_displayed() and not element.accessible_name.strip():
            unnamed.append(str(element.get_attribute("outerHTML"))[:120])
    return unnamed


def test_every_control_has_an_accessible_name(
    chromium: Browser, console: SidecarProcess, token: str
) -> None:
    chromium.open(console.url + "/console/")
    seen = {"sign-in": _unnamed_controls(chromium)}
    chromium.sign_in()
    seen["list"] = _unnamed_controls(chromium)
    chromium.start_create()
    seen["create"] = _unnamed_controls(chromium)
    chromium.by_id("create-description").send_keys("labels")
    chromium.by_id("create-form").submit()
    chromium.wait_visible("reveal-view")
    key = remember_secret(str(chromium.by_id("revealed-key").get_attribute("value")))
    seen["reveal"] = _unnamed_controls(chromium)
    chromium.leave_reveal()
    chromium.manage(_key_id(console, token, key))
    seen["detail"] = _unnamed_controls(chromium)
    chromium.by_id("revoke-key").click()
    chromium.wait_visible("confirm-dialog")
    seen["dialog"] = _unnamed_controls(chromium, within="#confirm-dialog")
    chromium.by_id("confirm-cancel").click()
    assert seen == {view: [] for view in seen}
    counted = chromium.driver.find_elements(
        "css selector", "#detail-view select, #detail-view button"
    )
    assert len(counted) >= 4  # the check saw the controls it is about


def test_a_wrong_password_is_refused_on_the_page(
    chromium: Browser, console: SidecarProcess
) -> None:
    chromium.open(console.url + "/console/")
    chromium.by_id("email").send_keys(DEMO_EMAIL)
    chromium.by_id("password").send_keys("not the password")
    chromium.by_id("sign-in-form").submit()
    chromium.wait(lambda: chromium.by_id("sign-in-error").text)
    assert chromium.by_id("sign-in-error").text == "Wrong email or password."
    assert not chromium.by_id("list-view").is_displayed()


# --- Part 3 panels: scopes, addresses, networks and audit events ---


def _tick_only(browser: Browser, fieldset: str, names: set[str]) -> None:
    for box in browser.driver.find_elements("css selector", f"#{fieldset} input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") in names):
            box.click()


def test_editing_the_scopes_makes_the_api_refuse_a_route(
    browser: Browser, console: SidecarProcess, token: str
) -> None:
    key = remember_secret(browser.create_key("narrow me"))
    browser.leave_reveal()
    assert _status_with_key(console, key) == 200
    browser.manage(_key_id(console, token, key))
    browser.wait_visible("edit-panel")
    _tick_only(browser, "edit-scopes", {"analysis:read"})
    browser.driver.find_element("css selector", "#edit-form button[type=submit]").click()
    browser.wait(lambda: "analysis:read" in browser.by_id("detail-facts").text)
    post = httpx.post(console.url + "/api/v1/analysis/", headers={"X-API-Key": key})
    assert (post.status_code, post.json()) == (
        403,
        {"detail": "API key does not have the required scope"},
    )
    assert _status_with_key(console, key) == 200  # GET is what analysis:read allows


def test_a_key_created_with_scopes_and_addresses_is_limited_to_them(
    browser: Browser, console: SidecarProcess
) -> None:
    browser.start_create()
    browser.by_id("create-description").send_keys("read from the office")
    _tick_only(browser, "create-scopes", {"analysis:read"})
    browser.by_id("create-allowed-ips").send_keys("203.0.113.0/24")
    browser.by_id("create-form").submit()
    browser.wait_visible("reveal-view")
    key = remember_secret(str(browser.by_id("revealed-key").get_attribute("value")))
    refused = httpx.get(console.url + "/api/v1/analysis/", headers={"X-API-Key": key})
    assert (refused.status_code, refused.json()["detail"]) == (
        403,
        "API key is not allowed from this address",
    )
    browser.leave_reveal()
    row = browser.driver.find_element("xpath", "//tr[td[normalize-space()='read from the office']]")
    assert "analysis:read" in row.text and "203.0.113.0/24" in row.text


def test_the_networks_a_key_is_used_from_become_its_allowed_addresses(
    browser: Browser, console: SidecarProcess, token: str
) -> None:
    key = remember_secret(browser.create_key("pin me"))
    browser.leave_reveal()
    key_id = _key_id(console, token, key)
    assert _status_with_key(console, key) == 200
    usage_url = f"{console.url}/api/v1/api-keys/{key_id}/usage"
    headers = {"Authorization": f"Bearer {token}"}
    wait_until(lambda: httpx.get(usage_url, headers=headers).json()["networks"], timeout=10)
    browser.manage(key_id)
    browser.wait(lambda: "127.0.0.0/24" in browser.by_id("networks-body").text)
    browser.by_id("networks-allow").click()
    browser.confirm()
    browser.wait(lambda: "127.0.0.0/24" in browser.by_id("detail-facts").text)
    listed = httpx.get(console.url + "/api/v1/api-keys/", headers=headers).json()["api_keys"]
    assert next(k for k in listed if k["id"] == key_id)["allowed_ips"] == ["127.0.0.0/24"]
    assert _status_with_key(console, key) == 200  # still allowed: it is used from there


def test_a_keys_audit_events_are_listed(
    browser: Browser, console: SidecarProcess, token: str
) -> None:
    key = remember_secret(browser.create_key("audited"))
    browser.leave_reveal()
    key_id = _key_id(console, token, key)
    browser.manage(key_id)
    browser.wait_visible("edit-panel")
    browser.by_id("edit-description").clear()
    browser.by_id("edit-description").send_keys("audited, renamed")
    browser.driver.find_element("css selector", "#edit-form button[type=submit]").click()
    browser.wait(lambda: "key.updated" in browser.by_id("events-list").text)
    events = httpx.get(
        f"{console.url}/api/v1/api-keys/{key_id}/events",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["events"]
    shown = browser.driver.find_elements("css selector", "#events-list li")
    assert [item.get_attribute("data-action") for item in shown] == [e["action"] for e in events]
    assert [e["action"] for e in events] == ["key.updated", "key.created"]  # newest first
    assert 'description: "audited" → "audited, renamed"' in shown[0].text


def _access_lines(process: SidecarProcess) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in process.logs().splitlines() if line.startswith("{"))
    return [line for line in lines if "status" in line and "route" in line]


def test_an_expired_access_token_is_renewed_through_the_refresh_url(
    config_for: Any, tmp_path: Path
) -> None:
    base = config_for(upstream={"url": f"http://127.0.0.1:{free_port()}"})
    config = console_config(base, user_id=f"refresh-{time.monotonic_ns()}")
    config["example_upstream"]["demo_token_seconds"] = 2
    process = SidecarProcess(config, tmp_path, ("--example-upstream",)).start()
    browser = Browser()
    try:
        browser.open(process.url + "/console/")
        signed_in_at = time.time()
        browser.sign_in()
        wait_until(lambda: time.time() > signed_in_at + 3, timeout=10)  # the token expired
        browser.by_id("show-inactive").click()  # lists again, with the expired token
        browser.wait(lambda: browser.by_id("show-inactive").is_selected())
        browser.start_create()
        browser.by_id("create-form").submit()
        browser.wait_visible("reveal-view")
        remember_secret(str(browser.by_id("revealed-key").get_attribute("value")))
        wait_until(
            lambda: any(
                (line["method"], line["path"], line["status"])
                == ("POST", "/api/v1/auth/refresh", 200)
                for line in _access_lines(process)
            )
        )
        refused = [
            line
            for line in _access_lines(process)
            if line["route"] == "api_keys" and line["status"] == 401
        ]
        assert refused, "the expired token was never used: the test proved nothing"
        assert browser.by_id("sign-in-view").is_displayed() is False
    finally:
        browser.close()
        process.stop()


def test_a_refused_create_shows_the_apis_reasons_and_makes_no_key(
    browser: Browser, console: SidecarProcess, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    before = httpx.get(console.url + "/api/v1/api-keys/", headers=headers).json()["total"]
    browser.start_create()
    browser.by_id("create-description").send_keys("bad address")
    browser.by_id("create-allowed-ips").send_keys("not-an-address")
    browser.by_id("create-form").submit()
    browser.wait(lambda: browser.by_id("create-error").text)
    assert browser.by_id("create-error").text.startswith("allowed_ips")
    assert browser.by_id("create-view").is_displayed()
    assert httpx.get(console.url + "/api/v1/api-keys/", headers=headers).json()["total"] == before


def test_signing_out_forgets_the_tokens(browser: Browser) -> None:
    browser.by_id("sign-out").click()
    browser.wait_visible("sign-in-view")
    assert browser.by_id("status").text == "You are signed out."
    assert not browser.by_id("list-view").is_displayed()
    assert not browser.by_id("sign-out").is_displayed()
    assert browser.storage() == '[[],[],""]'
