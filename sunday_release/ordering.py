"""Which of two versions is older: release tags by their numbers (`v1.10.0` > `v1.9.2`). Pure."""

from __future__ import annotations

import re

__all__ = ["tag_key", "tag_is_older"]


def tag_key(tag: str) -> tuple[int, ...]:
    """The numbers of a release tag, in order: `v1.10.0-rc2` → (1, 10, 0, 2)."""
    return tuple(int(n) for n in re.findall(r"\d+", tag))


def tag_is_older(new: str, live: str, release_tags: str) -> bool:
    """True when both are release tags and `new` sorts before `live` (an equal tag is a redeploy, not older)."""
    if not (re.match(release_tags, new) and re.match(release_tags, live)):
        return False
    return tag_key(new) < tag_key(live)
