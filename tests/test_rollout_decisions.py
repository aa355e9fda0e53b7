"""Pure rollout decisions: when the watch window may fail early, and what an unanswered approval says."""

from __future__ import annotations

from sunday_release.bluegreen import WATCH_MIN_REQUESTS, SmokeResult, watch_should_stop, watch_verdict
from sunday_release.run_tags import approval_timeout_message, rejection_message

OK = SmokeResult("backend", "/healthz", "127.0.0.1:8081", True, 200, 3.0)
DOWN = SmokeResult("backend", "/readyz", "127.0.0.1:8081", False, 503, 3.0, "status 503, expected 200")


def test_a_failed_smoke_check_stops_the_watch_at_once() -> None:
    verdict = watch_verdict([200], [OK, DOWN], 0.01)
    assert not verdict.passed and watch_should_stop(verdict, [OK, DOWN])


def test_an_error_rate_stops_the_watch_only_once_enough_requests_were_seen() -> None:
    early = [500, 200]  # one 500 among the first two requests: over the rate, but no rate yet
    assert not watch_verdict(early, [OK], 0.01).passed
    assert not watch_should_stop(watch_verdict(early, [OK], 0.01), [OK])
    enough = [500, 200, 200] * (WATCH_MIN_REQUESTS // 3 + 1)
    verdict = watch_verdict(enough, [OK], 0.01)
    assert verdict.reason == f"error rate {verdict.errors}/{len(enough)} above 1.0%"
    assert watch_should_stop(verdict, [OK])


def test_a_healthy_watch_never_stops_early() -> None:
    many = [200] * (WATCH_MIN_REQUESTS * 5) + [500]  # under the rate
    verdict = watch_verdict(many, [OK], 0.01)
    assert verdict.passed and not watch_should_stop(verdict, [OK])
    assert not watch_should_stop(watch_verdict([], [OK], 0.01), [OK])


def test_an_unanswered_approval_says_it_timed_out_and_that_traffic_did_not_move() -> None:
    message = approval_timeout_message(10)
    assert message == ("approval timed out: nobody approved or rejected the deploy within 10s (approval_timeout); "
                       "traffic was not moved")
    assert message != rejection_message("")  # not mistaken for a person's rejection
