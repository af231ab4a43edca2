"""The watchdog tells a blocked hub from one the OS starved of CPU (fake clock, fake counter)."""
import threading

from gevent.events import EventLoopBlocked

from whatsup.observe.watchdog import StarvationFilter, run_queue_wait


class Fake:
    def __init__(self):
        self.now = self.wait = 0.0

    def clock(self):
        return self.now

    def waited(self, _tid):
        return self.wait


def blocked_report(starvation):
    event = EventLoopBlocked(None, 0.1, ["Greenlet x appears to be blocked", "stack..."])
    starvation(event)
    return event.info


def test_a_hub_that_waited_for_a_cpu_is_starved_not_blocked():
    fake = Fake()
    starvation = StarvationFilter(1, 0.1, fake.waited, fake.clock)
    fake.now, fake.wait = 0.15, 0.12  # 0.03 s of our own time: under the limit
    info = blocked_report(starvation)
    assert len(info) == 1 and "starved" in info[0] and "appears to be blocked" not in info[0]


def test_a_hub_that_ran_or_slept_past_the_limit_is_still_reported_in_full():
    fake = Fake()
    starvation = StarvationFilter(1, 0.1, fake.waited, fake.clock)
    fake.now, fake.wait = 0.5, 0.05   # e.g. a sleep or a disk call on the hub
    assert blocked_report(starvation)[0] == "Greenlet x appears to be blocked"
    starvation.sample(None)           # the monitor's next period starts from here
    fake.now, fake.wait = 0.62, 0.13
    assert "starved" in blocked_report(starvation)[0]


def test_this_kernel_counts_run_queue_wait_per_thread():
    assert run_queue_wait(threading.get_native_id()) is not None
