"""Blocking (docs/PROTOCOL.md, "Blocking"): who blocked whom, durable, consulted in RAM.

What a block does is decided where the traffic goes (router, presence); this
module only keeps the relation. As at WhatsApp the blocked user is told
nothing: their 1:1 messages to the blocker get ✓ (``sent``) and are never
delivered, their presence subscription sees the blocker offline without a last
seen, their typing is dropped. The blocker, who knows, gets ``blocked`` when
writing, typing to or subscribing to the user they blocked.
"""
from ..protocol import Code, ProtocolError
from ..runtime.service import Service


class BlocksProcess(Service):
    """The process owning the block relation (whatsup/runtime/service.py)."""
    kind = "blocks"


class Blocks:
    def __init__(self, accounts, ok_when_durable):
        """``ok_when_durable(pid, ok)``: the durability callback answering a change (the router's,
        which is made after this object, since it consults it)."""
        self.accounts = accounts
        self.ok_when_durable = ok_when_durable
        self.blocked = {}  # blocker -> set of users they blocked
        self.table = None
        self.shared = None  # in a cluster: callable(user, others) copying a change to the other nodes
        self.placed = lambda user: True  # in a cluster: ``user`` is homed here (their list is stored here)

    def __repr__(self):
        return f"<Blocks blockers={len(self.blocked)}>"

    def describe(self):
        return {"blockers": len(self.blocked)}

    def open(self, table):
        """Load the relation from ``table`` (a whatsup.store.tables.Table)."""
        self.table = table
        self.blocked = {user: set(others) for user, others in table.load().items()}
        return self

    def blocks(self, blocker, other):
        """True when ``blocker`` has blocked ``other``."""
        others = self.blocked.get(blocker)
        return others is not None and other in others

    # --- frames ----------------------------------------------------------------------

    def block(self, user, pid, f):
        other = self._target(user, f)
        self.blocked.setdefault(user, set()).add(other)
        self._store(user, pid, f["ref"])

    def unblock(self, user, pid, f):
        other = self._target(user, f)
        others = self.blocked.get(user, set())
        others.discard(other)
        if not others:
            self.blocked.pop(user, None)
        self._store(user, pid, f["ref"])

    def list(self, user, pid, f):
        return {"type": "blocked", "ref": f["ref"], "users": sorted(self.blocked.get(user, ()))}

    def _target(self, user, f):
        other = f["user"]
        if other == user:
            raise ProtocolError(Code.IS_SELF, "you cannot block yourself", f["ref"])
        if not self.accounts.exists(other):
            raise ProtocolError(Code.UNKNOWN_USER, f"no such user {other!r}", f["ref"])
        return other

    def _store(self, user, pid, ref):
        self._stored(user, self.ok_when_durable(pid, {"type": "ok", "ref": ref}))

    def _stored(self, user, on_durable=None):
        others = self.blocked.get(user)
        if self.shared is not None:
            self.shared(user, others or ())
        self.table.put(user, sorted(others) if others else None, on_durable)

    def forget(self, user):
        """``user``'s account is deleted: drop their blocks and every block of them (durably;
        a rare operation, so walking the blockers is fine). In a cluster each node changes
        the lists of the users it homes (and copies them to the others)."""
        if self.placed(user) and self.blocked.pop(user, None) is not None:
            self._stored(user)
        for blocker, others in list(self.blocked.items()):
            if user in others and self.placed(blocker):
                others.discard(user)
                if not others:
                    del self.blocked[blocker]
                self._stored(blocker)
