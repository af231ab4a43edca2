"""Account lifecycle: bans, kicks, password changes and deletion (docs/PROTOCOL.md, "Accounts").

The operator (``whatsupctl``, whatsup/ctl/) and the user (the ``passwd`` and
``delete_account`` frames) both come here, so an account is changed or deleted
one way whoever asks. Bans and retired names (a deleted account's name cannot
be registered again for ``accounts.name_reuse_days``) are small durable tables
(:class:`whatsup.store.tables.Table`) held in RAM, so a login or a registration asks
them without I/O.

A live session is closed by telling it ``("close", code, message)``: it answers
its device with that error and ends (``banned``, ``kicked``,
``password_changed``, ``account_deleted``).

In a cluster (docs/ARCHITECTURE.md, "A cluster") a ban or a deletion is made by the
user's home node, whoever asks: its tables hold the record, its session manager
every session of the user; every other node holds a copy of the bans and retired
names in RAM (``remote``: whatsup/cluster/homes.py), so a login or a registration on
any node still asks them without I/O.
"""
import contextlib
import logging
import time

from .. import protocol
from ..c2s.admission import Refused
from ..protocol import Code, ProtocolError
from ..store.tables import durably

log = logging.getLogger("whatsup.lifecycle")
OPERATOR = "operator"  # the admission key (whatsup/c2s/admission.py) of the operator's password hashes


def _source(user):
    """The admission key of a logged-in user's own password checks: their name, not an address."""
    return f"user:{user}"


