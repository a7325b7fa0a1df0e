"""Every end-to-end test runs against the live stack (started once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _live_platform(platform: object) -> None:
    """Request the whole stack so that no end-to-end test can run without it."""
