"""Every integration test runs against the live stack (started once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _live_stack(stack: object) -> None:
    """Request the session stack so that no integration test can run without it."""
