"""The release state machine (pure): every transition, illegal moves, undo steps and crash decisions."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from sunday_release.bluegreen import EnvState, Release, render_rollout
from sunday_release.release import (
    FORWARD,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Phase,
    advance,
    failure_outcome,
    reconcile_action,
    undo_steps,
)

ALL: tuple[Phase, ...] = get_args(Phase)
LEGAL = [(a, b) for a in ALL for b in sorted(TRANSITIONS[a])]
ILLEGAL = [(a, b) for a in ALL for b in ALL if b not in TRANSITIONS[a]]


def test_the_core_module_imports_no_prefect() -> None:
    source = (Path(__file__).resolve().parent.parent / "sunday_release" / "release.py").read_text()
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert "prefect" not in imported and "httpx" not in imported


def test_every_phase_has_its_transitions() -> None:
    assert set(TRANSITIONS) == set(ALL)
    assert FORWARD[0] == "started" and FORWARD[-1] == "live"
    assert TERMINAL == {"live", "failed", "rolled-back"}


@pytest.mark.parametrize(("current", "new"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_a_legal_transition_is_taken(current: Phase, new: Phase) -> None:
    assert advance(current, new) == new


@pytest.mark.parametrize(("current", "new"), ILLEGAL, ids=[f"{a}-x->{b}" for a, b in ILLEGAL])
def test_an_illegal_transition_is_refused(current: Phase, new: Phase) -> None:
    with pytest.raises(IllegalTransition, match=f"phase '{current}' cannot move to '{new}'"):
        advance(current, new)


def test_the_happy_path_walks_forward_with_and_without_approval() -> None:
    phase: Phase = "started"
    for nxt in FORWARD[1:]:
        phase = advance(phase, nxt)
    assert phase == "live"
    phase = "smoke-passed"
    assert advance(phase, "switched") == "switched"  # no approval asked
    with pytest.raises(IllegalTransition):
        advance("healthy", "switched")  # never without a passed smoke check
    with pytest.raises(IllegalTransition):
        advance("started", "live")


@pytest.mark.parametrize("final", sorted(TERMINAL))
def test_a_final_phase_moves_nowhere(final: Phase) -> None:
    for new in ALL:
        with pytest.raises(IllegalTransition, match="it is final"):
            advance(final, new)


def test_a_failure_ends_rolled_back_only_when_something_was_live() -> None:
    assert failure_outcome(True) == "rolled-back" and failure_outcome(False) == "failed"
    for phase in ALL:
        if phase not in TERMINAL:
            assert advance(phase, failure_outcome(True)) == "rolled-back"
            assert advance(phase, failure_outcome(False)) == "failed"


@pytest.mark.parametrize(("phase", "had_live", "steps"), [
    ("started", True, []),  # backup or migration failed: nothing of the release runs
    ("migrated", True, ["stop-idle"]),  # the idle color may have started partly
    ("idle-started", True, ["stop-idle"]),
    ("healthy", True, ["stop-idle"]),
    ("smoke-passed", True, ["stop-idle"]),
    ("approved", True, ["stop-idle"]),
    ("switched", True, ["switch-back", "stop-idle"]),
    ("watched", True, ["switch-back", "stop-idle"]),
    ("switched", False, ["stop-idle"]),  # nothing to switch back to
    ("healthy", False, ["stop-idle"]),
    ("live", True, []),
    ("failed", True, []),
    ("rolled-back", False, []),
])
def test_undo_steps_follow_the_phase(phase: Phase, had_live: bool, steps: list[str]) -> None:
    assert undo_steps(phase, had_live) == steps


@pytest.mark.parametrize(("router", "live", "other", "action"), [
    (None, [], [], "none"),  # never deployed
    (None, [], ["healthy"], "none"),  # the router is the truth: no color was ever live
    ("blue", ["healthy", "healthy"], [], "none"),
    ("blue", ["starting"], ["healthy"], "none"),  # coming up: leave it
    ("blue", ["exited", "healthy"], [], "none"),  # one replica still serves
    ("blue", ["exited"], ["healthy"], "switch-to-other"),
    ("green", [], ["healthy", "exited"], "switch-to-other"),
    ("blue", ["unhealthy"], ["starting"], "restart-live"),  # the other is not ready: bring the live one back
    ("blue", [], [], "restart-live"),
    ("green", ["exited"], ["exited"], "restart-live"),
])
def test_reconcile_decides_one_action_from_what_it_sees(router: str | None, live: list[str], other: list[str],
                                                        action: str) -> None:
    assert reconcile_action(router, live, other) == action


def _release(revision: int, outcome: str, color: str = "blue") -> Release:
    return Release.model_validate({"revision": revision, "version": f"v{revision}", "digests": {"api": "r@sha256:1"},
                                   "color": color, "started": "2026-01-01T00:00:00+00:00", "outcome": outcome})


def test_close_interrupted_fails_releases_in_progress_and_follows_the_router() -> None:
    state = EnvState(env="staging", live="blue", revision=1,
                     history=[_release(1, "live"), _release(2, "in-progress", "green")])
    state.history[1].phase = "switched"
    state.close_interrupted("green")  # the crash happened after the switch: green serves
    assert state.history[1].outcome == "failed" and state.history[1].phase == "failed"
    assert "interrupted" in state.history[1].reason
    assert state.live == "green" and state.revision == 2


def test_render_rollout_lists_images_and_evidence() -> None:
    text = render_rollout("shop/staging", _release(3, "live"), ["notification success failed: answered 500"])
    assert text.startswith("# shop/staging: revision 3 — live\n")
    assert "| api | `r@sha256:1` |" in text and "- notification success failed: answered 500" in text
