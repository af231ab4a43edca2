"""Devices: linking a companion with a one-time code, listing, unlinking (docs/PROTOCOL.md, "Devices").

A logged-in device asks for a link code (``link_code``); the new device presents it with
the user's name and its own name (``link``, before any login) and gets its device id and
token, with which it logs in from then on. A code is single-use, lives
``devices.link_ttl`` seconds, and one user has at most one (a new one replaces it);
a wrong code costs a failed guess against the user, the address and its network (the
login limiters, runtime/ratelimit.Guesses), so codes cannot be brute-forced faster
than passwords. Unlinking (by any of the user's devices, the operator, or inactivity
past ``devices.inactive_after``) revokes the token, closes that device's session and
releases what it held in offd.
"""
import collections
import hmac
import logging
import secrets
import time

from ..protocol import PRIMARY, Code, ProtocolError
from ..runtime.factory import ShardDown
from ..store.accounts import DeviceLimit

log = logging.getLogger("whatsup.devices")
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read aloud or typed from a screen
CODE_LENGTH = 8                                  # 31^8: 8.5e11 codes against ~10 guesses a minute
SEEN_EVERY = 3600.0  # seconds a companion's stored last_seen may lag: a phone that reconnects all
                     # day costs no commit per login (inactivity is counted in days)


class LinkCodes:
    """The outstanding link codes: one per user, single-use, expiring (I/O-free, fake-clockable)."""

    def __init__(self, ttl, clock=time.monotonic):
        self.ttl, self.clock = ttl, clock
        self.codes = collections.OrderedDict()  # user -> (code, expires), oldest issue first

    def __repr__(self):
        return f"<LinkCodes outstanding={len(self.codes)} ttl={self.ttl}>"

    def __len__(self):
        return len(self.codes)

    def issue(self, user):
        """A new code for ``user`` (their previous one, if any, stops working)."""
        now = self.clock()
        while self.codes and next(iter(self.codes.values()))[1] <= now:
            self.codes.popitem(last=False)  # the expired ones, oldest first
        code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        self.codes.pop(user, None)
        self.codes[user] = (code, now + self.ttl)
        return code

    def redeem(self, user, code):
        """True once for ``user``'s current, unexpired code; the code is spent either way."""
        held = self.codes.get(user)
        if held is None or not hmac.compare_digest(held[0], code.upper()):
            return False
        del self.codes[user]
        return held[1] > self.clock()


