"""What a shared store keeps of an environment's release history: the newest releases, within a size.

A store outside this machine (the kubernetes target's ConfigMap) holds at most `MAX_RELEASES` of the
newest releases, plus the live one and the rollback target however old they are, and at most
`MAX_BYTES` of JSON; older releases are dropped first. Pure: no I/O, no Prefect.
"""

from __future__ import annotations

from sunday_release.bluegreen import EnvState, Release
from sunday_release.errors import PipelineError

__all__ = ["MAX_BYTES", "MAX_RELEASES", "encode_state", "rollback_target", "trim_state"]

MAX_RELEASES = 100
MAX_BYTES = 512 * 1024  # half a ConfigMap (1 MiB), leaving room for the environment's config


def encode_state(state: EnvState) -> str:
    """The state as compact JSON: what the store holds."""
    return state.model_dump_json()


def rollback_target(state: EnvState) -> Release | None:
    """The release a `rollback` without `--to` goes back to: the newest kept one that is not the live revision."""
    kept = [r for r in state.history if r.outcome in ("superseded", "live") and r.revision != state.revision]
    return kept[-1] if kept else None


def trim_state(state: EnvState, keep: int = MAX_RELEASES, max_bytes: int = MAX_BYTES) -> EnvState:
    """A copy of `state` with the newest `keep` releases (plus the live one and the rollback target) and
    at most `max_bytes` of JSON (`encode_state`, UTF-8), dropping the oldest releases first.

    Raises:
        PipelineError: the live release and the rollback target alone exceed `max_bytes`.
    """
    live = state.live_release() if state.live else None
    target = rollback_target(state)
    protected = {id(r) for r in (live, target) if r is not None}
    newest = {id(r) for r in state.history[-keep:]} if keep > 0 else set()
    history = [r for r in state.history if id(r) in newest or id(r) in protected]
    # compact JSON: the history list's bytes are its items' bytes plus one comma between two items
    base = len(encode_state(state.model_copy(update={"history": []})).encode())
    sizes = [len(r.model_dump_json().encode()) for r in history]
    total = base + sum(sizes) + max(len(history) - 1, 0)
    drop: set[int] = set()
    for release, size in zip(history, sizes, strict=True):
        if total <= max_bytes:
            break
        if id(release) in protected:
            continue
        drop.add(id(release))
        total -= size + (1 if len(history) - len(drop) > 0 else 0)
    trimmed = state.model_copy(deep=True, update={"history": [r.model_copy(deep=True) for r in history
                                                              if id(r) not in drop]})
    size = len(encode_state(trimmed).encode())
    if size > max_bytes:
        raise PipelineError(f"the release history of {state.env} is {size} bytes with only the live release and "
                            f"the rollback target, more than the {max_bytes} bytes the store keeps")
    return trimmed
