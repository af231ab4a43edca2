"""Presence, last seen and typing (docs/PROTOCOL.md, "Presence and typing").

Transient signals: held in RAM, sent only to sessions online now, never
spooled in offd and never acked. A subscription belongs to the session that
made it; a device that reconnects subscribes again and the answer carries the
current state, so nothing is lost that still matters. Only the privacy setting
(last seen visible to ``everyone`` or ``nobody``) is durable, in a
:class:`whatsup.store.tables.Table`.

Blocking (see whatsup/social/blocking.py): a user who is blocked sees the blocker as
offline with no last seen and gets no updates; the blocker gets ``blocked``.
"""
import time

from ..protocol import Code, ProtocolError
from ..runtime.service import Service


class PresenceProcess(Service):
    """The process owning presence (whatsup/runtime/service.py): a reload of this module swaps
    the code of :class:`Presence`."""
    kind = "presence"


class Presence:
    def __init__(self, sm, accounts, blocks, groups, router):
        """Updates go out through ``router`` (its replies)."""
        self.sm, self.accounts, self.blocks, self.groups, self.router = sm, accounts, blocks, groups, router
        self.watchers = {}       # user -> {subscriber pid: subscriber user}
        self.watching = {}       # subscriber pid -> set of users
        self.last_seen = {}      # user -> ms since the epoch, when their last session ended
        self.hidden = set()      # users whose last seen is visible to nobody
        self.table = None
        # in a cluster (whatsup/cluster/homes.py): relays ``frame`` to those of ``users`` homed on
        # other nodes and returns the others, whose sessions this node knows
        self.relayed = lambda users, frame: users

    def __repr__(self):
        return f"<Presence watched={len(self.watchers)} watching={len(self.watching)}>"

    def describe(self):
        return {"watched": len(self.watchers), "watching": len(self.watching), "last_seen": len(self.last_seen),
                "hidden": len(self.hidden)}

    def open(self, table):
        """Load the privacy settings from ``table`` (a whatsup.store.tables.Table)."""
        self.table = table
        self.hidden = {user for user, prefs in table.load().items() if prefs.get("last_seen") == "nobody"}
        return self

    # --- what sessions report -----------------------------------------------------------

    def online(self, user):
        """``user``'s first session logged in."""
        self._notify(user)

    def offline(self, user):
        """``user``'s last session ended: last seen is now."""
        self.last_seen[user] = int(time.time() * 1000)
        self._notify(user)

    def gone(self, pid):
        """Session ``pid`` ended: drop its subscriptions."""
        for target in list(self.watching.get(pid, ())):
            self._unwatch(pid, target)

    # --- frames -------------------------------------------------------------------------

    def subscribe(self, user, pid, f):
        target, ref = f["user"], f["ref"]
        self._peer(user, target, ref, "subscribe to your own presence")
        self.watchers.setdefault(target, {})[pid] = user
        self.watching.setdefault(pid, set()).add(target)
        return {**self.state(target, user), "ref": ref}

    def unsubscribe(self, user, pid, f):
        self._unwatch(pid, f["user"])
        return {"type": "ok", "ref": f["ref"]}

    def privacy(self, user, pid, f):
        value = f["last_seen"]
        (self.hidden.add if value == "nobody" else self.hidden.discard)(user)
        self.table.put(user, {"last_seen": value},
                       self.router.ok_when_durable(pid, {"type": "ok", "ref": f["ref"]}))

    def typing(self, user, pid, f):
        """Relay a typing indicator to an online peer or the online members of a group (the
        session's [ratelimit] table limits how often: ratelimit.typing)."""
        ref = f.get("ref")
        relay = {"type": "typing", "from": user, "state": f["state"]}
        if "group" in f:
            relay["group"] = f["group"]
            targets = [m for m in self.groups.members_of(user, f["group"], ref) if m != user]
        else:
            self._peer(user, f["to"], ref, "type to yourself")
            targets = [] if self.blocks.blocks(f["to"], user) else [f["to"]]
        for target in self.relayed(targets, relay):
            session = self.sm.lookup(target)
            if session is not None:
                self.router.reply(session, relay)
        return {"type": "ok", "ref": ref} if ref is not None else None

    # --- state ---------------------------------------------------------------------------

    def state(self, user, viewer):
        """The ``presence`` frame ``viewer`` may see about ``user``."""
        if self.blocks.blocks(user, viewer):
            return {"type": "presence", "user": user, "online": False}
        frame = {"type": "presence", "user": user, "online": self.sm.lookup(user) is not None}
        if not frame["online"] and user not in self.hidden and user in self.last_seen:
            frame["last_seen"] = self.last_seen[user]
        return frame

    def _notify(self, user):
        for pid, viewer in list(self.watchers.get(user, {}).items()):
            if not self.blocks.blocks(user, viewer):
                self.router.reply(pid, self.state(user, viewer))

    def _unwatch(self, pid, target):
        targets = self.watching.get(pid)
        if targets is not None:
            targets.discard(target)
            if not targets:
                del self.watching[pid]
        watchers = self.watchers.get(target)
        if watchers is not None:
            watchers.pop(pid, None)
            if not watchers:
                del self.watchers[target]

    def _peer(self, user, other, ref, what):
        if other == user:
            raise ProtocolError(Code.IS_SELF, f"you cannot {what}", ref)
        if not self.accounts.exists(other):
            raise ProtocolError(Code.UNKNOWN_USER, f"no such user {other!r}", ref)
        if self.blocks.blocks(user, other):
            raise ProtocolError(Code.BLOCKED, f"you blocked {other}; unblock first", ref)

    def forget(self, user):
        """``user``'s account is deleted: forget their privacy setting and last seen."""
        self.last_seen.pop(user, None)
        if user in self.hidden:
            self.hidden.discard(user)
            self.table.put(user, None)
