"""Fast-drain of an overloaded mailbox: what happens to each kind of message.

A mailbox grows without bound only with what *others* put there faster than
the process takes it. For a session (see whatsup/c2s/session.py) that is:

``("poke",)``
    "your offd queue has something new". The item it announces is already in
    the user's offd queue (the router queues first, then pokes), so the
    message itself is spooled: draining collapses every poke into **one**,
    put back at the end of the mailbox. On it the session sends its whole
    queue up to the flow-control window; nothing is lost. (Pokes are
    coalesced when sent, ProcessTable.notify, so there is one at most.)
``("tick",)``
    a deadline may be due (node.timers); only one matters: one is kept (the last).
    (Coalesced when sent too.)

Everything else stays, in its order, because it is bounded by the device's
own traffic or is control that must not be lost:

``("data", bytes)`` / ``("eof", why)``
    the device's own input. The socket watcher stays stopped until the session
    takes the chunk (backpressure), so there is at most one; dropping it would
    cut a frame in half or leave the connection deaf.
``("reply", frame)``
    the answer to one of the device's own requests (``sent`` ✓, ``ok``,
    ``error``), matched by its connection-local ``ref``: it cannot wait in
    offd for another connection, and there are at most as many as requests
    the device sent. With ``to="drop"`` they are dropped (and counted): the
    device misses those answers; a retransmission of a message id is answered
    again from the router's dedup window.
``("replaced",)``, ``("shutdown",)``, ``$call``, ``$sys``
    control, and callers waiting for an answer: kept.

A kind without a policy here can only be drained with ``to="drop"``, which
drops every message but ``$call``/``$sys``. Drains run from the shell's
greenlet without yielding, so the process never sees a half-drained mailbox.
"""
import collections

from ..runtime.process import CALL, SYS

TARGETS = ("offd", "drop")


def session(messages, to):
    """Plan a session drain: ``(kept, removed)``, ``removed`` counting what left the mailbox, by tag."""
    kept, removed = [], collections.Counter()
    poked, tick = False, None
    for msg in messages:
        tag = msg[0]
        if tag == "poke":
            poked = True
            removed["poke"] += 1
        elif tag == "tick":
            if tick is not None:
                removed["tick"] += 1
            tick = msg
        elif tag == "reply" and to == "drop":
            removed["reply"] += 1
        else:
            kept.append(msg)
    if tick is not None:
        kept.append(tick)
    if poked:
        kept.append(("poke",))
        removed["poke"] -= 1
    return kept, +removed


def generic(messages, to):
    """Any kind without a policy (``to="drop"`` only): keep what a caller waits on, drop the rest."""
    kept, removed = [], collections.Counter()
    for msg in messages:
        tag = msg[0] if type(msg) is tuple and msg else type(msg).__name__
        if tag in (CALL, SYS):
            kept.append(msg)
        else:
            removed[str(tag)] += 1
    return kept, removed


POLICIES = {"session": session}


def drain(proc, to="offd"):
    """Drain ``proc``'s mailbox now, without yielding; returns {pid, to, before, after, removed}."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, not {to!r}")
    policy = POLICIES.get(proc.kind)
    if policy is None:
        if to != "drop":
            raise ValueError(f"no offd policy for {proc.kind} processes: drain(pid, to='drop') drops "
                             f"their messages (calls and system messages are kept)")
        policy = generic
    mailbox = proc.mailbox
    messages = [mailbox.get_nowait() for _ in range(len(mailbox))]
    kept, removed = policy(messages, to)
    for msg in kept:
        mailbox.put(msg)
    # A coalesced wake-up whose message left must be sendable again (ProcessTable.notify).
    proc.notified &= {msg[0] for msg in kept if type(msg) is tuple and msg}
    return {"pid": proc.pid, "to": to, "before": len(messages), "after": len(mailbox),
            "removed": dict(removed)}
