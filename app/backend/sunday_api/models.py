"""Domain models and input validation."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional

STATUSES = ("todo", "doing", "done")
BOARD_NAME_MAX = 100
ITEM_TITLE_MAX = 200


class ValidationError(ValueError):
    """Raised for invalid client input; rendered as HTTP 400."""


@dataclass
class Item:
    id: int
    board_id: int
    title: str
    status: str
    created_at: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Board:
    id: int
    name: str
    created_at: str
    items: Optional[List[Item]] = field(default=None)

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"id": self.id, "name": self.name, "created_at": self.created_at}
        if self.items is not None:
            data["items"] = [item.to_dict() for item in self.items]
        return data


def _require_object(payload: Any) -> Mapping[str, Any]:
    if not isinstance(payload, dict):
        raise ValidationError("request body must be a JSON object")
    return payload


def _text(value: Any, label: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{label} must be a string")
    text = value.strip()
    if not 1 <= len(text) <= max_len:
        raise ValidationError(f"{label} must be 1..{max_len} characters")
    return text


def validate_board_name(value: Any) -> str:
    return _text(value, "name", BOARD_NAME_MAX)


def validate_item_title(value: Any) -> str:
    return _text(value, "title", ITEM_TITLE_MAX)


def validate_status(value: Any) -> str:
    if value not in STATUSES:
        raise ValidationError("status must be one of " + "|".join(STATUSES))
    return str(value)


def parse_board_create(payload: Any) -> str:
    return validate_board_name(_require_object(payload).get("name"))


def parse_board_update(payload: Any) -> str:
    return validate_board_name(_require_object(payload).get("name"))


def parse_item_create(payload: Any) -> Dict[str, str]:
    data = _require_object(payload)
    return {
        "title": validate_item_title(data.get("title")),
        "status": validate_status(data.get("status", "todo")),
    }


def parse_item_update(payload: Any) -> Dict[str, str]:
    data = _require_object(payload)
    changes: Dict[str, str] = {}
    if "title" in data:
        changes["title"] = validate_item_title(data["title"])
    if "status" in data:
        changes["status"] = validate_status(data["status"])
    if not changes:
        raise ValidationError("nothing to update: give title and/or status")
    return changes
