"""Mailbox bounds and coalesced wake-ups of the runtime, in-process (no sockets)."""
import gevent
import pytest

from whatsup.routing.router import Router
from whatsup.runtime import MailboxFull, ProcessTable


class Recorder:
    """Records what it handles; blocks on an event first so messages can pile up."""
    @staticmethod
    def init(proc, gate, seen):
        return (gate, seen)

    @staticmethod
    def handle_info(proc, msg, state):
        gate, seen = state
        gate.wait()
        seen.append(msg)
        return state


def spawn(**opts):
    table = ProcessTable("test@localhost")
    gate, seen = gevent.event.Event(), []
    pid = table.spawn(Recorder, gate, seen, **opts)
    gevent.sleep(0)
    return table, pid, gate, seen


def test_a_burst_of_pokes_queues_one_and_a_poke_after_handling_queues_again():
    table, pid, gate, seen = spawn()
    for _ in range(50_000):
        table.notify(pid, ("poke",))
    table.notify(pid, ("tick", 1.0))
    table.notify(pid, ("tick", 2.0))
    assert len(table.lookup(pid).mailbox) == 2
    gate.set()
    gevent.sleep(0.01)
    assert seen == [("poke",), ("tick", 1.0)]
    table.notify(pid, ("poke",))
    gevent.sleep(0.01)
    assert seen[-1] == ("poke",)


def test_send_to_a_full_mailbox_raises_and_queues_nothing():
    table, pid, gate, seen = spawn(mailbox_max=3)
    table.send(pid, ("m", 0))
    gevent.sleep(0)  # taken: the process now waits at the gate
    for i in range(1, 4):
        table.send(pid, ("m", i))
    with pytest.raises(MailboxFull):
        table.send(pid, ("m", 99))
    table.notify(pid, ("poke",))  # wake-ups bypass the bound: there is one per tag at most
    gate.set()
    gevent.sleep(0.01)
    assert seen == [("m", 0), ("m", 1), ("m", 2), ("m", 3), ("poke",)]


def test_the_router_closes_a_session_whose_mailbox_is_full_and_says_so_once(caplog):
    table, pid, gate, seen = spawn(mailbox_max=2, kind="session")
    proc = table.lookup(pid)
    router = Router(table, None, None, None, None, 16, None)
    table.send(pid, ("reply", 0))
    gevent.sleep(0)  # taken: the process now waits at the gate
    for i in range(1, 10):
        router.tell(pid, ("reply", i))
    gevent.sleep(0.01)
    assert proc.exit_reason == ("closed", "overloaded")
    assert router.counters["overloaded"] == 1
    assert [r.getMessage() for r in caplog.records if "mailbox full" in r.getMessage()] == \
        [f"session {pid!r}: mailbox full, closing it (overloaded)"]


def test_the_mailbox_wakes_its_reader_once_for_a_burst_and_never_after_the_reader_was_thrown_out():
    from whatsup.runtime.mailbox import Mailbox
    box, got = Mailbox(), []

    def reader():
        while True:
            got.append(box.get())
    g = gevent.spawn(reader)
    gevent.sleep(0)
    for n in range(3):  # one wake-up: the reader takes all three in one go, in order
        box.put(n)
    gevent.sleep(0)
    assert got == [0, 1, 2] and len(box) == 0
    g.kill(block=False)  # its throw is queued on the loop first...
    box.put("late")  # ...so the wake-up runs after it and must not switch to a dead reader
    gevent.sleep(0)
    assert g.dead and got == [0, 1, 2] and list(box.queue) == ["late"]
    assert box.get_nowait() == "late"
    with pytest.raises(gevent.queue.Empty):
        box.get_nowait()


def test_a_reader_woken_by_something_else_is_not_switched_to_by_a_stale_wake_up():
    """A put schedules a wake-up; if the reader is resumed otherwise first (a timeout thrown into
    it) and then waits elsewhere, the wake-up finds nobody in get() and does nothing."""
    from whatsup.runtime.mailbox import Mailbox
    box, other, log = Mailbox(), gevent.event.Event(), []

    def reader():
        try:
            with gevent.Timeout(0.01):
                box.get()
        except gevent.Timeout:
            log.append("timed out")
        other.wait()  # waits elsewhere: a stray switch would return from here early
        log.append("woken by the event")
    g = gevent.spawn(reader)
    gevent.sleep(0.02)
    box.put("x")
    gevent.sleep(0.01)
    assert log == ["timed out"]
    other.set()
    g.join(1)
    assert log == ["timed out", "woken by the event"] and list(box.queue) == ["x"]
