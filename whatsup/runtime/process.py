"""gen_server-style processes: a greenlet, a gevent.queue mailbox, one message at a time.

A process is a container (pid, mailbox, greenlet, counters) running a
*behaviour*: a class whose callbacks take the current state and return the next
one, so state and code stay apart and code can be swapped between two messages.

Callbacks (all optional but ``init``)::

    init(proc, *args) -> state
    handle_call(proc, request, state) -> (reply, state)
    handle_cast(proc, msg, state) -> state
    handle_info(proc, msg, state) -> state
    terminate(proc, reason, state)
    code_change(old_state, old_vsn) -> state        # on hot reload
    describe(state) -> dict                         # what the operator shell shows

``init`` may raise :class:`StartFailed` to refuse to start with a message for
the operator (a port in use): that is reported by whoever started the process,
not logged as a crash. Any other exception is a crash, logged once here.

Mailboxes may be bounded (``mailbox_max``, per process kind from the config's
``mailbox`` table): ``send`` to a full mailbox raises :class:`MailboxFull` and
the sender decides, explicitly, what that means (the router closes an
overloaded session; its items are already safe in offd). Wake-up messages that
only say "look again" go through ``notify``, which coalesces them: a process has
at most one queued per tag, so a burst of 50,000 messages to one user queues
one ``("poke",)``, not 50,000.

Others hold a :class:`Pid`, never the object: ``send``, ``cast``, ``call`` and
``kill`` take pids, and a pid names its node: ``send`` and ``notify`` to a pid
of another node go through the cluster link (whatsup/cluster/link.py). A ``call`` to a dead process, or one that dies before
answering, raises :class:`ProcessDead` instead of hanging (pykka's rule).
"""
import gc
import itertools
import logging
import time
from typing import NamedTuple

import gevent
from gevent.event import AsyncResult

from ..observe.logs import redact
from .mailbox import Mailbox


log = logging.getLogger("whatsup.runtime")

CALL, CAST, SYS = "$call", "$cast", "$sys"
NORMAL = ("normal", "shutdown")  # exit reasons that are no failure
#: Messages a process handles before it yields to the hub even if its mailbox is not empty
#: (Erlang counts reductions; without this a busy process could hold the hub for seconds).
FAIR_SHARE = 64
#: How long ``let_others_run`` sleeps: any positive time makes the sleep a libev timer.
_TURN = 1e-6


def let_others_run():
    """Yield to the hub so that it polls I/O and fires timers before this greenlet goes on: the
    yield of a long job done in slices (maintenance, recovery, a big fan-out, a full mailbox).

    ``gevent.sleep(0)`` does less: it queues the caller behind the hub's other callbacks, and
    the hub polls I/O and fires timers only every 50 callbacks (gevent's CALLBACK_CHECK_COUNT).
    A job that yielded with it and found no other callback queued ran 50 slices in a row:
    250 ms with offd maintenance's 5 ms slices, and 124-339 ms with no delivery while the
    dedup window was refilled from a million-item spool (ops/offd_figures.py stall). A tiny
    timer costs a loop pass instead."""
    gevent.sleep(_TURN)


class Pid(NamedTuple):
    node: str
    n: int

    def __repr__(self):
        return f"<{self.node}.{self.n}>"


class ProcessDead(Exception):
    """The process a call or send was addressed to is not running (or died meanwhile)."""


class MailboxFull(Exception):
    """``send`` found the target's bounded mailbox full; nothing was queued."""


class CallTimeout(Exception):
    """A call got no answer within its timeout; the callee may still process it."""


class StartFailed(Exception):
    """A process's ``init`` raised: it never ran (the message is one line for the operator)."""


class Exit(gevent.GreenletExit):
    """Raised inside a process to stop it with ``reason``."""

    def __init__(self, reason="normal"):
        super().__init__(reason)
        self.reason = reason


