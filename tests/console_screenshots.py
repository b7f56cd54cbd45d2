"""The screenshots of the API Keys page in the docs (docs/images/console-*.png), taken
in a real headless Chromium against a real sidecar, example upstream and redis-server.

Run ``scripts/screenshots``. The keys are made through the page, today's traffic is
sent through the sidecar; the earlier days of the usage chart are written straight
into this throwaway Redis (the sidecar only ever counts the day it sees).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from sidecar.core.timeutil import utc_day
from sidecar.keys.schema import usage_key
from tests.console_browser import DEMO_EMAIL, DEMO_PASSWORD, Browser, console_config
from tests.harness import RedisProcess, SidecarProcess, base_config, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
LIMITED = "/api/v1/analysis/limited/"  # under the scopes the keys get


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="console-screenshots-") as work:
        workdir = Path(work)
        with RedisProcess(workdir) as redis_server:
            base = base_config(
                redis_url=redis_server.url, upstream_url=f"http://127.0.0.1:{free_port()}"
            )
            base["rate_limits"] = {
                "enabled": True,
                "default": {"requests": 100_000, "per_seconds": 60},
                "rules": [{"path": LIMITED, "requests": 3, "per_seconds": 3600}],
            }
            example = yaml.safe_load((ROOT / "config" / "sidecar.yaml").read_text())
            base["auth"]["scopes"] = example["auth"]["scopes"]  # the example set of scopes
            config = console_config(base, user_id="demo-user")
            sidecar = SidecarProcess(config, workdir, ("--example-upstream",)).start()
            try:
                shoot(sidecar, redis_server)
            finally:
                sidecar.stop()
    print(f"screenshots written to {IMAGES.relative_to(ROOT)}/")
    return 0


def shoot(sidecar: SidecarProcess, redis_server: RedisProcess) -> None:
    browser = Browser(width=1280, height=820)
    try:
        browser.open(sidecar.url + "/console/")
        browser.sign_in(DEMO_EMAIL, DEMO_PASSWORD)
        keys = {}
        for description, environment, scope, addresses in [
            ("Staging worker", "test", None, ""),
            ("Nightly export", "live", "analysis:read", "127.0.0.0/24"),
            ("CI pipeline", "live", "analysis:submit", ""),
        ]:
            browser.start_create()
            browser.by_id("create-description").send_keys(description)
            browser.by_id("create-environment").send_keys(environment)
            if scope is not None:
                browser.driver.find_element(
                    "css selector", f"#create-scopes input[value='{scope}']"
                ).click()
            browser.by_id("create-allowed-ips").send_keys(addresses)
            browser.by_id("create-form").submit()
            browser.wait_visible("reveal-view")
            keys[description] = str(browser.by_id("revealed-key").get_attribute("value"))
            if description == "CI pipeline":
                browser.screenshot(IMAGES / "console-create-reveal.png")
            browser.leave_reveal()
        token = login(sidecar)
        ids = key_ids(sidecar, token)
        traffic(sidecar, keys["CI pipeline"], ok=37, limited=5)
        traffic(sidecar, keys["Nightly export"], ok=4, limited=0)
        seed_history(redis_server, ids["CI pipeline"])
        wait_until(lambda: usage_total(sidecar, token, ids["CI pipeline"]) > 42, timeout=10)
        wait_until(lambda: usage_total(sidecar, token, ids["Nightly export"]) == 4, timeout=10)
        browser.by_id("show-inactive").click()  # fresh list: last used filled in
        browser.wait(lambda: browser.row(ids["Staging worker"]).is_displayed())
        browser.screenshot(IMAGES / "console-list.png")
        browser.driver.set_window_size(1280, 1060)
        browser.manage(ids["CI pipeline"])
        browser.screenshot(IMAGES / "console-usage.png")
    finally:
        browser.close()


def login(sidecar: SidecarProcess) -> str:
    answer = httpx.post(
        sidecar.url + "/api/v1/auth/login", json={"email": DEMO_EMAIL, "password": DEMO_PASSWORD}
    )
    return str(answer.json()["access_token"])


def key_ids(sidecar: SidecarProcess, token: str) -> dict[str, str]:
    listed = httpx.get(
        sidecar.url + "/api/v1/api-keys/", headers={"Authorization": f"Bearer {token}"}
    ).json()["api_keys"]
    return {item["description"]: item["id"] for item in listed}


def usage_total(sidecar: SidecarProcess, token: str, key_id: str) -> int:
    answer = httpx.get(
        f"{sidecar.url}/api/v1/api-keys/{key_id}/usage",
        headers={"Authorization": f"Bearer {token}"},
    )
    return int(answer.json()["total_requests"])


def traffic(sidecar: SidecarProcess, key: str, *, ok: int, limited: int) -> None:
    with httpx.Client(base_url=sidecar.url, headers={"X-API-Key": key}) as client:
        for _ in range(ok):
            client.get("/api/v1/analysis/")
        for _ in range(limited + 3 if limited else 0):  # the rule lets 3 an hour through
            client.get(LIMITED)


def seed_history(redis_server: RedisProcess, key_id: str) -> None:
    """Counters for the 20 days before today, in the shape the sidecar flushes them."""
    rng = random.Random(28)
    client = redis_server.client()
    now = time.time()
    for back in range(1, 21):
        day = utc_day(now - back * 86400)
        weekday = time.gmtime(now - back * 86400).tm_wday < 5
        requests = rng.randint(30, 60) if weekday else rng.randint(5, 15)
        limited = rng.choice([0, 0, 0, 1, 2, 4]) if weekday else 0
        client.hset(usage_key(key_id, day), mapping={"requests": requests, "rate_limited": limited})


if __name__ == "__main__":
    sys.exit(main())