class Devices:
    """The device frames of a session (``method(user, pid, frame)``, answered at once) and the
    operator's and the node's unlinking."""

    def __init__(self, accounts, offd, sm, router, guesses, max_companions, link_ttl, inactive_after,
                 clock=time.time):
        self.accounts, self.offd, self.sm, self.router = accounts, offd, sm, router
        self.guesses = guesses
        self.max_companions, self.inactive_after, self.clock = max_companions, inactive_after, clock
        self.codes = LinkCodes(link_ttl)
        # in a cluster (whatsup/cluster/homes.py): a user's codes and devices are kept by their home,
        # which a node asks for users homed elsewhere (their frames are forwarded there as a whole)
        self.remote = None

    def __repr__(self):
        return f"<Devices {self.codes!r} max_companions={self.max_companions}>"

    # --- frames of a logged-in device -----------------------------------------------

    def link_code(self, user, pid, f):
        """A code for a new device, refused at once when no new device could use it."""
        if len(self.accounts.devices(user)) > self.max_companions:  # the primary and max_companions
            raise ProtocolError(Code.DEVICE_LIMIT, f"{user} already has {self.max_companions} linked devices "
                                "(devices.max_companions); unlink one first", f["ref"])
        return {"type": "link_code", "ref": f["ref"], "code": self.codes.issue(user), "expires_in": self.codes.ttl}

    def list(self, user, pid, f):
        online = self.sm.devices(user)
        devices = [{**d, "online": d["device"] in online} for d in self.accounts.device_list(user)]
        return {"type": "devices", "ref": f["ref"], "devices": devices}

    def unlink(self, user, pid, f):
        if f["device"] == PRIMARY:
            raise ProtocolError(Code.PRIMARY_DEVICE, "the primary device cannot be unlinked", f["ref"])
        if not self.unlink_device(user, f["device"], "unlinked by one of the user's devices"):
            raise ProtocolError(Code.UNKNOWN_DEVICE, f"no linked device {f['device']}", f["ref"])
        return {"type": "ok", "ref": f["ref"]}

    # --- before login -------------------------------------------------------------------

    def link(self, user, code, name, keys, ref):
        """The new device's ``link``: (device id, token) once durable, or ProtocolError
        (bad_link_code, too_many_attempts, device_limit). ``keys`` are the limiter keys of
        the attempt (user, address, network)."""
        if self._away(user):
            return tuple(self.remote.at_home(user, "devices", "link", user, code, name, keys, ref))
        keys = tuple(tuple(key) for key in keys)  # (lists when another node asked)
        if user not in self.accounts.users:
            self.guesses.attempt(keys, lambda: False)  # a wrong name is a wrong guess too
            raise ProtocolError(Code.BAD_LINK_CODE, "unknown, used or expired link code", ref)
        redeemed = self.guesses.attempt(keys, lambda: self.codes.redeem(user, code))
        if redeemed is None:
            raise ProtocolError(Code.TOO_MANY_ATTEMPTS, "too many failed attempts; wait and retry", ref)
        if not redeemed:
            raise ProtocolError(Code.BAD_LINK_CODE, "unknown, used or expired link code", ref)
        try:
            device, token = self.accounts.link(user, name, self.max_companions)
        except DeviceLimit:
            raise ProtocolError(Code.DEVICE_LIMIT, f"{user} already has {self.max_companions} linked "
                                f"devices (devices.max_companions); unlink one first", ref) from None
        try:
            self.offd.spool(user).link(user, device)
        except ShardDown:
            pass  # it starts at the front of the queue: it gets what was queued before it, no loss
        log.info("linked device %d (%s) to %s", device, name, user)
        return device, token

    # --- unlinking ----------------------------------------------------------------------

    def unlink_device(self, user, device, why):
        """Revoke ``device`` of ``user``, close its session, release what it held in offd; False
        if it was not linked."""
        if self._away(user):
            return self.remote.at_home(user, "devices", "unlink_device", user, device, why)
        if not self.accounts.unlink(user, device):
            return False
        pid = self.sm.lookup(user, device)
        if pid is not None:
            self.router.tell(pid, ("close", Code.UNLINKED, "this device was unlinked"))
        spool = self.offd.current(user)
        if spool is not None:  # a restarting shard recovers without it: the device set is the accounts'
            spool.unlink(user, device)
        log.info("unlinked device %d of %s: %s", device, user, why)
        return True

    def logged_in(self, user, device):
        """A device of ``user`` logged in: a companion's last_seen is stored, and the user's
        companions away longer than devices.inactive_after are unlinked (best effort: a store
        that cannot write now costs a warning, not the login)."""
        if self._away(user):
            return self.remote.seen_at_home(user, device)
        try:
            if device != PRIMARY:
                self.accounts.seen(user, device, min(SEEN_EVERY, self.inactive_after / 2 or SEEN_EVERY))
            self.expire(user)
        except (OSError, ShardDown) as exc:
            log.warning("devices of %s not updated at login: %s", user, exc)

    def _away(self, user):
        return self.remote is not None and not self.remote.here(user)

    def expire(self, user):
        """Unlink ``user``'s companions that stayed offline longer than devices.inactive_after
        (checked as the user's devices log in: only then can one have been away that long)."""
        if self.inactive_after <= 0:
            return []
        online = self.sm.devices(user)
        gone = [d for d in self.accounts.inactive(user, self.clock() - self.inactive_after) if d not in online]
        for device in gone:
            self.unlink_device(user, device, f"offline longer than devices.inactive_after "
                                              f"({self.inactive_after / 86400:g} days)")
        return gone
