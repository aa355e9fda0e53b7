"""Full-page screenshots of the named views of visual.json, on fixed data: `python capture_views.py OUT_DIR`.

The data is made deterministic: a fixed board (FIXED_BOARD) with fixed items is created through the
API, the board list shown is narrowed to it (the environment may hold other boards), and the fixed
board is deleted again at the end. Animations and the caret are frozen; per-view `mask` selectors
of visual.json cover anything else that changes from run to run. Writes OUT_DIR/VIEW.png and
OUT_DIR/capture.json ({"views": {name: {"file"} | {"error"}}}); exits 0 unless it could not run at all.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, Route, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser

HERE = Path(__file__).resolve().parent
FIXED_BOARD = "Launch plan"
FIXED_ITEMS = [("Write the release notes", "todo"), ("Book the demo room", "doing"), ("Ship version 1.0", "done")]
FREEZE_CSS = ("*, *::before, *::after { transition: none !important; animation: none !important; "
              "caret-color: transparent !important; }")


class Fixture:
    """The fixed board of the visual views, made through the API of the environment."""

    def __init__(self, page: Page, base: str) -> None:
        self.page, self.base = page, base
        self.board_id: int | None = None

    def board(self) -> int:
        if self.board_id is None:
            made = self.page.request.post(f"{self.base}/api/boards", data={"name": FIXED_BOARD})
            if made.status != 201:
                raise RuntimeError(f"POST /api/boards answered {made.status}: {made.text()[:200]}")
            self.board_id = int(made.json()["id"])
            for title, status in FIXED_ITEMS:
                item = self.page.request.post(f"{self.base}/api/boards/{self.board_id}/items",
                                              data={"title": title, "status": status})
                if item.status != 201:
                    raise RuntimeError(f"POST items answered {item.status}: {item.text()[:200]}")
        return self.board_id

    def cleanup(self) -> None:
        if self.board_id is not None:
            self.page.request.delete(f"{self.base}/api/boards/{self.board_id}")


def _only_boards(ids: set[int]) -> Callable[[Route], None]:
    """A route handler: the real GET /api/boards answer, narrowed to the boards in `ids`."""

    def handle(route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        boards = [b for b in response.json().get("boards", []) if b.get("id") in ids]
        route.fulfill(response=response, json={"boards": boards})

    return handle


def view_boards_empty(page: Page, fixture: Fixture) -> None:
    page.route("**/api/boards", _only_boards(set()))
    page.goto("/")
    page.get_by_test_id("boards-empty").wait_for(state="visible")


def view_boards(page: Page, fixture: Fixture) -> None:
    page.route("**/api/boards", _only_boards({fixture.board()}))
    page.goto("/")
    page.get_by_test_id("board-link").filter(has_text=FIXED_BOARD).wait_for(state="visible")


def view_board(page: Page, fixture: Fixture) -> None:
    page.goto(f"/boards/{fixture.board()}")
    page.get_by_test_id("column-done").get_by_test_id("item-row").first.wait_for(state="visible")


VIEWS: dict[str, Callable[[Page, Fixture], None]] = {
    "boards-empty": view_boards_empty,
    "boards": view_boards,
    "board": view_board,
}


def capture(out: Path, config: dict[str, Any]) -> dict[str, Any]:
    base = browser.base_url()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(**browser.launch_args())
        context = chromium.new_context(base_url=base, **browser.context_args())
        context.set_default_timeout(10_000)
        fixture = Fixture(context.new_page(), base)
        try:
            for name, spec in config["views"].items():
                setup = VIEWS.get(name)
                if setup is None:
                    results[name] = {"error": f"visual.json names view {name!r}, which capture_views.py does not know"}
                    continue
                page = context.new_page()
                try:
                    setup(page, fixture)
                    page.evaluate("document.fonts.ready.then(() => true)")
                    page.mouse.move(0, 0)
                    file = out / f"{name}.png"
                    page.screenshot(path=str(file), full_page=True, animations="disabled", caret="hide",
                                    style=FREEZE_CSS, mask=[page.locator(sel) for sel in spec.get("mask", [])])
                    results[name] = {"file": str(file)}
                except Exception as exc:  # one broken view must not hide the others
                    results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                    traceback.print_exc()
                finally:
                    page.close()
        finally:
            fixture.cleanup()
            context.close()
            chromium.close()
    return {"base_url": base, "views": results}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: capture_views.py OUT_DIR (E2E_BASE_URL set; VISUAL_CONFIG optional)\n")
        return 2
    config = json.loads(Path(os.environ.get("VISUAL_CONFIG", HERE / "visual.json")).read_text())
    out = Path(argv[0])
    report = capture(out, config)
    (out / "capture.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