class Process:
    """One gen_server instance. See the module docstring for the behaviour contract."""

    def __init__(self, table, behaviour, args=(), name=None, kind=None, entity=None, restarts=0,
                 mailbox_max=None):
        self.table = table
        self.pid = table.new_pid()
        self.behaviour = behaviour
        self.vsn = getattr(behaviour, "vsn", 1)
        self.args = args
        self.name = name
        self.kind = kind or getattr(behaviour, "kind", behaviour.__name__.lower())
        self.entity = entity
        self.restarts = restarts
        self.mailbox = Mailbox()
        self.mailbox_max = mailbox_max
        self.notified = set()  # tags of coalesced messages queued and not yet handled
        self.state = None
        self.handled = 0
        self.started = time.time()
        self.last_message = None
        self.exit_reason = None
        self.killed = None  # the reason given to ProcessTable.kill, until the exit
        self.monitors = {}  # ref -> callable(pid, reason) or watcher Pid
        self.ready = AsyncResult()  # set once init returned; its exception if init failed
        self.greenlet = None  # made by start(); run_here() adopts the caller's

    def __repr__(self):
        ent = "".join(f" {x}" for x in (self.name, self.entity) if x is not None)
        status = "dead" if self.exit_reason is not None else "alive"
        bound = f"/{self.mailbox_max}" if self.mailbox_max else ""
        return (f"<Process {self.pid!r} {self.kind}{ent} {status} mailbox={len(self.mailbox)}{bound} "
                f"handled={self.handled}>")

    # --- lifecycle ------------------------------------------------------------

    def start(self):
        """Run in a new greenlet; returns the pid."""
        self.greenlet = gevent.Greenlet(self._run)
        self.greenlet.name = f"{self.kind}{self.pid!r}"
        self.greenlet.process = self
        self.table.add(self)
        self.greenlet.start()
        return self.pid

    def run_here(self):
        """Run in the calling greenlet until the process exits (a server's connection greenlet
        becomes the session process, so a connection costs one greenlet, not two)."""
        self.greenlet = gevent.getcurrent()
        self.greenlet.process = self
        self.table.add(self)
        self._run()

    @property
    def alive(self):
        return self.exit_reason is None

    def info(self):
        """What the process table and the operator shell show about this process."""
        describe = getattr(self.behaviour, "describe", None)
        return {
            "pid": self.pid, "kind": self.kind, "name": self.name, "entity": self.entity,
            "mailbox": len(self.mailbox), "handled": self.handled, "restarts": self.restarts,
            "started": self.started, "uptime": time.time() - self.started,
            "behaviour": f"{self.behaviour.__module__}.{self.behaviour.__qualname__}",
            "vsn": self.vsn, "alive": self.alive,
            "detail": describe(self.state) if describe and self.state is not None else None,
        }

    def _run(self):
        reason = "normal"
        try:
            self.state = self.behaviour.init(self, *self.args)
            self.ready.set(self.pid)
            while True:
                msg = self.mailbox.get()
                self.last_message = msg
                self._dispatch(msg)
                self.handled += 1
                if not self.handled % FAIR_SHARE:
                    let_others_run()  # a full mailbox never blocks get()
        except Exit as exc:
            reason = exc.reason
        except gevent.GreenletExit:
            reason = "killed"
        except Exception as exc:
            reason = ("crash", exc)
            started = self.ready.ready()
            if started or not isinstance(exc, StartFailed):  # a refusal: its starter reports it
                where = f"handling {redact(self.last_message)!r:.300}" if started else "in init"
                log.error("process %r (%s%s) crashed %s", self.pid, self.kind,
                          f" {self.entity}" if self.entity is not None else "", where, exc_info=True)
        finally:
            if not self.ready.ready():
                why = reason[1] if isinstance(reason, tuple) and reason[0] == "crash" else reason
                self.ready.set_exception(why if isinstance(why, StartFailed) else StartFailed(
                    f"{self.kind}{' ' + str(self.entity) if self.entity is not None else ''} "
                    f"did not start: {why}"))
            self._exit(reason)

    def _dispatch(self, msg):
        tag = msg[0] if type(msg) is tuple and msg else None
        self.notified.discard(tag)
        b = self.behaviour
        if tag == CALL:
            _, result, request = msg
            try:
                reply, self.state = b.handle_call(self, request, self.state)
            except BaseException as exc:
                result.set_exception(ProcessDead(f"{self.pid!r} crashed handling the call: {exc!r}"))
                raise
            result.set(reply)
        elif tag == CAST:
            self.state = b.handle_cast(self, msg[1], self.state)
        elif tag == SYS:
            msg[1](self)
        else:
            self.state = b.handle_info(self, msg, self.state)

    def _exit(self, reason):
        self.exit_reason = reason
        terminate = getattr(self.behaviour, "terminate", None)
        if terminate is not None and self.state is not None:
            try:
                terminate(self, reason, self.state)
            except Exception:
                log.exception("terminate of %r failed", self.pid)
        dead = ProcessDead(f"{self.pid!r} exited: {_reason_text(reason)}")
        while len(self.mailbox):
            msg = self.mailbox.get_nowait()
            if type(msg) is tuple and msg and msg[0] == CALL:
                msg[1].set_exception(dead)
        self.table.remove(self)
        for ref, watcher in list(self.monitors.items()):
            if callable(watcher):
                watcher(self.pid, reason)
            else:
                self.table.send(watcher, ("DOWN", ref, self.pid, reason))

    # --- used by behaviours ---------------------------------------------------

    def stop(self, reason="normal"):
        """Stop this process from inside one of its callbacks."""
        raise Exit(reason)


