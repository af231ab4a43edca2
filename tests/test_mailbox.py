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
