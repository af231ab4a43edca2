"""The node's link to the cluster: pids on other nodes, requests served elsewhere, leases.

Location transparency: ``ProcessTable.send``/``notify`` of a pid on another node
land here (``table.remote``) and travel through that node's inbox
(whatsup/cluster/inbox.py) into the pid's mailbox there; callers never branch.
Three kinds of work cross nodes:

* ``forward(node, pid, ref, name, *args)``: a client's request served on the node
  that owns what it is about (a message to a user homed there). The answer comes
  back as ``("reply", frame)`` to ``pid``; its entry on the serving node is
  acknowledged only when that answer is sent (for a message: after offd's fsync),
  so a node killed before its fsync serves it again from its pending entries
  when it restarts. Here, no answer within ``cluster.request_timeout``, or the
  serving node's lease lapsing, answers ``store_failed`` (retry; the serving
  node's dedup window keeps the retry from being queued twice), and an answer
  that comes after that is dropped. A session's requests to one node keep their
  order: they are numbered in a *lane* (a generation and a count); the serving
  node serves a lane only without a gap, and on a gap (Redis lost an entry) the
  session's node sends the lane's unanswered requests again as a new generation;
  a failure fails the later requests of the lane too, in order; and requests to a
  node that is down wait for it (up to the timeout) instead of failing at once.
* ``cast(node, name, *args)`` runs a service there (acks, attach/detach...).
* ``call(node, name, *args)`` waits for the service's return value (accounts).

Each node holds a lease (``cluster.lease`` seconds, renewed every third of it)
tagged with its boot epoch (whatsup/cluster/directory.py). The lease ticker reads
every lease: a node whose lease lapsed or whose epoch changed is *down* for the
boot we knew (its pending requests fail, its placements are reaped) and *up*
again with its new epoch.
"""
import collections
import itertools
import logging
import time
from typing import NamedTuple

from gevent.event import AsyncResult

from . import engine, wire
from .directory import Directory
from .engine import UNREACHABLE, retrying
from .inbox import InboxReader, OutQueue, Outbox
from .monitors import Monitors
from ..observe import latency
from ..protocol import Code, error_frame
from ..runtime import MailboxFull, ProcessDead, Task
from ..runtime.factory import ShardDown
from ..runtime.supervisor import Child
from ..runtime.ticker import Ticker

log = logging.getLogger("whatsup.cluster")


class Options(NamedTuple):
    timeout: float = 2.0         # cluster.timeout: every Redis command, connect included
    block: float = 0.5           # cluster.block: an inbox read waits this long (< timeout)
    lease: float = 3.0           # cluster.lease
    retry_for: float = 5.0       # cluster.retry_for: a write is retried this long
    request_timeout: float = 10.0  # cluster.request_timeout
    batch: int = 256             # cluster.batch: entries per read and per pipeline

    @classmethod
    def from_config(cls, cfg):
        return cls(*(getattr(cfg.cluster, name) for name in cls._fields))


#: What a request that would cross nodes answers while this node is cut off (docs/RELIABILITY.md).
CUT_OFF = "this node is cut off from the cluster (Redis out of reach); retry, or reconnect to another node"


class NodeDown(ShardDown):
    """The node a call went to is down (its lease lapsed), went down before answering, or did
    not answer in time: what it serves is down, as a restarting shard is (store_failed, retry)."""


class RemoteError(Exception):
    """The service a call ran on another node raised; the message says what."""