class Lifecycle:
    def __init__(self, sm, router, accounts, offd, groups, blocks, presence, limits, reuse_days,
                 guesses, clock=time.time):
        self.sm, self.router, self.accounts, self.offd = sm, router, accounts, offd
        self.limits = limits  # the accounts.* name and password rules (protocol.check_account)
        self.groups, self.blocks, self.presence = groups, blocks, presence
        self.reuse = reuse_days * 86400.0
        self.guesses = guesses  # ratelimit.Guesses, shared with login
        self.clock = clock
        self.bans = {}      # user -> {"reason", "by", "at"}
        self.retired = {}   # name -> until (seconds since the epoch)
        self._tables = {}
        self.remote = None  # in a cluster: the homes of users homed on other nodes (cluster/homes.py)

    def __repr__(self):
        return f"<Lifecycle banned={len(self.bans)} retired={len(self.retired)}>"

    def open(self, name, table):
        """Load the ``bans`` or ``retired`` table (a whatsup.store.tables.Table)."""
        self._tables[name] = table
        setattr(self, name, table.load())
        return self

    # --- what login and register ask -----------------------------------------------------

    def banned(self, user):
        """The ban record of ``user`` ({"reason", "by", "at"}), or None."""
        return self.bans.get(user)

    def is_retired(self, user):
        """True while a deleted account's name may not be registered again."""
        until = self.retired.get(user)
        return until is not None and until > self.clock()

    # --- the operator's verbs ----------------------------------------------------------------

    def ban(self, user, reason, by):
        """Refuse ``user``'s logins from now on and close their session; returns the ban record."""
        if self._away(user):
            return self.remote.at_home(user, "lifecycle", "ban", user, reason, by)
        self._known(user)
        record = {"reason": reason, "by": by, "at": round(self.clock(), 3)}
        durably(self._tables["bans"], user, record)
        self._set("bans", user, record)
        self.close_sessions(user, Code.BANNED, f"this account is banned: {reason}")
        return record

    def unban(self, user):
        """Let ``user`` log in again; False if they were not banned."""
        if self._away(user):
            return self.remote.at_home(user, "lifecycle", "unban", user)
        if user not in self.bans:
            return False
        durably(self._tables["bans"], user, None)
        self._set("bans", user, None)
        return True

    def learn(self, name, user, value):
        """The home of ``user`` changed their ``bans`` or ``retired`` record (None: removed)."""
        table = getattr(self, name)
        if value is None:
            table.pop(user, None)
        else:
            table[user] = value

    def _set(self, name, user, value):
        self.learn(name, user, value)
        if self.remote is not None:
            self.remote.share(name, user, value)

    def _away(self, user):
        return self.remote is not None and not self.remote.here(user)

    def close_sessions(self, user, code, message, keep=None):
        """Close every session of ``user`` but ``keep`` with error ``code``; returns their pids. In a
        cluster their home does it: its session manager has every one of them, on any node."""
        if self._away(user):
            return self.remote.at_home(user, "lifecycle", "close_sessions", user, code, message, keep)
        pids = [pid for pid in self.sm.pids(user) if pid != keep]
        for pid in pids:
            self.router.tell(pid, ("close", code, message))
        return pids

    def set_password(self, user, password, keep=None, source=OPERATOR):
        """A new password for ``user``; every other session is told and logged out. ``source`` is
        whom the hash is admitted for (whatsup/c2s/admission.py): the operator, or the user."""
        self._known(user)
        self.accounts.set_password(user, password, source)
        return self.close_sessions(user, Code.PASSWORD_CHANGED, "the password changed; log in again", keep)

    def delete(self, user, keep=None):
        """Delete ``user`` everywhere: sessions, account, queue, group memberships (each group
        hears ``left``), blocks both ways, privacy; the name is retired for name_reuse_days.
        Returns what was removed."""
        if self._away(user):
            return self.remote.at_home(user, "lifecycle", "delete", user, keep)
        self._known(user)
        if self.reuse > 0:  # first: from here on the name cannot be registered again
            until = round(self.clock() + self.reuse, 3)
            durably(self._tables["retired"], user, until)
            self._set("retired", user, until)
        closed = self.close_sessions(user, Code.ACCOUNT_DELETED, "this account was deleted", keep)
        self.accounts.delete(user)
        if self.remote is not None:  # the groups live on every node, the blocks of others on theirs
            groups = self.remote.forget(user)
        else:
            groups = [g["group"] for g in self.groups.list(user, None, {"ref": 0})["groups"]]
            for gid in groups:
                self.leave(user, gid)
        purged = self.offd.purge(user)  # last: the group events above queued a copy for them too
        self.blocks.forget(user)
        self.presence.forget(user)
        if user in self.bans:
            self.unban(user)
        log.warning("account %s deleted: %d items purged, left %d groups", user, len(purged), len(groups))
        return {"user": user, "sessions_closed": len(closed), "items_purged": len(purged),
                "groups_left": groups, "name_reusable_at": self.retired.get(user)}

    def leave(self, user, gid):
        """Deleted ``user`` leaves group ``gid`` (homed here)."""
        try:
            self.groups.leave(user, None, {"group": gid, "ref": None})
        except ProtocolError:
            pass  # the group went meanwhile

    def _known(self, user):
        if not self.accounts.exists(user):
            raise KeyError(user)

    # --- frames (docs/PROTOCOL.md, "Accounts") -------------------------------------------------

    def passwd(self, user, pid, f):
        """``passwd``: the old password proves it is the user; the device that asked stays."""
        ref = f["ref"]
        protocol.check_account(user, f["new"], self.limits, ref)
        with _busy(ref):
            self._verified(user, f["old"], ref)
            self.set_password(user, f["new"], keep=pid, source=_source(user))
        log.info("%s changed their password", user)
        return {"type": "ok", "ref": ref}

    def delete_account(self, user, pid, f):
        """``delete_account``: answered ``ok``, then this connection closes with account_deleted."""
        ref = f["ref"]
        with _busy(ref):
            self._verified(user, f["password"], ref)
        self.delete(user, keep=pid)
        self.router.reply(pid, {"type": "ok", "ref": ref})
        self.router.tell(pid, ("close", Code.ACCOUNT_DELETED, "this account was deleted"))

    def _verified(self, user, password, ref):
        verified = self.guesses.attempt((("user", user),),
                                        lambda: self.accounts.verify(user, password, _source(user)))
        if verified is None:
            raise ProtocolError(Code.TOO_MANY_ATTEMPTS, "too many wrong passwords; wait and retry", ref)
        if not verified:
            raise ProtocolError(Code.AUTH_FAILED, "wrong password", ref)


@contextlib.contextmanager
def _busy(ref):
    """No hashing capacity now: the frame is answered ``busy`` (or ``too_many_attempts``) with its
    retry_after, as login is."""
    try:
        yield
    except Refused as exc:
        raise ProtocolError(exc.code, str(exc), ref, exc.retry_after) from None
