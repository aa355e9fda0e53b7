"""Fixtures of the E2E suite: Debian chromium through pytest-playwright, a unique board per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser

STEP_TIMEOUT_MS = 7000  # a missing element fails the test in seconds, not after 30 s


@pytest.fixture(scope="session")
def base_url() -> str:
    return browser.base_url()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, **browser.launch_args()}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, **browser.context_args()}


@pytest.fixture(autouse=True)
def _short_timeouts(page: Page) -> None:
    page.set_default_timeout(STEP_TIMEOUT_MS)


@pytest.fixture
def board_name(page: Page, base_url: str) -> Iterator[str]:
    """A board name no other run uses; the board (if created) is deleted afterwards."""
    name = f"e2e {uuid.uuid4().hex[:8]}"
    yield name
    boards = page.request.get(f"{base_url}/api/boards").json().get("boards", [])
    for board in boards:
        if board["name"] == name:
            page.request.delete(f"{base_url}/api/boards/{board['id']}")
