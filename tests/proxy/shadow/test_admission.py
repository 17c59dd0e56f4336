"""The copies a process admits: the rate cap and the per-route breaker, on an injected clock."""

from __future__ import annotations

from proxy.shadow.admission import Admission
from proxy.shadow.model import SkipReason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tripped(admission: Admission, route: str = "r") -> None:
    for _ in range(5):
        assert admission.refuse(route) is None
        admission.failed(route)


def test_five_failures_pause_the_route_then_one_probe_goes_through() -> None:
    clock = Clock()
    admission = Admission(rate=0, clock=clock)
    tripped(admission)
    assert admission.refuse("r") is SkipReason.CANDIDATE_DOWN
    assert admission.paused("r")
    assert admission.refuse("other") is None  # another route is not paused
    clock.now += 5.1
    assert not admission.paused("r")
    assert admission.refuse("r") is None  # the probe
    # Only the probe, until it has answered or failed.
    assert [admission.refuse("r") for _ in range(100)] == [SkipReason.CANDIDATE_DOWN] * 100
    admission.answered("r")
    assert admission.refuse("r") is None
    assert admission.refuse("r") is None


def test_a_failed_probe_doubles_the_cool_down() -> None:
    clock = Clock()
    admission = Admission(rate=0, clock=clock)
    tripped(admission)
    clock.now += 5.1
    assert admission.refuse("r") is None
    admission.failed("r")
    clock.now += 9.9
    assert admission.refuse("r") is SkipReason.CANDIDATE_DOWN
    clock.now += 0.2  # 10 s after the failed probe
    assert admission.refuse("r") is None


def test_failures_of_copies_sent_before_the_pause_do_not_lengthen_it() -> None:
    clock = Clock()
    admission = Admission(rate=0, clock=clock)
    tripped(admission)
    for _ in range(16):  # the copies that were in flight when it opened
        admission.failed("r")
    clock.now += 5.1
    assert admission.refuse("r") is None


def test_an_answer_closes_the_breaker_before_it_opens() -> None:
    admission = Admission(rate=0, clock=Clock())
    for _ in range(4):
        admission.failed("r")
    admission.answered("r")
    for _ in range(4):
        admission.failed("r")
    assert admission.refuse("r") is None  # never five in a row


def test_the_rate_cap_is_a_token_bucket_of_one_second() -> None:
    clock = Clock()
    admission = Admission(rate=10, clock=clock)
    answers = [admission.refuse("r") for _ in range(15)]
    assert answers.count(None) == 10
    assert answers[10:] == [SkipReason.RATE_LIMITED] * 5
    clock.now += 0.5
    assert [admission.refuse("r") for _ in range(6)].count(None) == 5
