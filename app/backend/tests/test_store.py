from __future__ import annotations

from sunday_api.store import MemoryStore


def test_board_lifecycle(store: MemoryStore) -> None:
    board = store.create_board("Launch")
    assert [b.name for b in store.list_boards()] == ["Launch"]
    renamed = store.rename_board(board.id, "Launch v2")
    assert renamed is not None and renamed.name == "Launch v2"
    assert store.delete_board(board.id) is True
    assert store.get_board(board.id) is None
    assert store.delete_board(board.id) is False


def test_items_belong_to_board_and_cascade(store: MemoryStore) -> None:
    a = store.create_board("A")
    b = store.create_board("B")
    item = store.create_item(a.id, "one", "todo")
    store.create_item(b.id, "two", "doing")
    assert item is not None
    got = store.get_board(a.id)
    assert got is not None and got.items is not None
    assert [i.title for i in got.items] == ["one"]
    store.delete_board(a.id)
    assert store.update_item(item.id, {"status": "done"}) is None
    got_b = store.get_board(b.id)
    assert got_b is not None and got_b.items is not None and len(got_b.items) == 1


def test_item_on_missing_board(store: MemoryStore) -> None:
    assert store.create_item(999, "orphan", "todo") is None


def test_update_item_partial(store: MemoryStore) -> None:
    board = store.create_board("B")
    item = store.create_item(board.id, "old", "todo")
    assert item is not None
    updated = store.update_item(item.id, {"status": "doing"})
    assert updated is not None and (updated.title, updated.status) == ("old", "doing")
    updated = store.update_item(item.id, {"title": "new"})
    assert updated is not None and (updated.title, updated.status) == ("new", "doing")
    assert store.delete_item(item.id) is True
    assert store.delete_item(item.id) is False
