"""Supervisors: processes that start children, watch them and restart what crashes.

Contract (OTP's supervisor, trimmed)::

    pid = table.start(Supervisor, SupSpec(strategy, children, max_restarts, period), name=...)

* ``children`` are :class:`Child` specs started in order; each ``start()`` returns
  the pid of a child whose ``init`` has finished (``table.start``). A child that
  cannot start during the supervisor's own start-up halts it with StartFailed
  naming the child, instead of restarting forever.
* ``restart``: ``permanent`` children are always restarted, ``transient`` ones only
  after an abnormal exit (anything but "normal"/"shutdown"), ``temporary`` never.
* ``strategy``: ``one_for_one`` restarts the child that died; ``rest_for_one``
  also the children started after it (they depend on it); ``one_for_all`` all.
* Restart intensity: more than ``max_restarts`` restarts within ``period``
  seconds and the supervisor stops its children and exits with reason
  ``("escalated", child id)``: its own supervisor (or the node, for the root)
  decides what happens next. A crash loop therefore climbs the tree instead of
  spinning.
* Dynamic children: ``adopt(table, sup, proc)`` makes a not-yet-running process
  (a connection's session) a temporary child, so the supervisor knows and stops
  it, at the cost of one message when it starts and one when it ends.

A crash is logged once, by the process that crashed (with its last message and
traceback); the supervisor logs one line per restart decision.
"""
import collections
import dataclasses
import logging
import time
from typing import Callable

import gevent

from .process import NORMAL, StartFailed

log = logging.getLogger("whatsup.supervisor")
STRATEGIES = ("one_for_one", "rest_for_one", "one_for_all")
RESTARTS = ("permanent", "transient", "temporary")


@dataclasses.dataclass(frozen=True)
class Child:
    id: str
    start: Callable  # () -> pid of a started child (its init done)
    restart: str = "permanent"
    shutdown: float = 10.0  # seconds its terminate may take when stopped

    def __post_init__(self):
        if self.restart not in RESTARTS:
            raise ValueError(f"child {self.id}: restart must be one of {RESTARTS}")


@dataclasses.dataclass(frozen=True)
class SupSpec:
    strategy: str
    children: tuple
    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


class SupState:
    def __init__(self, spec):
        self.spec = spec
        self.children = {c.id: c for c in spec.children}  # start order; adopted ones appended
        self.pids = {}                         # child id -> pid
        self.refs = {}                         # monitor ref -> child id
        self.restarts = collections.deque()    # monotonic times of recent restarts
        self.starts = collections.Counter()    # child id -> times started

    def __repr__(self):
        return (f"<SupState {self.spec.strategy} children={len(self.pids)} "
                f"recent_restarts={len(self.restarts)}>")


def adopt(table, sup, proc):
    """Make ``proc`` (created, not yet running) a temporary child of supervisor ``sup``.

    Raises ProcessDead when the supervisor is not running: the caller then
    refuses the work instead of running an unsupervised process.
    """
    ref = table.new_ref()
    proc.monitors[ref] = sup
    table.cast(sup, ("adopt", ref, proc.pid))


def which_children(table, sup, timeout=5.0):
    """``[(id, pid, restart)]`` of a running supervisor."""
    return table.call(sup, ("which_children",), timeout)


def terminate_child(table, sup, cid, timeout=30.0):
    """Stop child ``cid`` without restarting it (a graceful stop starts with the listener)."""
    return table.call(sup, ("terminate_child", cid), timeout)


