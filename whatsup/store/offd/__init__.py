"""offd: the durable spool of items (messages, receipts) not yet acked by a device.

offd is an industry (whatsup/runtime/industry.py): users are placed on spool
shards by a stable hash; each shard is an :class:`OffdShard` process owning a
:class:`Spool` — a directory with its own segment log and its own writer
thread — so a slow disk write or a crash on one shard touches only its users.

The hot path stays in-hub: the router and the sessions call the shard's Spool
directly (memory operations plus a hand-off to the writer), through its contract
(api.Store; memory.MemorySpool is its in-memory twin). The process owns
the spool's life: it opens it (recovery from disk), runs its maintenance, and
when it dies its ``terminate`` first withdraws the spool (new callers wait for
the restart, up to ``runtime.restart_wait``, then get ShardDown -> store_failed)
and then flushes what was handed to the writer, so every ✓ already promised is
fsynced and every pending one fires. The restarted shard rebuilds its queues
from the segment files and pokes the online users it holds, whose sessions
resend the unacked items (devices drop duplicates by seq).
"""
import logging
import os

from ..datadir import ShardMismatch, check_shards
from ...runtime.factory import ShardDown, shard_of
from ...runtime.industry import Industry
from .api import Store
from .memory import MemorySpool
from .queues import Acked, Item, QueueFull
from .spool import Spool

__all__ = ["Acked", "Item", "MemorySpool", "Offd", "OffdShard", "QueueFull", "ShardDown",
           "ShardMismatch", "Spool", "Store", "shard_of"]
log = logging.getLogger("whatsup.offd")


def shard_dir(directory, i):
    return os.path.join(directory, f"shard-{i:03d}")


class Offd:
    """The offd industry; ``check()`` before the supervisor starts ``children()``.

    Callbacks, handed to every shard's Spool (api.Store): ``on_ready``, ``devices``, ``carry``;
    and ``on_up(spool, restarted)``: a shard opened (its recovery is done)."""

    def __init__(self, table, directory, shards, segment_bytes, max_queue, expiry_days, restart_wait=5.0,
                 dedup_window=Spool.remember, on_ready=None, devices=None, carry=None, on_up=None,
                 commit_interval=0.0):
        self.dir = directory
        self.options = (segment_bytes, max_queue, expiry_days)
        self.callbacks = {"on_ready": on_ready, "devices": devices, "carry": carry}
        self.commit_interval = commit_interval
        self.dedup_window = dedup_window
        self.industry = Industry(table, "offd", shards, OffdShard, (self,),
                                 paths=[shard_dir(directory, i) for i in range(shards)], wait=restart_wait)
        self.on_up = on_up

    def __repr__(self):
        return f"<Offd {self.dir} shards={len(self.industry)} queued={self.queued()}>"

    def check(self):
        check_shards(self.dir, len(self.industry), "offd.shards")
        return self

    def children(self):
        return self.industry.children()

    @property
    def spools(self):
        """Every shard's Spool in shard order (None for a shard being restarted)."""
        return [s.current for s in self.industry.slots()]

    def spool(self, user):
        """The Spool holding ``user``'s queue; waits for a restarting shard, else ShardDown."""
        return self.industry.resource(user)

    def current(self, user):
        """``user``'s Spool, or None while its shard restarts (never waits)."""
        return self.industry.current(user)

    def queued(self):
        return sum(s.queued() for s in self.spools if s is not None)

    def items(self, user):
        """A copy of what ``user``'s queue holds (Items, oldest first); waits for a restarting shard."""
        return self.spool(user).items(user)

    def purge(self, user):
        """Drop everything queued for ``user``; returns the Items dropped (waits for a restarting shard)."""
        return self.spool(user).purge(user)

    def flush(self, timeout=30.0):
        for spool in self.spools:
            if spool is not None:
                spool.flush(timeout)


class OffdShard:
    """The process owning one spool shard (gen_server callbacks)."""
    kind = "offd"
    vsn = 1

    @staticmethod
    def init(proc, slot, offd):
        spool = Spool(shard_dir(offd.dir, slot.shard), *offd.options, **offd.callbacks,
                      commit_interval=offd.commit_interval)
        spool.remember = offd.dedup_window
        spool.open()
        slot.publish(proc.pid, spool)
        if slot.restarts:
            log.warning("offd shard %d restarted: %d items recovered", slot.shard, spool.queued())
        if offd.on_up is not None:
            offd.on_up(spool, bool(slot.restarts))
        return (slot, spool)

    @staticmethod
    def describe(state):
        slot, spool = state
        stats = spool.stats()
        return {"shard": slot.shard, "dir": spool.dir, "users": stats["users"], "queued": stats["queued"],
                "segments": stats["segments"], "stats": stats}

    @staticmethod
    def handle_call(proc, request, state):
        if request[0] == "flush":
            return state[1].flush(), state
        raise ValueError(f"offd shard: unexpected call {request!r}")

    @staticmethod
    def handle_cast(proc, msg, state):
        if msg[0] == "maintain":
            state[1].maintain()
            return state
        raise ValueError(f"offd shard: unexpected cast {msg!r}")

    @staticmethod
    def terminate(proc, reason, state):
        slot, spool = state
        slot.withdraw()
        spool.close()
