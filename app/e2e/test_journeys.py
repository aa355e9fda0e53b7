"""User journeys through the Sunday UI: boards, items, edits, statuses, persistence."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect


def create_board(page: Page, name: str) -> None:
    page.goto("/")
    page.get_by_test_id("board-name-input").fill(name)
    page.get_by_test_id("create-board").click()
    expect(page.get_by_test_id("board-link").filter(has_text=name)).to_be_visible()


def open_board(page: Page, name: str) -> None:
    page.get_by_test_id("board-link").filter(has_text=name).click()
    expect(page.get_by_test_id("board-title")).to_have_text(name)


def add_item(page: Page, title: str, status: str = "todo") -> None:
    page.get_by_test_id("item-title-input").fill(title)
    page.get_by_test_id("item-status-input").select_option(status)
    page.get_by_test_id("add-item").click()
    expect(row(page, title)).to_be_visible()


def row(page: Page, title: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("item-row").filter(has=page.get_by_test_id("item-title").get_by_text(title, exact=True))


def test_the_app_opens_on_the_board_list(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_title("Sunday")
    expect(page.get_by_test_id("boards-view")).to_be_visible()
    expect(page.get_by_test_id("create-board")).to_be_enabled()
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_create_a_board_and_open_it(page: Page, board_name: str) -> None:
    create_board(page, board_name)
    open_board(page, board_name)
    expect(page).to_have_url(re.compile(r"/boards/\d+$"))
    for status in ("todo", "doing", "done"):
        expect(page.get_by_test_id(f"column-{status}").locator(".count")).to_have_text("0")


def test_item_lifecycle_add_edit_move_delete_and_reload(page: Page, board_name: str) -> None:
    create_board(page, board_name)
    open_board(page, board_name)
    add_item(page, "Write the release notes")
    add_item(page, "Book the demo room", "doing")
    add_item(page, "Throw this away")
    expect(page.get_by_test_id("column-todo").get_by_test_id("item-row")).to_have_count(2)

    # edit a title
    item = row(page, "Write the release notes")
    item.get_by_test_id("item-edit").click()
    item.get_by_test_id("item-edit-input").fill("Write the release notes v2")
    item.get_by_test_id("item-edit-input").press("Enter")
    expect(row(page, "Write the release notes v2")).to_be_visible()

    # change a status: the item moves to the Done column
    row(page, "Book the demo room").get_by_test_id("item-status").select_option("done")
    expect(page.get_by_test_id("column-done").get_by_test_id("item-title")).to_have_text(["Book the demo room"])

    # delete an item
    row(page, "Throw this away").get_by_test_id("item-delete").click()
    expect(row(page, "Throw this away")).to_have_count(0)

    # the state survives a reload (it lives in the API, not the page)
    page.reload()
    expect(page.get_by_test_id("board-title")).to_have_text(board_name)
    expect(page.get_by_test_id("column-todo").get_by_test_id("item-title")).to_have_text(["Write the release notes v2"])
    expect(page.get_by_test_id("column-doing").get_by_test_id("item-row")).to_have_count(0)
    expect(page.get_by_test_id("column-done").get_by_test_id("item-title")).to_have_text(["Book the demo room"])
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_an_empty_title_is_refused_with_a_message(page: Page, board_name: str) -> None:
    create_board(page, board_name)
    open_board(page, board_name)
    page.get_by_test_id("item-title-input").fill("   ")
    page.get_by_test_id("add-item").click()
    expect(page.get_by_test_id("error")).to_be_visible()
    expect(page.get_by_test_id("item-row")).to_have_count(0)
