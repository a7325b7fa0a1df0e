"""The registry's status page, rendered by a real browser (headless Chromium), shows live values.

Chromium is the Debian package ``chromium``. Each run gets a new empty profile and no
network features of its own (no sync, component updates or QUIC), so it only fetches
the page. ``--dump-dom`` gives the DOM after load, which is compared with what the
registry and the breaker API say; ``--screenshot`` keeps a picture of the page in the
test's pytest tmp dir (``status-page.png``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from payfn_shared.platform.config import Settings
from payfn_shared.platform.registry import RegistryClient

from tests.e2e.gateway_client import call

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
DEADLINE_SECONDS = 60


class ElementTexts(HTMLParser):
    """The text of every element that has an ``id``, and the page's meta refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.refresh: str | None = None
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "meta" and (attributes.get("http-equiv") or "").lower() == "refresh":
            self.refresh = attributes.get("content")
        if tag in ("meta", "link", "br", "img", "input"):
            return
        element_id = attributes.get("id")
        if element_id is not None:
            self.texts[element_id] = ""
        self._open.append(element_id)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("meta", "link", "br", "img", "input") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id is not None:
                self.texts[element_id] += data


def chromium(url: str, profile: Path, *args: str) -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium not found: install the Debian package chromium")
    profile.mkdir()
    result = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def read_page(url: str, profile: Path) -> ElementTexts:
    page = ElementTexts()
    page.feed(chromium(url, profile, "--dump-dom"))
    return page


def live_values(settings: Settings) -> tuple[dict[str, int], str]:
    """UP instances per app (registry API) and the breaker's state (breaker API, via the gateway)."""
    apps = RegistryClient(settings.registry_url, timeout=5).apps()
    counts = {app: sum(1 for i in instances if i.status == "UP") for app, instances in apps.items()}
    for _ in range(3):
        # A 504 is a cold start that outran the gateway's timeout on a busy machine: ask again.
        reply = call(settings.gateway_url, "GET", "/api/circuit-breaker/kafka-publisher")
        if reply.status != 504:
            break
    assert reply.status == 200, reply.body
    return counts, reply.json()["state"]


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").removesuffix(" s").removesuffix(" %"))
    except ValueError:
        return False
    return True


def test_status_page_shows_live_values(platform: Any, tmp_path: Path) -> None:
    settings: Settings = platform.settings
    url = f"{settings.registry_url}/status"
    deadline = time.monotonic() + DEADLINE_SECONDS
    attempt = 0
    while True:
        attempt += 1
        before = live_values(settings)
        page = read_page(url, tmp_path / f"profile-{attempt}")
        after = live_values(settings)
        counts, breaker = after
        shown = {app: page.texts.get(f"instances-{app}") for app in counts}
        # Prometheus may not have scraped the breaker yet on a fresh stack: poll, with a bound.
        settled = before == after and page.texts.get("breaker-state-kafka-publisher") == breaker
        if settled or time.monotonic() > deadline:
            break
        time.sleep(3)

    assert "INGEST-SERVICE" in counts and counts["INGEST-SERVICE"] >= 1
    assert shown == {app: str(count) for app, count in counts.items()}
    assert page.texts.get("breaker-state-kafka-publisher") == breaker
    for element_id in ("request-rate", "outbox-backlog", "outbox-oldest", "consumer-lag",
                       "breaker-failure-rate-kafka-publisher"):
        assert is_number(page.texts.get(element_id, "")), (element_id, page.texts.get(element_id))
    assert "prometheus-error" not in page.texts
    assert page.refresh is not None and int(page.refresh) > 0

    screenshot = tmp_path / "status-page.png"
    chromium(url, tmp_path / "profile-screenshot", "--hide-scrollbars", "--window-size=1280,1000",
             f"--screenshot={screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