class Task:
    """A one-off job as a process (Erlang's ``proc_lib:spawn``): ``fn(*args)`` runs in its own
    greenlet, listed in ``ps()`` while it runs and stopped by the tree, then the process ends;
    an exception is a crash, logged once with its traceback. ``table.spawn(Task, fn, args)``."""
    kind = "task"

    @staticmethod
    def init(proc, fn, args):
        proc.mailbox.put(RUN)
        return fn, args

    @staticmethod
    def handle_info(proc, msg, job):
        fn, args = job
        fn(*args)
        proc.stop()


RUN = ("run",)


def current():
    """The process running in the calling greenlet (Erlang's ``self()``), or None outside any."""
    return getattr(gevent.getcurrent(), "process", None)


def strays(table):
    """The live greenlets of this thread that are no process of ``table`` (the caller's own
    excepted): what must not exist, since whatever lives longer than a call is a process,
    supervised, listed by ``ps()`` and stopped by the tree (issue 13).

    Greenlets made before ``gc.freeze()`` (at node start) are only visible to ``gc`` unfrozen,
    so the frozen generation is thawed for the look and frozen again (the few objects made
    since start-up are frozen with it: an operator's or a test's question, not a hot path)."""
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        objects = gc.get_objects()
    finally:
        if frozen:
            gc.freeze()
    live = []
    for n, obj in enumerate(objects, 1):
        if isinstance(obj, gevent.Greenlet) and not obj.dead:
            live.append(obj)
        if not n % 10_000:
            let_others_run()  # a big heap is walked in slices: the sessions run between them
    del objects
    mine = {id(p.greenlet) for p in table.processes()}
    me = gevent.getcurrent()
    return [g for g in live if id(g) not in mine and g is not me]


def _reason_text(reason):
    if isinstance(reason, tuple) and reason and reason[0] == "crash":
        return f"crashed: {reason[1]!r}"
    return str(reason)


