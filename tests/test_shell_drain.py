"""What a fast drain does with each kind of message (whatsup/shell/drain.py), as pure functions."""
import pytest

from whatsup.runtime.process import CALL, SYS
from whatsup.shell import drain

SENT = ("reply", {"type": "sent", "ref": 3, "id": "m1", "ts": 1})
CALL_MSG, SYS_MSG = (CALL, None, "req"), (SYS, print)


def test_a_session_drain_collapses_pokes_and_ticks_and_keeps_the_devices_input_and_control_in_order():
    mailbox = [("poke",), ("tick", 1.0), ("data", b"\x00\x00"), ("poke",), SENT, ("tick", 2.0), CALL_MSG,
               ("poke",), ("eof", "closed by peer"), ("replaced",), SYS_MSG, ("shutdown",)]
    kept, removed = drain.session(mailbox, "offd")
    assert kept == [("data", b"\x00\x00"), SENT, CALL_MSG, ("eof", "closed by peer"), ("replaced",),
                    SYS_MSG, ("shutdown",), ("tick", 2.0), ("poke",)]
    assert removed == {"poke": 2, "tick": 1}


def test_a_session_drain_to_drop_also_drops_replies_but_still_pokes_once():
    kept, removed = drain.session([SENT, ("poke",), ("data", b"x"), SENT], "drop")
    assert kept == [("data", b"x"), ("poke",)] and removed == {"reply": 2}


def test_a_mailbox_without_pokes_gets_no_poke():
    assert drain.session([("data", b"x")], "offd") == ([("data", b"x")], {})


def test_other_kinds_drain_only_to_drop_and_keep_what_a_caller_waits_on():
    kept, removed = drain.generic([("job", 1), CALL_MSG, "text", SYS_MSG], "drop")
    assert kept == [CALL_MSG, SYS_MSG] and removed == {"job": 1, "str": 1}


class _Proc:
    def __init__(self, kind, messages):
        from gevent.queue import Queue
        self.pid, self.kind, self.mailbox = 7, kind, Queue()
        self.notified = {"poke"}  # as if a coalesced wake-up were queued (ProcessTable.notify)
        for m in messages:
            self.mailbox.put(m)


def test_drain_refuses_offd_for_a_kind_without_a_policy_and_leaves_its_mailbox_alone():
    proc = _Proc("worker", [("job", 1), ("job", 2)])
    with pytest.raises(ValueError, match="to='drop'"):
        drain.drain(proc, "offd")
    assert list(proc.mailbox.queue) == [("job", 1), ("job", 2)]
    assert drain.drain(proc, "drop") == {"pid": 7, "to": "drop", "before": 2, "after": 0, "removed": {"job": 2}}
    assert proc.notified == set()  # nothing coalesced is queued any more: a new wake-up may be sent


@pytest.mark.parametrize("values, p, expected", [([], 50, 0), ([7], 99, 7), ([1, 2, 3, 4], 50, 2),
                                                 ([1, 2, 3, 4], 90, 4), (list(range(1, 101)), 99, 99)])
def test_stats_mailbox_percentiles_are_nearest_rank(values, p, expected):
    from whatsup.shell.helpers import percentile
    assert percentile(values, p) == expected
