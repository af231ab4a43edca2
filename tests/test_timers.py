"""The node's deadlines (whatsup/runtime/timers.py): only what is due is touched."""
import gevent

from whatsup.runtime import ProcessTable
from whatsup.runtime.timers import DeadlineHeap, Timers
from whatsup.testing import Recorder


def test_only_the_due_entries_are_popped_in_time_order():
    heap = DeadlineHeap()
    for entry in [(30.0, "c"), (10.0, "a2"), (20.0, "b"), (10.0, "a")]:
        heap.push(entry)
    assert heap.earliest() == 10.0
    assert heap.pop_due(5.0) == []
    assert heap.pop_due(20.0) == [(10.0, "a"), (10.0, "a2"), (20.0, "b")]
    assert len(heap) == 1 and heap.earliest() == 30.0


def test_a_process_is_notified_once_its_deadline_passed_and_a_dead_one_is_skipped():
    table = ProcessTable()
    timers = Timers(table)
    seen = []
    pid = table.start(Recorder, seen)
    gone = table.start(Recorder, [])
    table.stop(gone)
    now = timers.clock()
    timers.notify_at(now + 0.2, pid, ("later",))
    timers.notify_at(now + 0.05, pid, ("sooner",))
    timers.notify_at(now + 0.01, gone, ("never",))
    assert len(timers.heap) == 3
    with gevent.Timeout(5):
        while len(seen) < 2:
            gevent.sleep(0.01)
    assert seen == [("sooner",), ("later",)] and len(timers.heap) == 0
    timers.stop()
