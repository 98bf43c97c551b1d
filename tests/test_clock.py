"""The simulation clock (sim.clock.Clock): calls, fixed-length timers and simpy's own events
happen in exactly the order, at exactly the times, a plain simpy Environment gives them."""

from __future__ import annotations

from typing import Any

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from k8snet_sim.sim.clock import Clock

# A schedule: (kind, delay) actions, each run at the time of the action before it.
actions = st.lists(
    st.tuples(
        st.sampled_from(["call", "timer", "timeout", "process", "urgent"]),
        st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 0.25]),
    ),
    min_size=1,
    max_size=40,
)


def _play(env: simpy.Environment, plan: list[tuple[str, float]], fast: bool) -> list[Any]:
    """Schedule ``plan`` (each action scheduled from the previous one's callback) and record
    (time, label) as things fire. With ``fast`` calls and timers use the Clock's own queue
    entries; otherwise simpy Timeouts stand for them."""
    log: list[Any] = []

    def fire(label: str, rest: list[tuple[str, float]]) -> None:
        log.append((env.now, label))
        if rest:
            schedule(rest[0], rest[1:], label)

    def schedule(action: tuple[str, float], rest: list[tuple[str, float]], parent: str) -> None:
        kind, delay = action
        label = f"{parent}>{kind}{delay}"
        if kind in ("call", "timer") and fast:
            assert isinstance(env, Clock)
            method = env.call_later if kind == "call" else env.call_timer
            method(delay, fire, (label, rest))
        elif kind in ("call", "timer", "timeout"):
            env.timeout(delay).callbacks.append(lambda _e: fire(label, rest))
        elif kind == "process":

            def proc() -> Any:
                yield env.timeout(delay)
                fire(label, rest)

            env.process(proc())
        else:  # an already-triggered event: scheduled URGENT by succeed()
            event = env.event()
            event.callbacks.append(lambda _e: fire(label, rest))
            event.succeed()
        # A second, independent chain keeps several things pending at once.
        if kind == "timer" and len(rest) > 2:
            schedule(rest[-1], [], label + "+")

    schedule(plan[0], plan[1:], "")
    return log


@settings(max_examples=200, deadline=None)
@given(actions)
def test_clock_orders_events_as_simpy_does(plan: list[tuple[str, float]]) -> None:
    plain = simpy.Environment()
    clock = Clock()
    expected = _play(plain, plan, fast=False)
    plain.run()
    got = _play(clock, plan, fast=True)
    clock.run()
    assert got == expected
    assert next(clock._eid) == next(plain._eid)  # the same number of events scheduled


def test_run_until_a_time_and_step_by_step() -> None:
    clock, seen = Clock(), list[Any]()
    for t in (0.3, 0.1, 0.2):
        clock.call_later(t, seen.append, (t,))
    clock.call_timer(0.2, seen.append, ("timer",))
    clock.run(until=0.15)
    assert seen == [0.1] and clock.now == 0.15
    clock.step()  # simpy leaves the spent "until" event queued: this step takes it
    assert seen == [0.1] and clock.now == 0.15
    clock.step()
    assert seen == [0.1, 0.2]
    clock.run()
    assert seen == [0.1, 0.2, "timer", 0.3] and clock.now == 0.3


def test_run_until_an_event_returns_its_value() -> None:
    clock = Clock()
    done = clock.event()
    clock.call_later(1.0, done.succeed, ("ok",))
    clock.call_later(2.0, pytest.fail, ("ran past the until event",))
    assert clock.run(until=done) == "ok"
    assert clock.now == 1.0


def test_a_failed_event_crashes_the_run_as_in_simpy() -> None:
    clock = Clock()
    clock.event().fail(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        clock.run()


def test_negative_timer_delays_are_refused() -> None:
    with pytest.raises(ValueError):
        Clock().call_timer(-1.0, print, ())


def test_the_heap_holds_one_entry_per_timer_length() -> None:
    clock = Clock()
    for _ in range(100):
        clock.call_timer(1.0, lambda: None, ())
        clock.call_timer(2.0, lambda: None, ())
    assert len(clock._queue) == 2
    clock.run()
    assert clock.now == 2.0 and not clock._queue
