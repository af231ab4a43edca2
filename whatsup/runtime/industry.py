"""gen_industry and the ShardRegistry: which shard, worker and pid handle an entity.

An :class:`Industry` places entities on ``shards`` shards by a stable hash
(:func:`shard_of`); each shard is a :class:`Factory` of workers (one for a
stateful shard that owns a directory or a file, more for stateless work). The
placement table is static: the shard counts come from etc/whatsupd.toml, and
every shard lives on this node until a later issue spreads them. Changing a
shard count moves data, so it is a deliberate offline operation (whatsup-reshard).

:class:`ShardRegistry` answers ``where(kind, entity)`` for every industry of the
node, so an operator (or a test) can find the process behind a user and check
that the data lives where the registry says.
"""
from .factory import Factory, shard_of


class UnknownKind(LookupError):
    """``where`` was asked about a service that is not an industry of this node."""


class Industry:
    """``kind``'s shards; ``wait`` is how long :meth:`resource` waits for a restarting one
    (runtime.restart_wait)."""

    def __init__(self, table, kind, shards, behaviour, args=(), workers=1, paths=None, wait=5.0):
        if shards < 1:
            raise ValueError(f"{kind}: needs at least one shard, got {shards}")
        self.kind, self.node, self.wait = kind, table.node, wait
        self.paths = paths or [None] * shards
        self.factories = [Factory(table, kind, behaviour, workers, args, "hash", shard)
                          for shard in range(shards)]

    def __repr__(self):
        return f"<Industry {self.kind} shards={len(self.factories)}>"

    def __len__(self):
        return len(self.factories)

    def children(self):
        """Supervisor Child specs of every worker, shard by shard."""
        return [c for f in self.factories for c in f.children()]

    def shard_of(self, entity):
        return shard_of(entity, len(self.factories))

    def slot(self, entity):
        return self.factories[self.shard_of(entity)].pick(entity)

    def resource(self, entity):
        """What the shard of ``entity`` serves (a Spool, an AccountShard); waits for a restarting
        shard up to ``wait`` seconds, then raises ShardDown."""
        return self.slot(entity).resource(self.wait)

    def current(self, entity):
        """What the shard of ``entity`` serves, or None while it restarts (never waits)."""
        return self.slot(entity).current

    def slots(self):
        return [s for f in self.factories for s in f.slots]

    def where(self, entity):
        slot = self.slot(entity)
        return {"kind": self.kind, "entity": entity, "shard": slot.shard, "worker": slot.index,
                "node": self.node, "pid": slot.pid, "up": slot.current is not None,
                "path": self.paths[slot.shard]}


class ShardRegistry:
    """The node's industries by kind."""

    def __init__(self):
        self.industries = {}

    def __repr__(self):
        return f"<ShardRegistry {sorted(self.industries)}>"

    def add(self, industry):
        if industry.kind in self.industries:
            raise ValueError(f"industry {industry.kind!r} registered twice")
        self.industries[industry.kind] = industry
        return industry

    def where(self, kind, entity):
        """``{kind, entity, shard, worker, node, pid, up, path}`` for ``entity`` of ``kind``."""
        try:
            return self.industries[kind].where(entity)
        except KeyError:
            raise UnknownKind(f"no industry {kind!r}; known: {', '.join(sorted(self.industries))}") from None
