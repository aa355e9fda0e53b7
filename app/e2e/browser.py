"""How the E2E suite starts a browser: Debian chromium, fixed viewport (shared by tests and capture)."""

from __future__ import annotations

import os
from typing import Any

# Playwright's bundled browser download does not work here: the system chromium is used instead.
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--font-render-hinting=none", "--force-color-profile=srgb"]
VIEWPORT = {"width": 1280, "height": 800}


def launch_args() -> dict[str, Any]:
    """Keyword arguments of `chromium.launch()`."""
    return {"executable_path": CHROMIUM, "args": list(CHROMIUM_ARGS)}


def context_args() -> dict[str, Any]:
    """Keyword arguments of `browser.new_context()`: the same pixels on every run."""
    return {"viewport": dict(VIEWPORT), "device_scale_factor": 1, "locale": "en-US", "timezone_id": "UTC",
            "color_scheme": "light", "reduced_motion": "reduce"}


def base_url() -> str:
    """The application under test (E2E_BASE_URL), without a trailing slash."""
    url = os.environ.get("E2E_BASE_URL", "").rstrip("/")
    if not url:
        raise SystemExit("E2E_BASE_URL is not set (e.g. E2E_BASE_URL=http://127.0.0.1:8081)")
    return url
