"""gen_factory: a pool of identical workers of one service, and how a request picks one.

Contract::

    f = Factory(table, kind, behaviour, size, args, policy="hash" | "least_loaded")
    f.children()              -> supervisor Child specs, one per worker
    f.pick(entity) -> Slot    # "hash": stable per entity; "least_loaded": fewest calls in flight
    f.call(entity, request)   # table.call on the picked worker

Each worker runs ``behaviour`` with its :class:`Slot` as the first init argument.
A worker that shares an in-hub object with its callers (a spool, a database
handle) ``publish``-es it from ``init`` and ``withdraw``-s it in ``terminate``;
:meth:`Slot.resource` then waits (bounded) while the worker restarts, so a
caller sees a short delay or a clear :class:`ShardDown`, never a half-dead object.
"""
import zlib

from gevent.event import Event

from .supervisor import Child


class ShardDown(Exception):
    """The worker (shard) serving an entity is not running and did not come back in time."""


def shard_of(entity, shards):
    """Stable placement of an entity on one of ``shards`` (same on every node and restart)."""
    return zlib.crc32(str(entity).encode()) % shards


class Slot:
    """One worker's place: its current pid, what it shares, and whether it is up."""

    def __init__(self, kind, shard, index):
        self.kind, self.shard, self.index = kind, shard, index
        self.pid = None
        self.starts = 0
        self.load = 0  # calls in flight through the factory
        self._resource = None
        self._up = Event()

    def __repr__(self):
        state = "up" if self._up.is_set() else "down"
        return f"<Slot {self.kind} shard={self.shard} worker={self.index} {self.pid!r} {state} starts={self.starts}>"

    @property
    def restarts(self):
        return max(0, self.starts - 1)

    def publish(self, pid, resource):
        """Called from the worker's init: callers get ``resource`` and ``where`` the new pid."""
        self.pid, self._resource = pid, resource
        self._up.set()

    def withdraw(self):
        self._up.clear()
        self._resource = None

    def resource(self, wait):
        """The published object; waits up to ``wait`` seconds while the worker restarts."""
        if self._resource is None and not self._up.wait(wait):
            raise ShardDown(f"{self.kind} shard {self.shard} worker {self.index} is down "
                            f"(restarting); retry")
        return self._resource

    @property
    def current(self):
        """The published object, or None while the worker is down (never waits)."""
        return self._resource


class Factory:
    def __init__(self, table, kind, behaviour, size, args=(), policy="hash", shard=0):
        if size < 1:
            raise ValueError(f"{kind}: a factory needs at least one worker")
        if policy not in ("hash", "least_loaded"):
            raise ValueError(f"{kind}: unknown dispatch policy {policy!r}")
        self.table, self.kind, self.behaviour, self.args, self.policy = table, kind, behaviour, args, policy
        self.slots = [Slot(kind, shard, i) for i in range(size)]

    def __repr__(self):
        return f"<Factory {self.kind} {self.policy} workers={len(self.slots)}>"

    def children(self, restart="permanent"):
        return [Child(f"{self.kind}-{s.shard}.{s.index}", lambda s=s: self._start(s), restart)
                for s in self.slots]

    def _start(self, slot):
        slot.starts += 1
        slot.pid = self.table.start(self.behaviour, slot, *self.args, kind=self.kind,
                                    entity=f"{slot.shard}.{slot.index}", restarts=slot.restarts)
        return slot.pid

    def pick(self, entity=None):
        if len(self.slots) == 1:  # a stateful shard's single worker: no second hash
            return self.slots[0]
        if self.policy == "hash":
            return self.slots[shard_of(entity, len(self.slots))]
        return min(self.slots, key=lambda s: s.load)

    def call(self, entity, request, timeout=5.0):
        slot = self.pick(entity)
        slot.load += 1
        try:
            return self.table.call(slot.pid, request, timeout)
        finally:
            slot.load -= 1
