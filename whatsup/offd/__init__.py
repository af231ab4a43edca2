"""offd: the durable spool of items (messages, receipts) not yet acked by a device.

Users are placed on spool shards by a stable hash; each shard is a directory
with its own segment log and its own writer thread, so a slow disk write on
one shard does not hold up the others.
"""
import logging
import os
import zlib

from .spool import Item, QueueFull, Spool

__all__ = ["Item", "Offd", "QueueFull", "Spool", "shard_of"]
log = logging.getLogger("whatsup.offd")


class ShardMismatch(Exception):
    """The data dir was written with another shard count than the config says."""


def shard_of(entity, shards):
    """Stable placement of an entity on one of ``shards`` (same on every node and restart)."""
    return zlib.crc32(entity.encode()) % shards


class Offd:
    def __init__(self, directory, shards, segment_bytes, max_queue, expiry_days):
        self.dir = directory
        self.spools = [Spool(os.path.join(directory, f"shard-{i:03d}"), segment_bytes, max_queue,
                             expiry_days) for i in range(shards)]

    def __repr__(self):
        return f"<Offd {self.dir} shards={len(self.spools)} queued={self.queued()}>"

    def open(self):
        os.makedirs(self.dir, exist_ok=True)
        marker = os.path.join(self.dir, "SHARDS")
        if os.path.exists(marker):
            with open(marker) as f:
                found = int(f.read().strip() or 0)
            if found != len(self.spools):
                raise ShardMismatch(
                    f"offd in {self.dir} has {found} shards but the config says {len(self.spools)}; "
                    f"reshard it with ops/reshard.py (server stopped) or fix offd.shards")
        else:
            with open(marker, "w") as f:
                f.write(f"{len(self.spools)}\n")
                f.flush()
                os.fsync(f.fileno())
        for spool in self.spools:
            spool.open()
        return self

    def close(self):
        for spool in self.spools:
            spool.close()

    def spool(self, user):
        return self.spools[shard_of(user, len(self.spools))]

    def queued(self):
        return sum(s.queued() for s in self.spools)

    def flush(self, timeout=30.0):
        for spool in self.spools:
            spool.flush(timeout)

    def maintain(self):
        for spool in self.spools:
            spool.maintain()