class Link:
    def __init__(self, table, cmap, node, opts=Options()):
        cmap.check_node(node)
        if opts.block >= opts.timeout:
            raise ValueError("cluster.block must be below cluster.timeout (a longer BLOCK is a timeout)")
        self.table, self.map, self.node, self.opts = table, cmap, node, opts
        self.client = self.directory = None
        self.services = {"lane_end": lambda pid: self.lanes_in.pop(pid, None)}  # what other nodes may run here
        self.live = {}         # node -> the boot epoch whose lease holds
        self.inflight = {}     # (pid, ref) -> (node, deadline): requests we forwarded
        self.late = {}         # (pid, ref) -> when it failed: its answer, if it comes, is dropped
        self.due = {}          # (pid, ref) -> (entry id, when): requests we serve, acked with their answer
        self.lanes = {}        # pid -> {node: [generation, n]}: the order of a session's requests per node
        self.lanes_in = {}     # pid (of another node) -> [generation, last n served, broken]
        self.held = {}         # node (down) -> keys of inflight requests waiting for it to come up
        self.pushes_in = {}    # our session pid -> [push generation, items passed on, resync asked]
        self.calls = {}        # rid -> (node, done(ok, value), deadline): requests waiting for answers
        self.watchers = []     # callables(node, epoch, up): a node went down (up False) or came up
        self.pokes = None      # callable(pid) -> True when a poke for that remote pid is handled here
        self.reconnected = []  # callables(): Redis answers again after failing (it may have lost a tail)
        self.renewed = time.monotonic()  # when the last renewal of our lease that Redis took was sent
        self.detached = False  # our lease lapsed and is not renewed yet: nothing crosses nodes
        self.blocking = set()  # services that may wait: run in order per session, off the inbox reader
        self._serials = {}     # key -> deque of (name, args, pid, ref) waiting for its worker
        self.out = OutQueue(table)
        self.counters = collections.Counter()
        self.rtt = latency.REDIS
        self._rids = itertools.count(1)
        self.monitors = Monitors(self)  # table.monitor of a pid here on another node

    def __repr__(self):
        return (f"<Link {self.node} epoch={self.epoch} live={sorted(self.live)} inflight={len(self.inflight)} "
                f"due={len(self.due)} {self.out!r}>")

    @property
    def epoch(self):
        return self.directory.epoch if self.directory is not None else None

    # --- start and stop --------------------------------------------------------------------

    def connect(self):
        """Connect, check the map, take a boot epoch and a lease (before the tree starts).
        Raises MapMismatch, or what an unreachable Redis raised after cluster.retry_for."""
        self.client = engine.connect(self.map.redis, self.opts.timeout)
        self.directory = Directory(self.client, self.map, self.node, self.opts.lease)
        def boot():
            self.renewed = time.monotonic()  # its lease lasts from no earlier than this
            return self.directory.boot()
        epoch = retrying(boot, time.monotonic() + self.opts.retry_for, "start")
        self.live = {self.node: epoch}
        self._refresh(self.directory.leases())  # the live peers, before our pending entries are served
        self.table.remote = self
        log.info("cluster: %s is up as boot %d (%s)", self.node, epoch, self.map)
        return epoch

    def dedicated(self):
        """A client of one connection (the inbox reader's: it blocks in XREADGROUP)."""
        return engine.connect(self.map.redis, self.opts.timeout, connections=1)

    def children(self):
        return [Child("outbox", lambda: self.table.start(Outbox, self, name="outbox")),
                Child("inbox", lambda: self.table.start(InboxReader, self, name="inbox")),
                Child("lease", lambda: self.table.start(Ticker, self.opts.lease / 3, self.tick,
                                                        name="lease", kind="lease"))]

    def close(self):
        """A graceful stop: give up the lease (the others stop routing here at once)."""
        self.table.remote = None
        if self.directory is not None:
            try:
                self.directory.retire()
            except UNREACHABLE as exc:
                log.warning("redis: lease of %s not given up (%s): it lapses in %ss", self.node, exc, self.opts.lease)
        if self.client is not None:
            self.client.close()

    # --- addressing -----------------------------------------------------------------------

    def key(self, node):
        return f"{self.map.prefix}:inbox:{node}"

    def home(self, entity):
        return self.map.home(entity)

    def here(self, entity):
        return self.map.home(entity) == self.node

    def up(self, node):
        return node in self.live

    def lapsed(self):
        """True when our lease may have lapsed (Redis took no renewal for cluster.lease): the
        others count us down, so nothing of ours may cross nodes until a renewal goes through."""
        return self.detached or time.monotonic() - self.renewed > self.opts.lease

    # --- sending --------------------------------------------------------------------------

    def post(self, node, msg, on_fail=None):
        self.out.add(self.key(node), wire.encode(msg), on_fail)

    def send(self, pid, msg):
        """``table.send`` to a pid of another node (ProcessDead if that node is down)."""
        if pid.node not in self.live:
            raise ProcessDead(f"{pid!r}: no connection to {pid.node}")
        if msg[0] == "reply":
            self._answering(pid, msg[1])
        self.post(pid.node, ("send", pid, msg, self.live[pid.node]))

    def notify(self, pid, msg):
        if pid.node not in self.live:
            raise ProcessDead(f"{pid!r}: no connection to {pid.node}")
        if msg[0] == "poke" and self.pokes is not None and self.pokes(pid):
            return  # a session of a user homed here: its home pushes the items (homes.py)
        self.post(pid.node, ("notify", pid, msg, self.live[pid.node]))

    def _answering(self, pid, frame):
        """The answer to a request we serve goes out: acknowledge its inbox entry with it."""
        due = self.due.pop((pid, frame.get("ref")), None)
        if due is not None:
            self.out.ack(due[0])

    def forward(self, node, pid, ref, name, *args):
        """Have ``node`` serve a request of the session ``pid`` (see the module docstring). While
        ``node`` is down the request waits for it (until cluster.request_timeout), so a session's
        requests reach it in their order across its restart."""
        key = (pid, ref)
        self.inflight[key] = (node, time.monotonic() + self.opts.request_timeout, name, args)
        self.counters["forwarded"] += 1
        if self.lapsed():
            self._fail(key, CUT_OFF)
        elif node in self.live:
            self._post_request(key)
        else:
            self.held.setdefault(node, []).append(key)

    def _post_request(self, key):
        pid = key[0]
        node, _, name, args = self.inflight[key]
        lane = self.lanes.setdefault(pid, {}).get(node)
        if lane is None:  # a new generation: above every one of this session, and of our earlier boots
            lane = self.lanes[pid][node] = [self.epoch * 1_000_000 + next(self._rids), 0]
        lane[1] += 1
        self.post(node, ("fwd", pid, key[1], name, args, *lane),
                  lambda exc: self._fail(key, f"the cluster could not carry it ({type(exc).__name__}); retry"))

    def _resend_lane(self, pid, node, generation):
        """``node`` refused our lane ``generation`` of session ``pid`` after a gap (Redis lost an
        entry): send its requests that wait for an answer again, in order, as a new generation
        (those it served already are answered again from its dedup window)."""
        lane = self.lanes.get(pid, {}).get(node)
        if lane is None or lane[0] != generation:
            return  # resent already
        del self.lanes[pid][node]
        self.counters["lanes_resent"] += 1
        for key, entry in list(self.inflight.items()):
            if key[0] == pid and entry[0] == node:
                self._post_request(key)

    def cast(self, node, name, *args):
        if node == self.node:
            return self._run(name, args)
        self.post(node, ("cast", name, args))

    def request(self, node, name, args, done):
        """Run service ``name`` on ``node`` without waiting: ``done(ok, value)`` gets its return
        value (ok True), or what it raised or why it got no answer (ok False), once."""
        if node not in self.live or self.lapsed():
            return done(False, NodeDown(f"{node} is down" if node not in self.live else CUT_OFF))
        rid = next(self._rids)
        self.calls[rid] = (node, done, time.monotonic() + self.opts.request_timeout)
        self.post(node, ("call", self.node, rid, name, args), lambda exc: self._answer(
            rid, False, NodeDown(f"the cluster could not carry it: {exc}")))

    def call(self, node, name, *args):
        """The return value of service ``name`` run on ``node`` (this greenlet waits, the hub
        does not); NodeDown when it is down or gives no answer within cluster.request_timeout,
        RemoteError when the service raised."""
        if node == self.node:
            return self.services[name](*args)
        result = AsyncResult()
        self.request(node, name, args, lambda ok, value: result.set((ok, value)))
        ok, value = result.get()
        if ok:
            return value
        raise value if isinstance(value, NodeDown) else RemoteError(str(value))

    def _answer(self, rid, ok, value):
        node, done, _ = self.calls.pop(rid, (None, None, None))
        if done is not None:
            done(ok, value)

    # --- receiving (the inbox reader calls this for every entry) --------------------------

    def received(self, eid, msg):
        kind = msg[0]
        self.counters["received"] += 1
        ack = True
        if kind in ("send", "notify") and msg[3] != self.epoch:
            self.counters["stale"] += 1  # for a pid of our previous boot (its number may be reused)
        elif kind == "send":
            self._deliver(msg[1], tuple(msg[2]))  # mailboxes dispatch on tuples
        elif kind == "notify":
            try:
                self.table.notify(msg[1], tuple(msg[2]))
            except ProcessDead:
                pass
        elif kind == "fwd":
            _, pid, ref, name, args, generation, n = msg
            order = self._in_order(pid, generation, n)
            if (pid, ref) in self.due or order is None:  # the same entry twice (a retried pipeline)
                ack = True
            elif not order:  # an earlier request of this session was lost (Redis lost its tail)
                self.counters["gaps"] += 1
                if pid.node in self.live:
                    self.post(pid.node, ("gap", pid, self.node, generation))
            else:
                self.due[(pid, ref)] = (eid, time.monotonic())
                ack = False
                self._dispatch(pid, name, (pid, ref, *args), pid, ref)
        elif kind == "cast":
            self.counters["cast:" + msg[1]] += 1  # per service: how many hops a fan-out made (tests)
            self._dispatch(msg[1], msg[1], msg[2])
        elif kind == "call":
            self.counters["call:" + msg[3]] += 1
            self.table.spawn(Task, self._serve_call, msg[1:], entity=msg[3])
        elif kind == "answer":
            self._answer(*msg[1:])
        elif kind == "gap":
            self._resend_lane(*msg[1:])
        else:
            log.warning("cluster: unexpected inbox entry %.200r", msg)
        if ack:
            self.out.ack(eid)

    def _in_order(self, pid, generation, n):
        """Whether the request ``n`` of a session's lane ``generation`` may be served here: True
        in order, None if served already, False after a gap (an entry lost: every later one of
        the generation is refused, and the session's node starts a new one, in order)."""
        lane = self.lanes_in.get(pid)
        if lane is None:  # its earlier requests are unknown here (this node restarted): from here on
            lane = self.lanes_in[pid] = [generation, n - 1, False]
        elif generation > lane[0]:
            lane = self.lanes_in[pid] = [generation, 0, False]
        if generation < lane[0] or lane[2]:
            return False
        if n <= lane[1]:
            return None
        if n != lane[1] + 1:
            lane[2] = True
            return False
        lane[1] = n
        return True

    def _pushed_in_order(self, pid, bodies, generation, start, origin):
        """Whether items pushed to our session ``pid`` follow what it got: a later generation
        starts at 0; a gap (a push Redis lost) drops them and asks ``origin`` for a new one."""
        got = self.pushes_in.get(pid)
        if got is None or generation > got[0]:
            got = self.pushes_in[pid] = [generation, 0, False]
        if generation < got[0] or start < got[1]:
            return False  # an older generation, or a repeated entry
        if start > got[1]:
            self.counters["push_gaps"] += 1
            if not got[2]:
                got[2] = True
                self.cast(origin, "resync", pid)
            return False
        got[1] += len(bodies)
        return True

    def ended(self, pid):
        """Session ``pid`` ended: the nodes it sent requests to forget its lanes."""
        self.pushes_in.pop(pid, None)
        for node in self.lanes.pop(pid, {}):
            if node in self.live:
                self.cast(node, "lane_end", pid)

    def _deliver(self, pid, msg):
        if msg[0] == "reply" and type(msg[1]) is dict and "ref" in msg[1]:
            key = (pid, msg[1]["ref"])
            if self.late.pop(key, None) is not None:
                self.counters["late_answers"] += 1  # already answered store_failed: the retry gets its own
                return
            if key in self.inflight and msg[1].get("code") == Code.STORE_FAILED:
                return self._fail(key, msg[1].get("message", "retry"))  # with the rest of its lane, in order
            self.inflight.pop(key, None)
        elif msg[0] == "items" and not self._pushed_in_order(pid, *msg[1:]):
            return
        try:
            self.table.send(pid, msg)
        except ProcessDead:
            pass
        except MailboxFull:  # as the router does: a session that stuck is closed, its items are in offd
            self.counters[Code.OVERLOADED] += 1
            self.table.kill(pid, ("closed", Code.OVERLOADED))

    def _dispatch(self, key, name, args, pid=None, ref=None):
        """Run a service now, or, if it may wait (``blocking``: a group operation waits for its
        turn and its fsync), in a worker of ``key`` (the session it serves) that keeps their
        order: the inbox reader never waits, so the answers it brings cannot deadlock."""
        if name not in self.blocking:
            return self._run(name, args, pid, ref)
        queue = self._serials.get(key)
        if queue is None:
            queue = self._serials[key] = collections.deque()
            self.table.spawn(Task, self._serially, (key, queue), entity=key)
        queue.append((name, args, pid, ref))

    def _serially(self, key, queue):
        try:
            while queue:
                self._run(*queue.popleft())
        finally:
            del self._serials[key]

    def _run(self, name, args, pid=None, ref=None):
        try:
            return self.services[name](*args)
        except Exception as exc:
            log.exception("cluster: service %s failed", name)
            if pid is not None:
                self.table.send(pid, ("reply", error_frame(Code.INTERNAL, f"server error ({type(exc).__name__}); "
                                                           "retry", ref)))

    def _serve_call(self, node, rid, name, args):
        try:
            value, ok = self.services[name](*args), True
        except Exception as exc:
            value, ok = f"{type(exc).__name__}: {exc}", False
        # a node that just started calls before our lease ticker saw it up (so it learns the
        # users homed here: tests/test_cluster_move.py found a node that never did)
        if node not in self.live and not self.detached:
            try:
                self._refresh(self.directory.leases())
            except UNREACHABLE:
                pass
        if node in self.live:
            self.post(node, ("answer", rid, ok, value))

    # --- failures -----------------------------------------------------------------------------

    def _fail(self, key, why):
        """A forwarded request failed or will get no answer: its session hears store_failed
        (retryable) for it and, in the order they were sent, for every later request of its lane
        (the same session, the same node), which starts a new generation: the client sends them
        again in their order, and none of them is served out of it."""
        entry = self.inflight.get(key)
        if entry is None:
            return
        pid, node = key[0], entry[0]
        self.lanes.get(pid, {}).pop(node, None)
        for other, (to, *_) in list(self.inflight.items()):
            if other[0] == pid and to == node:
                del self.inflight[other]
                self.late[other] = time.monotonic()
                self.counters["failed"] += 1
                self._fail_local(*other, why)

    def _fail_local(self, pid, ref, why):
        try:
            self.table.send(pid, ("reply", error_frame(Code.STORE_FAILED, why, ref)))
        except (ProcessDead, MailboxFull):
            pass

    def tick(self):
        """Renew our lease, read everyone's, and expire what waited too long; our own lease
        lapsed (Redis out of reach for cluster.lease), detach (see _detach) until it is renewed."""
        if not self.detached and self.lapsed():
            self._detach()
        try:
            sent = time.monotonic()
            self.directory.renew()
            self.renewed = sent
            leases = self.directory.leases()
        except UNREACHABLE as exc:
            if not self.counters["lease_failures"] % 10:
                log.warning("redis: lease not renewed (%s)", exc)
            self.counters["lease_failures"] += 1
            leases = None
        if leases is not None:
            if self.detached:
                self.detached = False
                log.warning("cluster: %s renewed its lease (boot %d): it routes to the other nodes again",
                            self.node, self.epoch)
            self._refresh(leases)
        self._expire()

    def _detach(self):
        """Our lease lapsed: the others count us down and stop routing here, so we count them
        down (requests waiting for them answer store_failed, monitors of their pids fire
        noconnection, their sessions leave our homes) and from now on what would cross nodes
        fails at once (``lapsed``), until a renewal of our lease goes through (``tick``): then
        each side registers its sessions with the other again, as after a stall. Sessions here of
        users homed elsewhere stay open (their requests answer store_failed: their device may
        retry, or reconnect to another node); logins of such users are refused (store_failed)."""
        self.detached = True
        self.counters["detached"] += 1
        log.error("cluster: %s is cut off: Redis took no renewal of its lease for %ss; it serves only what "
                  "it homes until Redis answers again", self.node, self.opts.lease)
        for node, epoch in list(self.live.items()):
            if node != self.node:
                self._down(node, epoch, reap=False)
        for keys in self.held.values():
            for key in keys:
                self._fail(key, CUT_OFF)
        self.held.clear()

    def _refresh(self, leases):
        """Compare the leases read with the boots we know: who went down, who came up."""
        live = {node: epoch for node, (epoch, _) in leases.items() if epoch is not None}
        for node, epoch in list(self.live.items()):
            if node != self.node and live.get(node) != epoch:
                self._down(node, epoch)
        for node, epoch in live.items():
            if node != self.node and node not in self.live:
                self.live[node] = epoch
                log.info("cluster: %s is up (boot %d)", node, epoch)
                for key in self.held.pop(node, ()):
                    if key in self.inflight:  # not failed meanwhile (cluster.request_timeout)
                        self._post_request(key)
                for watcher in list(self.watchers):
                    watcher(node, epoch, True)

    def _down(self, node, epoch, reap=True):
        del self.live[node]
        log.warning("cluster: %s (boot %d) is down: its lease lapsed or it restarted", node, epoch)
        self.counters["nodes_down"] += 1
        for key, (to, *_) in list(self.inflight.items()):
            if to == node:
                self._fail(key, f"{node} went down; retry")
        for pid in [p for p in self.lanes_in if p.node == node]:
            del self.lanes_in[pid]
        for rid, (to, _, _) in list(self.calls.items()):
            if to == node:
                self._answer(rid, False, NodeDown(f"{node} went down"))
        for watcher in list(self.watchers):
            watcher(node, epoch, False)
        if not reap:
            return  # Redis is out of reach: the others, or its next start, reap it
        try:
            self.counters["reaped"] += self.directory.reap(node, epoch)
        except UNREACHABLE:
            pass  # its next start reaps it

    def _expire(self):
        now = time.monotonic()
        for key, (_, deadline, *_) in list(self.inflight.items()):
            if deadline < now:
                self._fail(key, "no answer from the node serving it in time; retry")
        for rid, (node, _, deadline) in list(self.calls.items()):
            if deadline < now:
                self._answer(rid, False, NodeDown(f"no answer from {node} in time"))
        for key, (eid, since) in list(self.due.items()):
            if since + self.opts.request_timeout < now:  # its answer never went: done with it anyway
                del self.due[key]
                self.out.ack(eid)
        for node, keys in list(self.held.items()):
            self.held[node] = [key for key in keys if key in self.inflight]
        for key, since in list(self.late.items()):
            if since + 4 * self.opts.request_timeout < now:
                del self.late[key]