class ProcessTable:
    """This node's processes by pid, and registered names (Erlang's process registry)."""

    def __init__(self, node="whatsup@localhost"):
        self.node = node
        self.procs = {}
        self.names = {}
        self.remote = None  # the cluster link carrying sends to other nodes' pids (None: a single node)
        self._ids = itertools.count(1)
        self._refs = itertools.count(1)

    def __repr__(self):
        return f"<ProcessTable {self.node} processes={len(self.procs)} names={len(self.names)}>"

    def __len__(self):
        return len(self.procs)

    def new_pid(self):
        return Pid(self.node, next(self._ids))

    def add(self, proc):
        if proc.name is not None:
            if proc.name in self.names:
                raise ValueError(f"name {proc.name!r} already registered to {self.names[proc.name]!r}")
            self.names[proc.name] = proc.pid
        self.procs[proc.pid.n] = proc

    def remove(self, proc):
        self.procs.pop(proc.pid.n, None)
        if proc.name is not None and self.names.get(proc.name) == proc.pid:
            del self.names[proc.name]

    def spawn(self, behaviour, *args, **opts):
        """Start a process running ``behaviour``; returns its pid at once (init runs later)."""
        return Process(self, behaviour, args, **opts).start()

    def spawn_link(self, owner, behaviour, *args, **opts):
        """Start a helper of process ``owner`` that lives and dies with it (Erlang's link): it
        is stopped when ``owner`` exits, and its own abnormal exit kills ``owner``, whose
        supervisor then restarts the owner (which starts a new helper). Returns its pid at once."""
        pid = self.spawn(behaviour, *args, **opts)
        self.monitor(owner.pid, lambda _, reason: self.stop(pid))

        def helper_down(_, reason):
            if reason not in NORMAL and owner.alive and owner.killed is None:
                self.kill(owner.pid, ("linked", pid, reason))
        self.monitor(pid, helper_down)
        return pid

    def start(self, behaviour, *args, timeout=None, **opts):
        """Start a process and wait until its ``init`` returned (OTP's start_link handshake).

        No timeout by default: a shard's init is its recovery, as long as its spool is big.

        Returns the pid; raises StartFailed when init raised or the process died first,
        so a supervisor learns at once that a child cannot start.
        """
        proc = Process(self, behaviour, args, **opts)
        proc.start()
        try:
            return proc.ready.get(timeout=timeout)
        except gevent.Timeout:
            proc.greenlet.kill(Exit("start_timeout"), block=True)
            raise StartFailed(f"{proc.kind} did not finish init within {timeout}s") from None

    def new_ref(self):
        return next(self._refs)

    def lookup(self, pid):
        """The live local Process behind ``pid`` (or a registered name), else ProcessDead."""
        if isinstance(pid, str):
            pid = self.whereis(pid)
        if pid is None or pid.node != self.node:
            raise ProcessDead(f"no route to {pid!r}")
        proc = self.procs.get(pid.n)
        if proc is None:
            raise ProcessDead(f"{pid!r} is not running")
        return proc

    def _elsewhere(self, pid):
        """True for a pid of another node of the cluster (``remote`` carries what is meant for it)."""
        return self.remote is not None and type(pid) is Pid and pid.node != self.node

    def whereis(self, name):
        return self.names.get(name)

    def send(self, pid, msg):
        """Put ``msg`` in the mailbox of ``pid`` (Erlang's ``Pid ! Msg``); MailboxFull at its bound.
        A pid of another node goes through ``remote`` (whatsup/cluster/link.py), when there is one."""
        if self._elsewhere(pid):
            return self.remote.send(pid, msg)
        proc = self.lookup(pid)
        if proc.killed is not None:  # its mailbox will never be read again
            raise ProcessDead(f"{pid!r} is being killed: {_reason_text(proc.killed)}")
        if proc.mailbox_max is not None and len(proc.mailbox) >= proc.mailbox_max:
            raise MailboxFull(f"{pid!r}: mailbox full ({proc.mailbox_max})")
        proc.mailbox.put(msg)

    def notify(self, pid, msg):
        """Queue the wake-up ``msg`` unless one with its tag is already waiting (never bounded:
        there is at most one per tag)."""
        if self._elsewhere(pid):
            return self.remote.notify(pid, msg)
        proc = self.lookup(pid)
        tag = msg[0]
        if tag not in proc.notified:
            proc.notified.add(tag)
            proc.mailbox.put(msg)

    def cast(self, pid, msg):
        self.send(pid, (CAST, msg))

    def call(self, pid, request, timeout=5.0):
        """Ask ``pid`` and wait for its answer; ProcessDead or CallTimeout otherwise."""
        result = AsyncResult()
        self.send(pid, (CALL, result, request))
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            raise CallTimeout(f"{pid!r} did not answer within {timeout}s") from None

    def sys(self, pid, fn, timeout=5.0, urgent=False):
        """Run ``fn(proc)`` inside the process between two messages and return its result.

        ``urgent`` runs it right after the message in hand, before those already
        waiting: an operator's fix or a code swap must not queue behind the very
        backlog it is meant to deal with.
        """
        result = AsyncResult()

        def run(proc):
            try:
                result.set(fn(proc))
            except Exception as exc:
                result.set_exception(exc)
        mailbox = self.lookup(pid).mailbox
        if urgent and len(mailbox):
            mailbox.queue.appendleft((SYS, run))  # nobody waits on a non-empty mailbox: no wake-up needed
        else:
            mailbox.put((SYS, run))
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            raise CallTimeout(f"{pid!r} did not run the system message within {timeout}s") from None

    def monitor(self, target, watcher):
        """Tell ``watcher`` (a pid, or a callable(pid, reason)) when ``target`` exits.

        A monitor of a process that is already gone fires at once with reason
        'noproc', as in Erlang, so no exit can be missed. ``target`` may live on
        another node of the cluster: its exit, or ``noconnection`` when its node
        goes down, arrives the same way (whatsup/cluster/monitors.py).
        """
        ref = self.new_ref()
        if self._elsewhere(target):
            self.remote.monitors.monitor(target, watcher, ref)  # whatsup/cluster/monitors.py
            return ref
        try:
            self.lookup(target).monitors[ref] = watcher
        except ProcessDead:
            self.tell(watcher, ref, target, "noproc")
        return ref

    def demonitor(self, target, ref):
        if self._elsewhere(target):
            return self.remote.monitors.demonitor(target, ref)
        proc = self.procs.get(target.n) if target.node == self.node else None
        if proc is not None:
            proc.monitors.pop(ref, None)

    def tell(self, watcher, ref, target, reason):
        """A DOWN that does not come from the exit itself (noproc, a remote one): a pid gets the
        message, a callable runs in a greenlet of its own, never inside the caller's."""
        if callable(watcher):
            gevent.spawn(watcher, target, reason)
        else:
            try:
                self.send(watcher, ("DOWN", ref, target, reason))
            except ProcessDead:
                pass

    def stop(self, pid, reason="shutdown", timeout=5.0):
        """Stop ``pid`` between two messages (its ``terminate`` runs); kill it after ``timeout``.

        Returns once the process is gone. A process already gone is not an error.
        """
        try:
            proc = self.lookup(pid)
        except ProcessDead:
            return
        proc.mailbox.put((SYS, lambda p: p.stop(reason)))
        if proc.greenlet is gevent.getcurrent():
            return
        proc.greenlet.join(timeout)
        if proc.alive:
            proc.greenlet.kill(Exit(reason), block=True, timeout=timeout)

    def kill(self, pid, reason="killed"):
        """Stop a process at once with ``reason``; its monitors and supervisor learn why."""
        proc = self.lookup(pid)
        proc.killed = reason  # dying: from now on ``send`` treats it as dead
        proc.greenlet.kill(Exit(reason), block=False)

    def processes(self, kind=None):
        return [p for p in list(self.procs.values()) if kind is None or p.kind == kind]
