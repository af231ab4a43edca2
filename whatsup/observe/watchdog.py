"""Blocked or starved? Sharpens gevent's blocked-hub reports (issue 7: "the hub never blocks").

gevent's monitor thread (``GEVENT_MONITOR_THREAD_ENABLE=1``) reports a greenlet
that ran ``GEVENT_MAX_BLOCKING_TIME`` without switching: code that blocks the
hub. On a machine with more runnable threads than cores the hub thread can
also just *wait that long for a CPU* in the middle of a non-blocking send (we
measured 10-15 ms of wall time with no CPU time at load 8 on 2 cores): no code
of ours blocked, and a test failing on that would be flaky, not strict.

Linux counts, per thread, the time it spent runnable on a run queue
(``/proc/self/task/TID/schedstat``, second field). This module samples that
counter once per monitor period and, when a report comes, subtracts the wait
from the blocked time: a report whose remainder is under the limit is replaced
by one line saying the hub was starved. Real blocking (a sleep, a disk call, a
long loop) is not waiting on a run queue, so it is still reported in full, and
the test harness still fails on every "appears to be blocked".
"""
import threading
import time

import gevent
from gevent.events import EventLoopBlocked
from zope.event import subscribers


def run_queue_wait(tid):
    """Seconds thread ``tid`` of this process has spent runnable but not running; None if unknown."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StarvationFilter:
    """Subscriber to gevent's EventLoopBlocked; ``sample`` runs on the monitor thread every period."""

    def __init__(self, tid, limit, waited=run_queue_wait, clock=time.perf_counter):
        self.tid, self.limit, self.waited, self.clock = tid, limit, waited, clock
        self.last = (clock(), waited(tid))
        self.starved = 0

    def __repr__(self):
        return f"<StarvationFilter tid={self.tid} limit={self.limit} starved={self.starved}>"

    def sample(self, _hub):
        self.last = (self.clock(), self.waited(self.tid))

    def __call__(self, event):
        if not isinstance(event, EventLoopBlocked):
            return
        since, waited_before = self.last
        waited_now = self.waited(self.tid)
        if waited_before is None or waited_now is None:
            return
        elapsed, waited = self.clock() - since, waited_now - waited_before
        if elapsed - waited < self.limit:
            self.starved += 1
            event.info[:] = [f"whatsup.observe.watchdog: the hub thread waited {waited:.3f} s of the last "
                             f"{elapsed:.3f} s for a CPU: starved by the OS, not blocked "
                             f"(gevent's report dropped; {self.starved} so far)"]


def install():
    """Attach the filter to this thread's hub if gevent's monitor thread runs; returns it or None."""
    monitor = gevent.get_hub().start_periodic_monitoring_thread()  # None unless enabled
    if monitor is None:
        return None
    limit = gevent.config.max_blocking_time
    starvation = StarvationFilter(threading.get_native_id(), limit)
    monitor.add_monitoring_function(starvation.sample, limit)
    subscribers.append(starvation)
    return starvation
