"""The release state machine (pure): phases of one blue-green release, legal moves, undo and crash decisions.

    started → migrated → idle-started → healthy → smoke-passed ─┬─ approved ─┬→ switched → watched → live
                                                                 └────────────┘
    any phase before `live` → rolled-back (something was live before) | failed (nothing was)

Undo is decided here next to the forward moves: `undo_steps` says which compensations a failure in a
given phase needs (switch traffic back, stop the idle color). After a crash, `reconcile_action` decides
from what the router and the engine show which single action makes one color serve again.

No Prefect, no Docker: `flows/cd.py` runs the tasks these decisions name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

__all__ = [
    "FORWARD",
    "TERMINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "Phase",
    "ReconcileAction",
    "UndoStep",
    "advance",
    "failure_outcome",
    "reconcile_action",
    "undo_steps",
]

Phase = Literal["started", "migrated", "idle-started", "healthy", "smoke-passed", "approved", "switched", "watched",
                "live", "failed", "rolled-back"]
UndoStep = Literal["switch-back", "stop-idle"]
ReconcileAction = Literal["none", "switch-to-other", "restart-live"]

FORWARD: tuple[Phase, ...] = ("started", "migrated", "idle-started", "healthy", "smoke-passed", "approved", "switched",
                              "watched", "live")
TERMINAL: frozenset[Phase] = frozenset({"live", "failed", "rolled-back"})

TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {  # any phase before a final one may also end failed/rolled-back
    "started": frozenset({"migrated", "failed", "rolled-back"}),
    "migrated": frozenset({"idle-started", "failed", "rolled-back"}),
    "idle-started": frozenset({"healthy", "failed", "rolled-back"}),
    "healthy": frozenset({"smoke-passed", "failed", "rolled-back"}),
    # `switched` straight after the smoke where no approval is asked
    "smoke-passed": frozenset({"approved", "switched", "failed", "rolled-back"}),
    "approved": frozenset({"switched", "failed", "rolled-back"}),
    "switched": frozenset({"watched", "failed", "rolled-back"}),
    "watched": frozenset({"live", "failed", "rolled-back"}),
    "live": frozenset(),
    "failed": frozenset(),
    "rolled-back": frozenset(),
}

_HEALTHY_ENOUGH = frozenset({"healthy", "starting"})


class IllegalTransition(ValueError):
    """A move the release state machine does not allow (a bug in the flow, never bad input)."""


def advance(current: Phase, new: Phase) -> Phase:
    """`new` if the machine allows moving from `current` to it; IllegalTransition otherwise."""
    if new not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, frozenset()))) or "nothing (it is final)"
        raise IllegalTransition(f"a release in phase {current!r} cannot move to {new!r} (allowed: {allowed})")
    return new


def failure_outcome(had_live: bool) -> Phase:
    """The final phase of a failed release: `rolled-back` when an older release keeps serving, else `failed`."""
    return "rolled-back" if had_live else "failed"


def undo_steps(phase: Phase, had_live: bool) -> list[UndoStep]:
    """The compensations, in order, for a failure while the release is in `phase`.

    Before `migrated` nothing of the release runs (a backup or a migration failed): nothing to undo.
    From `migrated` on the idle color may have (partly) started: stop it. Once traffic moved
    (`switched`, `watched`) it goes back first when an older color was live. A final phase has
    nothing to undo.
    """
    if phase in TERMINAL or phase == "started":
        return []
    steps: list[UndoStep] = []
    if had_live and FORWARD.index(phase) >= FORWARD.index("switched"):
        steps.append("switch-back")
    steps.append("stop-idle")
    return steps


def reconcile_action(router_color: str | None, live_health: Iterable[str], other_health: Iterable[str]
                     ) -> ReconcileAction:
    """After a crash: what makes one color serve, from the router's color and the health of both colors' replicas.

    The router's color is the truth. When one of its replicas is healthy (or starting) nothing is
    needed; else traffic moves to the other color if one of its replicas is healthy; else the live
    color's kept containers are started again.
    """
    if router_color is None:
        return "none"
    if any(h in _HEALTHY_ENOUGH for h in live_health):
        return "none"
    if any(h == "healthy" for h in other_health):
        return "switch-to-other"
    return "restart-live"