class Supervisor:
    kind = "supervisor"
    vsn = 1

    @staticmethod
    def init(proc, spec):
        st = SupState(spec)
        for child in spec.children:
            try:
                Supervisor._start(proc, st, child)
            except StartFailed as exc:
                Supervisor._stop_all(proc, st)
                raise StartFailed(f"{proc.name or proc.pid}: child {child.id} failed to start: "
                                  f"{exc}") from None
        return st

    @staticmethod
    def describe(st):
        static = {c: repr(p) for c, p in st.pids.items() if st.children[c].start is not None}
        return {"strategy": st.spec.strategy, "children": static, "adopted": len(st.pids) - len(static),
                "recent_restarts": len(st.restarts),
                "intensity": f"{st.spec.max_restarts} in {st.spec.period}s"}

    @staticmethod
    def handle_call(proc, request, st):
        if request[0] == "which_children":
            return [(cid, pid, st.children[cid].restart) for cid, pid in st.pids.items()], st
        if request[0] == "terminate_child":  # stop it for good (until the supervisor restarts)
            if request[1] in st.pids:
                Supervisor._stop_child(proc, st, request[1])
            return None, st
        raise ValueError(f"unexpected call {request!r}")

    @staticmethod
    def handle_cast(proc, msg, st):
        if msg[0] == "adopt":
            _, ref, pid = msg
            child = Child(f"{pid!r}", None, "temporary")
            st.children[child.id] = child
            st.pids[child.id], st.refs[ref] = pid, child.id
            return st
        raise ValueError(f"unexpected cast {msg!r}")

    @staticmethod
    def handle_info(proc, msg, st):
        if msg[0] == "DOWN":
            _, ref, pid, reason = msg
            cid = st.refs.pop(ref, None)
            if cid is not None and st.pids.get(cid) == pid:
                del st.pids[cid]
                Supervisor._down(proc, st, cid, reason)
        elif msg[0] == "restart":  # a restart that failed to start, tried again
            if msg[1] not in st.pids:
                Supervisor._restart(proc, st, msg[1], "start failed")
        else:
            raise ValueError(f"unexpected message {msg!r}")
        return st

    @staticmethod
    def terminate(proc, reason, st):
        Supervisor._stop_all(proc, st)

    # --- decisions ---------------------------------------------------------------

    @staticmethod
    def _down(proc, st, cid, reason):
        child = st.children[cid]
        if child.restart == "temporary" or (child.restart == "transient" and reason in NORMAL):
            if child.start is None:  # adopted: forget it
                del st.children[cid]
            return
        Supervisor._restart(proc, st, cid, reason)

    @staticmethod
    def _restart(proc, st, cid, reason):
        now = time.monotonic()
        st.restarts.append(now)
        while st.restarts and st.restarts[0] < now - st.spec.period:
            st.restarts.popleft()
        if len(st.restarts) > st.spec.max_restarts:
            log.error("%s: %s exited (%s): more than %d restarts in %ss, giving up",
                      proc.name or proc.pid, cid, _short(reason), st.spec.max_restarts, st.spec.period)
            proc.stop(("escalated", cid))
        ids = [c.id for c in st.children.values() if c.start is not None]
        if st.spec.strategy == "one_for_one":
            again = [cid]
        elif st.spec.strategy == "rest_for_one":
            again = ids[ids.index(cid):]
        else:
            again = ids
        for other in reversed(again):
            if other != cid and other in st.pids:
                Supervisor._stop_child(proc, st, other)
        log.warning("%s: %s exited (%s); restarting %s", proc.name or proc.pid, cid, _short(reason),
                    ", ".join(again))
        for other in again:
            try:
                Supervisor._start(proc, st, st.children[other])
            except StartFailed as exc:
                log.error("%s: restart of %s failed: %s", proc.name or proc.pid, other, exc)
                proc.mailbox.put(("restart", other))
                return

    # --- mechanics -----------------------------------------------------------------

    @staticmethod
    def _start(proc, st, child):
        pid = child.start()
        st.starts[child.id] += 1
        started = proc.table.procs.get(pid.n)
        if started is not None:  # what ps shows as the child's restarts
            started.restarts = max(started.restarts, st.starts[child.id] - 1)
        st.pids[child.id] = pid
        st.refs[proc.table.monitor(pid, proc.pid)] = child.id

    @staticmethod
    def _stop_child(proc, st, cid):
        pid = st.pids.pop(cid)
        for ref in [r for r, c in st.refs.items() if c == cid]:
            del st.refs[ref]
            proc.table.demonitor(pid, ref)
        proc.table.stop(pid, "shutdown", st.children[cid].shutdown)

    @staticmethod
    def _stop_all(proc, st):
        """Stop the children, last started first (dependents before what they depend on).

        Adopted children (sessions, possibly thousands) are told all at once and
        then waited for together, not one after another.
        """
        adopted = [cid for cid in st.pids if st.children[cid].start is None]
        gevent.joinall([gevent.spawn(Supervisor._stop_child, proc, st, cid) for cid in adopted])
        for cid in reversed(list(st.pids)):
            Supervisor._stop_child(proc, st, cid)


def _short(reason):
    if isinstance(reason, tuple) and reason and reason[0] == "crash":
        return f"crash: {reason[1]!r}"
    return str(reason)
