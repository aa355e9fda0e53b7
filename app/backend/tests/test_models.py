from __future__ import annotations

import pytest

from sunday_api import models
from sunday_api.models import ValidationError


def test_board_name_is_trimmed() -> None:
    assert models.parse_board_create({"name": "  Roadmap  "}) == "Roadmap"


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, None, 42])
def test_board_name_rejects_bad_values(name: object) -> None:
    with pytest.raises(ValidationError):
        models.parse_board_create({"name": name})


def test_board_name_limits_inclusive() -> None:
    assert models.validate_board_name("x") == "x"
    assert models.validate_board_name("x" * 100) == "x" * 100


def test_item_title_limits() -> None:
    assert models.validate_item_title("t" * 200) == "t" * 200
    with pytest.raises(ValidationError):
        models.validate_item_title("t" * 201)


def test_item_create_defaults_to_todo() -> None:
    assert models.parse_item_create({"title": "Write docs"}) == {"title": "Write docs", "status": "todo"}


@pytest.mark.parametrize("status", ["todo", "doing", "done"])
def test_valid_statuses(status: str) -> None:
    assert models.validate_status(status) == status


@pytest.mark.parametrize("status", ["TODO", "blocked", "", None, 1])
def test_invalid_statuses(status: object) -> None:
    with pytest.raises(ValidationError):
        models.validate_status(status)


def test_item_update_requires_a_field() -> None:
    with pytest.raises(ValidationError):
        models.parse_item_update({})
    assert models.parse_item_update({"status": "done"}) == {"status": "done"}


def test_body_must_be_an_object() -> None:
    with pytest.raises(ValidationError):
        models.parse_board_create(["name"])
