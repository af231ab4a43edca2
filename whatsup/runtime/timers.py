"""Deadlines in a heap: work proportional to what is due, not to what exists (issue 10).

Erlang's ``erlang:send_after``: ``notify_at(when, pid, msg)`` wakes ``pid`` with
the coalesced ``msg`` (ProcessTable.notify) once the monotonic clock reaches
``when``. One libev timer on the hub is armed for the earliest entry; when it
fires, only the due entries are popped, so 10,000 idle sessions cost nothing
until one of them is due (the once-a-second sweep that poked every session
was a 40-50 ms burst at 5,000 sessions, and 3-6 % CPU with all of them idle).

Entries are never cancelled: a process that moved its deadline on (a session
that received a frame) finds, when the old entry fires, that nothing is due
yet and schedules the new one. Each process keeps at most a couple of entries
alive that way. :class:`DeadlineHeap` is the I/O-free part (a fake clock tests
it); :class:`Timers` arms the hub's timer for it. An entry is one flat tuple
(10,000 sessions each hold one while idle: idle memory per connection counts).
"""
import heapq
import time

import gevent

from .process import ProcessDead

#: Due entries are gathered for this long after the earliest one, so a thousand deadlines a few
#: milliseconds apart take one wake-up, not a thousand (deadlines here are seconds long).
SLACK = 0.05


class DeadlineHeap:
    """Entries are tuples ``(when, ...)`` whose other fields compare (they break ties);
    ``pop_due(now)`` takes those due by ``now``, in time order."""

    def __init__(self):
        self._heap = []

    def __len__(self):
        return len(self._heap)

    def push(self, entry):
        heapq.heappush(self._heap, entry)

    def earliest(self):
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now):
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        return due


class Timers:
    """The node's deadlines: ``notify_at`` from any greenlet; the notifications run on the hub."""

    def __init__(self, table, clock=time.monotonic):
        self.table, self.clock = table, clock
        self.heap = DeadlineHeap()
        self.fired = 0
        self._timer = None
        self._armed_for = None

    def __repr__(self):
        return f"<Timers entries={len(self.heap)} next={self.heap.earliest()} fired={self.fired}>"

    def notify_at(self, when, pid, msg):
        """Notify ``pid`` with ``msg`` at monotonic time ``when`` (or soon after, within SLACK)."""
        self.heap.push((when, pid, msg))
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)

    def _arm(self, when):
        if self._timer is not None:
            self._timer.stop()
        self._armed_for = when
        self._timer = gevent.get_hub().loop.timer(max(0.0, when - self.clock()) + SLACK)
        self._timer.start(self._fire)

    def _fire(self):
        """Runs on the hub: notify what is due, re-arm for the rest; never raises."""
        self._armed_for = None
        for _, pid, msg in self.heap.pop_due(self.clock()):
            self.fired += 1
            try:
                self.table.notify(pid, msg)
            except ProcessDead:
                pass
        earliest = self.heap.earliest()
        if earliest is not None:
            self._arm(earliest)

    def stop(self):
        if self._timer is not None:
            self._timer.stop()
