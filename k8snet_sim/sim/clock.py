"""The simulation clock: a simpy Environment whose commonest event, a function call, is cheap.

Almost every event of a load run is "call this datapath function at time t" (a packet reaching
the next namespace, a packet joining an egress queue once its CPU work is done). simpy would
make each a ``Timeout`` with a callback list and run it through a callback. :class:`Clock`
queues the call itself in the same heap — ``(time, priority, event id, fn, args)``, and
simpy's events as ``(time, priority, event id, None, event)``, ordered as simpy orders them
since event ids are unique — and its :meth:`Clock.step` calls the function directly. Every
other simpy event (processes, timeouts, ``run(until=…)``) is processed exactly as simpy
processes it, so the order of events,
their ids and the clock are those of a plain :class:`simpy.Environment`. (Only this class's own
``step`` and ``run`` may take events off its queue: simpy's would not know a call entry.)

Timers of one fixed length (a SYN retransmission timer per connection, mostly never needed)
would fill the heap and make every push and pop dearer. :meth:`Clock.call_timer` keeps the
calls of each length in a FIFO — they fall due in the order they were set — with only the
oldest in the heap, under its own time and event id: the order of events is unchanged.

Example
-------
>>> clock = Clock()
>>> seen = []
>>> clock.call_later(0.5, seen.append, ("b",))
>>> clock.call_later(0.25, seen.append, ("a",))
>>> clock.run(); seen, clock.now
(['a', 'b'], 0.5)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.core import BoundClass, EmptySchedule, StopSimulation
from simpy.events import NORMAL, URGENT, Event, EventPriority

CALL = NORMAL  # a call is ordered like a Timeout: normal priority, then by event id


class Clock(simpy.Environment):
    """A :class:`simpy.Environment` with :meth:`call_later` and a step that runs calls inline."""

    # Entries are (time, priority, id, fn, args): fn None for a simpy event (then args).
    _queue: list[Any]

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self._timers: dict[
            float, deque[tuple[float, int, Callable[..., Any], tuple[Any, ...]]]
        ] = {}
        # simpy binds its event classes (timeout, process…) to the instance for speed, but only
        # those declared on the instance's own class: bind the inherited ones too.
        for name, obj in simpy.Environment.__dict__.items():
            if type(obj) is BoundClass:
                setattr(self, name, getattr(self, name))

    def schedule(self, event: Event, priority: EventPriority = NORMAL, delay: float = 0) -> None:
        """Schedule a simpy event (simpy's own ``schedule``, in this queue's entry shape)."""
        heappush(self._queue, (self._now + delay, priority, next(self._eid), None, event))

    def call_later(self, delay: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Call ``fn(*args)`` after ``delay`` (≥ 0) simulated seconds, in the same order a
        simpy Timeout scheduled now would fire."""
        heappush(self._queue, (self._now + delay, CALL, next(self._eid), fn, args))

    def call_timer(self, delay: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """:meth:`call_later` for a timer whose length many timers share: the same order of
        events, a smaller heap (see the module notes).

        >>> clock, seen = Clock(), []
        >>> for name in "abc":
        ...     clock.call_timer(1.0, seen.append, (name,))
        >>> clock.call_later(1.0, seen.append, ("d",))
        >>> clock.run(); seen
        ['a', 'b', 'c', 'd']
        """
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        # Times set later are never earlier (the clock only advances and rounding is
        # monotonic), and event ids grow: each FIFO is in (time, id) order.
        at, eid = self._now + delay, next(self._eid)
        fifo = self._timers.get(delay)
        if fifo is None:
            fifo = self._timers[delay] = deque()
        if not fifo:
            heappush(self._queue, (at, CALL, eid, self._timer_due, (fifo,)))
        fifo.append((at, eid, fn, args))

    def _timer_due(
        self, fifo: deque[tuple[float, int, Callable[..., Any], tuple[Any, ...]]]
    ) -> None:
        _, _, fn, args = fifo.popleft()
        if fifo:  # the next timer of this length takes the oldest one's place in the heap
            at, eid, _, _ = fifo[0]
            heappush(self._queue, (at, CALL, eid, self._timer_due, (fifo,)))
        fn(*args)

    def step(self) -> None:
        """Process the next event (simpy's ``step``, with function calls made directly)."""
        try:
            entry = heappop(self._queue)
        except IndexError:
            raise EmptySchedule from None
        self._now, _, _, fn, args = entry
        if fn is not None:
            fn(*args)
        else:
            _process(self, args)

    def run(self, until: float | Event | None = None) -> Any:
        """simpy's ``run``, with :meth:`step` inlined for calls (the hot loop of a load run)."""
        if until is not None:
            if not isinstance(until, Event):
                at = until if isinstance(until, int) else float(until)
                if at <= self.now:
                    raise ValueError(
                        f"until ({at}) must be greater than the current simulation time"
                    )
                until = Event(self)
                until._ok = True
                until._value = None
                self.schedule(until, URGENT, at - self.now)
            elif until.callbacks is None:
                return until.value
            until.callbacks.append(StopSimulation.callback)
        queue = self._queue
        try:
            while True:
                try:
                    entry = heappop(queue)
                except IndexError:
                    raise EmptySchedule from None
                self._now, _, _, fn, args = entry
                if fn is not None:  # a call: (time, priority, id, fn, args)
                    fn(*args)
                else:  # a simpy event: (time, priority, id, None, event)
                    _process(self, args)
        except StopSimulation as exc:
            return exc.args[0]  # == until.value
        except EmptySchedule:
            if until is not None:
                assert not until.triggered
                raise RuntimeError(
                    f'No scheduled events left but "until" event was not triggered: {until}'
                ) from None
        return None


def _process(env: simpy.Environment, event: Any) -> None:
    """The body of simpy's ``Environment.step`` after the event left the queue."""
    callbacks, event.callbacks = event.callbacks, None
    try:
        for callback in callbacks:
            callback(event)
    except StopSimulation:
        # Reassociate any remaining callbacks with the event and reschedule it to be processed
        # when the simulation resumes (as simpy does).
        event.callbacks = callbacks[callbacks.index(callback) + 1 :]
        env.schedule(event, EventPriority(-1))
        raise
    if not event._ok and not hasattr(event, "_defused"):
        # The event failed and nobody defused it: crash the environment, as simpy does.
        exc = type(event._value)(*event._value.args)
        exc.__cause__ = event._value
        raise exc
