"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium, and the steps a person takes on the API Keys page. Used by the browser tests
and by ``scripts/screenshots``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEMO_EMAIL = "demo@callcov.example"
DEMO_PASSWORD = "demo-password-for-tests"
DEMO_USER = "console-demo-user"
WAIT_SECONDS = 15.0


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None (.ci/run installs both packages)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


def console_config(base: dict[str, Any], user_id: str = DEMO_USER) -> dict[str, Any]:
    """The page on, the example upstream's demo user set, usage flushed every 0.2 s."""
    return {
        **base,
        "console": {"enabled": True},
        "example_upstream": {
            "demo_email": DEMO_EMAIL,
            "demo_password": DEMO_PASSWORD,
            "demo_user_id": user_id,
        },
        "auth": {
            **base["auth"],
            "api_keys": {**base["auth"]["api_keys"], "last_used_flush_seconds": 0.2},
        },
    }


class Browser:
    """One Chromium with a fresh profile; closed (profile deleted) by ``close``."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        self._profile = tempfile.mkdtemp(prefix="console-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--window-size={width},{height}",
            f"--user-data-dir={self._profile}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    # --- finding and waiting ---
    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def wait(self, condition: Any, timeout: float = WAIT_SECONDS) -> Any:
        """Poll ``condition`` until it is truthy; an element the page re-rendered in the
        meantime (stale, or not there yet) counts as not yet."""
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored
        ).until(lambda _driver: condition())

    def wait_visible(self, element_id: str) -> WebElement:
        return self.wait(lambda: self.by_id(element_id).is_displayed() and self.by_id(element_id))

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def active_id(self) -> str:
        return str(self.script("return document.activeElement && document.activeElement.id"))

    def page_text(self) -> str:
        return str(self.script("return document.documentElement.outerHTML"))

    def storage(self) -> str:
        """Everything in localStorage, sessionStorage and document.cookie, as one string."""
        return str(
            self.script(
                "return JSON.stringify([Object.entries(localStorage),"
                " Object.entries(sessionStorage), document.cookie])"
            )
        )

    # --- what a person does ---
    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait_visible("sign-in-view")

    def sign_in(self, email: str = DEMO_EMAIL, password: str = DEMO_PASSWORD) -> None:
        self.by_id("email").send_keys(email)
        self.by_id("password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
        self.wait_visible("list-view")

    def start_create(self) -> None:
        self.by_id("new-key").click()
        self.wait_visible("create-view")

    def create_key(self, description: str = "", **fields: str) -> str:
        """Fill the create form, submit it; the full key the reveal view shows."""
        self.start_create()
        self.by_id("create-description").send_keys(description)
        for name, value in fields.items():
            self.by_id(f"create-{name}").send_keys(value)
        self.driver.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
        self.wait_visible("reveal-view")
        return str(self.by_id("revealed-key").get_attribute("value"))

    def leave_reveal(self) -> None:
        self.by_id("reveal-done").click()
        self.wait_visible("list-view")

    def row(self, key_id: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f"tr[data-key-id='{key_id}']")

    def manage(self, key_id: str) -> None:
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, f"tr[data-key-id='{key_id}']"))
        self.row(key_id).find_element(By.CSS_SELECTOR, "button.manage").click()
        self.wait_visible("detail-view")
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, "#usage-chart svg"))

    def confirm(self) -> None:
        self.wait_visible("confirm-ok").click()
        self.wait(lambda: not self.by_id("confirm-dialog").is_displayed())

    def chart_bars(self) -> dict[str, tuple[int, int]]:
        """The usage chart's bars: date -> (requests, rate limited), read from the SVG."""
        bars: dict[str, tuple[int, int]] = {}
        for group in self.driver.find_elements(By.CSS_SELECTOR, "#usage-chart svg g.day"):
            bars[str(group.get_attribute("data-date"))] = (
                int(group.get_attribute("data-requests") or -1),
                int(group.get_attribute("data-rate-limited") or -1),
            )
        return bars

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
